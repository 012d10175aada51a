"""The job root under DMTCP: it starts the ranks and relays their output as numbered records.

Run by the supervisor as ``dmtcp_launch ... python -I _relayroot.py SPEC_JSON``. Unlike
``_jobroot.py`` it creates the ranks' stdout and stderr pipes itself, after launch: DMTCP
checkpoints pipes made inside the job (with what is in them) but not pipes inherited from
outside, which are dead after a restart. It reads the pipes and appends what it read to the
spool file the spec names, as records ``@{"s": STREAM, "p": POSITION}\\n`` + the bytes, where
POSITION is where those bytes start in the stream (``out0``, ``err0``..., and ``status`` for
its own ``start``/``exit`` lines). The spool is opened for each write and closed again, so
no descriptor of it is in a checkpoint (a checkpoint taken during a write makes DMTCP
recreate the file, padded with NUL bytes, which the reader skips).

After a restart this process goes on from its checkpointed state, positions included. It
notices the restart because the spool it last wrote to is gone (the supervisor removes it
before restoring) and then first writes a ``hello`` record with every stream's position:
exactly where the checkpoint cut each stream. Standard library only: it is checkpointed
with the job.
"""

import json
import os
import select
import sys

_LOADER_KEYS = ("LD_PRELOAD", "DMTCP_")


def main() -> None:
    spec = json.loads(sys.argv[1])
    spool = spec["spool"]
    pos = {"status": 0}
    state = {"ino": -1}

    def emit(stream: str, data: bytes) -> None:
        try:
            current = os.stat(spool).st_ino
        except FileNotFoundError:
            current = -2
        fd = os.open(spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if current != state["ino"]:  # a fresh spool: a start or a restart
                state["ino"] = os.fstat(fd).st_ino
                hello = {"hello": pos, "root": os.getpid()}
                os.write(fd, b"@" + json.dumps(hello).encode() + b"\n")
            if data:
                head = json.dumps({"s": stream, "p": pos[stream], "n": len(data)})
                os.write(fd, b"@" + head.encode() + b"\n" + data)
                pos[stream] += len(data)
        finally:
            os.close(fd)

    devnull = os.open(os.devnull, os.O_RDONLY)
    # DMTCP's own variables (its preload library, the coordinator's address) must reach the
    # ranks too, or they would run outside the checkpoint.
    loader = {k: v for k, v in os.environ.items() if k.startswith(_LOADER_KEYS)}
    readers = {}
    pids = {}
    emit("status", b"")
    for rank, item in enumerate(spec["ranks"]):
        ends = {}
        for stream in ("out", "err"):
            r, w = os.pipe()
            ends[stream] = w
            readers[r] = f"{stream}{rank}"
            pos[f"{stream}{rank}"] = 0
        try:
            pid = os.posix_spawnp(
                item["argv"][0],
                item["argv"],
                {**item["env"], **loader},
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, devnull, 0),
                    (os.POSIX_SPAWN_DUP2, ends["out"], 1),
                    (os.POSIX_SPAWN_DUP2, ends["err"], 2),
                ],
                setsid=True,
            )
        except OSError as exc:
            emit("status", f"error {rank} {item['argv'][0]}: {exc.strerror}\n".encode())
            sys.exit(127)
        finally:
            for w in ends.values():
                os.close(w)
        pids[pid] = rank
        emit("status", f"start {rank} {pid}\n".encode())
    os.close(devnull)
    while pids or readers:
        ready = select.select(list(readers), [], [], 0.05)[0] if readers else []
        for fd in ready:
            data = os.read(fd, 1 << 16)
            if data:
                emit(readers[fd], data)
            else:
                os.close(fd)
                del readers[fd]
        while pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pids.clear()
                break
            if pid == 0:
                break
            if pid in pids:
                emit("status", f"exit {pids.pop(pid)} {status}\n".encode())
        if not ready:
            emit("status", b"")  # says hello after a restart even when the job is silent
        if not readers and pids:
            select.select([], [], [], 0.05)


if __name__ == "__main__":
    main()
