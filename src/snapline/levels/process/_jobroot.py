"""The job root: the one process whose tree holds every rank of a process-level job.

Run by the supervisor as ``python -I _jobroot.py SPEC_JSON`` in its own session. It starts
each rank in a session of its own, its stdout and stderr on the pipes the spec names, and
reports on the status pipe: ``start RANK PID`` for each rank, ``exit RANK WAITSTATUS`` as each
one ends; it exits once every rank has ended. Because every rank descends from it, one
checkpoint of its tree is a consistent snapshot of the whole job, sockets between ranks
(TCP on loopback, Unix) included. Standard library only: it is checkpointed with the job.
"""

import json
import os
import sys


def main() -> None:
    spec = json.loads(sys.argv[1])
    status_fd = spec["status"]
    devnull = os.open(os.devnull, os.O_RDONLY)
    pids = {}
    for rank, item in enumerate(spec["ranks"]):
        try:
            pid = os.posix_spawnp(
                item["argv"][0],
                item["argv"],
                item["env"],
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, devnull, 0),
                    (os.POSIX_SPAWN_DUP2, item["out"], 1),
                    (os.POSIX_SPAWN_DUP2, item["err"], 2),
                ],
                setsid=True,
            )
        except OSError as exc:
            os.write(status_fd, f"error {rank} {item['argv'][0]}: {exc.strerror}\n".encode())
            sys.exit(127)
        pids[pid] = rank
        os.write(status_fd, f"start {rank} {pid}\n".encode())
    for item in spec["ranks"]:
        for fd in (item["out"], item["err"]):
            os.close(fd)
    os.close(devnull)
    while pids:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid in pids:
            rank = pids.pop(pid)
            os.write(status_fd, f"exit {rank} {status}\n".encode())


if __name__ == "__main__":
    main()
