"""A token ring of WORLD_SIZE ordinary processes over TCP on loopback or Unix sockets.

Usage: ring.py tcp PORT_BASE ROUNDS | ring.py unix SOCKET_DIR ROUNDS. The rank comes from the
RANK environment variable. Rank r listens, connects to rank r+1 and accepts rank r-1; rank 0
starts a counter that goes round the ring ROUNDS times; every rank prints each value it
forwards. Nothing here knows of snapline.
"""

import os
import socket
import sys
import time

kind, where, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def address(r):
    if kind == "tcp":
        return socket.AF_INET, ("127.0.0.1", int(where) + r)
    return socket.AF_UNIX, os.path.join(where, f"rank-{r}.sock")


family, mine = address(rank)
server = socket.socket(family)
if kind == "tcp":
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
elif os.path.exists(mine):  # left by an earlier run of the same job
    os.unlink(mine)
server.bind(mine)
server.listen(1)
family, right_addr = address((rank + 1) % n)
while True:
    right = socket.socket(family)
    try:
        right.connect(right_addr)
        break
    except OSError:
        right.close()
        time.sleep(0.02)
left, _ = server.accept()
server.close()
to_right = right.makefile("wb", buffering=0)
from_left = left.makefile("rb", buffering=0)

value = 0
for i in range(rounds):
    if rank == 0:
        to_right.write(b"%d\n" % value)
        value = int(from_left.readline()) + 1
        print(f"rank 0 round {i} value {value}", flush=True)
    else:
        value = int(from_left.readline()) + 1
        print(f"rank {rank} round {i} value {value}", flush=True)
        to_right.write(b"%d\n" % value)
    time.sleep(0.02)
print(f"rank {rank} done", flush=True)
