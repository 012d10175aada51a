"""A rank's trace file across incarnations: a line torn by kill -9 must not swallow the next.

A ``kill -9`` that lands in the middle of a worker's ``write`` leaves the rank's trace file
ending in part of a line. The rank's next incarnation appends to the same file; its first line
is its ``restore`` event, which the channel checker rolls the rank's delivery counts back on.
Appended right after the fragment, that line could not be parsed and was skipped, and the
re-delivered messages of the new incarnation were reported as duplicates: ``heat:
exactly-once delivery: rank 1 delivered message 1 from rank 0 after 133 (duplicate)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from snapline.runtime.local.job import RunResult
from snapline.runtime.local.tracefile import (
    merge_trace,
    open_for_append,
    rank_trace_path,
    read_rank_events,
)
from snapline.runtime.local.verify import check_channels


def line(t: float, rank: int, kind: str, **fields: Any) -> bytes:
    return (json.dumps({"t": t, "rank": rank, "kind": kind, **fields}) + "\n").encode()


def write_incarnations(store: Path, *, open_next: Any) -> RunResult:
    """Rank 1 delivers 3 messages from rank 0, is killed mid-write, restarts from scratch."""
    (store / "trace").mkdir(parents=True)
    rank0 = open_for_append(rank_trace_path(store, 0))
    for seq in range(1, 4):
        os.write(rank0, line(0.1 * seq, 0, "send", dst=1, seq=seq))
    os.write(rank0, line(1.0, 0, "restore", index=0, received={"1": 0}))
    for seq in range(1, 4):
        os.write(rank0, line(1.0 + 0.1 * seq, 0, "send", dst=1, seq=seq))
    os.close(rank0)
    old = open_for_append(rank_trace_path(store, 1))
    for seq in range(1, 4):
        os.write(old, line(0.1 * seq + 0.05, 1, "deliver", src=0, seq=seq))
    # The kill lands in the middle of the next write: part of a line stays in the file.
    os.write(old, line(0.5, 1, "deliver", src=0, seq=4)[:17])
    os.close(old)
    new = open_next(rank_trace_path(store, 1))
    os.write(new, line(1.0, 1, "restore", index=0, received={"0": 0}))
    for seq in range(1, 4):
        os.write(new, line(1.0 + 0.1 * seq + 0.05, 1, "deliver", src=0, seq=seq))
    os.close(new)
    path = merge_trace(
        store,
        n=2,
        protocol="bcs",
        app="heat",
        seed=0,
        edges=[(0, 1), (1, 0)],
        recoveries=[],
        failures=[{"t": 0.6, "rank": 1, "pid": 1}],
        stats={},
    )
    return RunResult(
        results={},
        outputs={},
        stats={0: {"sent_per_channel": {1: 3}}, 1: {"sent_per_channel": {0: 0}}},
        recoveries=[],
        restarts=1,
        elapsed_s=1.0,
        store=store,
        trace_path=path,
        protocol="bcs",
        n=2,
    )


def test_a_new_incarnation_cuts_the_torn_line_its_killed_predecessor_left(tmp_path: Path) -> None:
    result = write_incarnations(tmp_path, open_next=open_for_append)
    kinds = [(e["rank"], e["kind"]) for e in read_rank_events(tmp_path, 2)]
    assert kinds.count((1, "restore")) == 1
    assert check_channels(result) is None


def test_appending_after_a_torn_line_loses_the_restore_event(tmp_path: Path) -> None:
    # What a plain O_APPEND open did: the checker sees no restore and reports a duplicate.
    def plain(path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND)

    result = write_incarnations(tmp_path, open_next=plain)
    problem = check_channels(result)
    assert problem is not None and "delivered message 1 from rank 0 after 3 (duplicate)" in problem


def test_open_for_append_keeps_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    fd = open_for_append(path)  # creates the file
    os.close(fd)
    assert path.read_bytes() == b""
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n')
    os.close(open_for_append(path))
    assert path.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    # A torn tail longer than one read block, and a file that is nothing but a torn line.
    path.write_bytes(b'{"a": 1}\n{"b": "' + b"x" * 10_000)
    os.close(open_for_append(path))
    assert path.read_bytes() == b'{"a": 1}\n'
    path.write_bytes(b'{"a": ')
    fd = open_for_append(path)
    os.write(fd, b'{"c": 3}\n')
    os.close(fd)
    assert path.read_bytes() == b'{"c": 3}\n'
