"""Assembling a local job's trace from the per-rank event files.

Each worker appends its trace events as JSON lines to ``<store>/trace/rank-N.jsonl`` (one
``write`` per loop turn, so a ``kill -9`` loses at most the events of the turn it interrupted;
the page cache keeps what was written). Event times are ``time.monotonic()`` seconds since the
job started -- one clock for every process on the machine -- so the files merge into one
time-ordered trace. The supervisor adds ``crash`` events and the recovery records, and writes
``<store>/trace.json`` in the format of ``snapline.runtime.trace`` (drawn by ``snapline viz``).

A ``kill -9`` can land in the middle of a ``write`` and leave the file ending in part of a line.
The rank's next incarnation appends to the same file, and its first line -- the ``restore``
event the checkers roll the rank's channels back on -- would be glued to that fragment and lost
with it (the checkers then report the re-delivered messages as duplicates). So a writer opens
the file with ``open_for_append``, which cuts such a torn tail first, as the ledger does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from snapline.runtime.trace import TraceWriter

TRACE_NAME = "trace.json"


def rank_trace_path(store_dir: Path, rank: int) -> Path:
    """The event file of ``rank``."""
    return store_dir / "trace" / f"rank-{rank}.jsonl"


def open_for_append(path: Path) -> int:
    """Open a JSON-lines file for appending (an fd), first cutting a torn last line.

    Only one process writes a rank's file at a time (a new incarnation starts after the old
    one died), so the tail it finds is final.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size:
            # Search back for the last newline; the torn part is what follows it.
            end = size
            while end > 0:
                start = max(0, end - 4096)
                chunk = os.pread(fd, end - start, start)
                cut = chunk.rfind(b"\n")
                if cut >= 0:
                    end = start + cut + 1
                    break
                end = start
            if end < size:
                os.ftruncate(fd, end)
    except OSError:
        os.close(fd)
        raise
    return fd


def read_rank_events(store_dir: Path, n: int) -> list[dict[str, Any]]:
    """Every rank's events, merged in time order (a torn last line is skipped)."""
    events: list[dict[str, Any]] = []
    for rank in range(n):
        path = rank_trace_path(store_dir, rank)
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # torn by a kill in the middle of a write
            if isinstance(event, dict):
                events.append(event)
    events.sort(key=lambda e: float(e["t"]))
    return events


def merge_trace(
    store_dir: Path,
    *,
    n: int,
    protocol: str,
    app: str,
    seed: int,
    edges: Sequence[tuple[int, int]],
    recoveries: Sequence[dict[str, Any]],
    failures: Sequence[dict[str, Any]],
    stats: dict[str, Any],
) -> Path:
    """Write ``<store>/trace.json`` and return its path."""
    events = read_rank_events(store_dir, n)
    events.extend({"t": f["t"], "rank": f["rank"], "kind": "crash"} for f in failures)
    events.sort(key=lambda e: float(e["t"]))
    writer = TraceWriter(n=n, protocol=protocol, app=app, seed=seed, edges=edges)
    for event in events:
        fields = {k: v for k, v in event.items() if k not in ("t", "rank", "kind")}
        writer.event(float(event["t"]), int(event["rank"]), str(event["kind"]), fields)
    checkpoint_times: dict[tuple[int, int], float] = {}
    for event in events:
        if event["kind"] == "checkpoint":
            checkpoint_times.setdefault((int(event["rank"]), int(event["index"])), event["t"])
    if "end_t" in stats and events:
        # Ranks may still log (a commit, a flushed checkpoint) after termination was detected:
        # the job ends with its last event.
        stats = {**stats, "end_t": max(float(stats["end_t"]), float(events[-1]["t"]))}
    if "start_t" in stats and events:
        # The supervisor notes the start after telling every rank to run; a rank may have
        # begun (and logged) a moment before.
        stats = {**stats, "start_t": min(float(stats["start_t"]), float(events[0]["t"]))}
    # The initial state (index 0) is the ranks' state when the job started running.
    start_t = float(stats.get("start_t", 0.0))
    for rec in recoveries:
        rolled_back_s = {}
        for rank_text, index in rec["restore"].items():
            taken = checkpoint_times.get((int(rank_text), int(index)), start_t)
            rolled_back_s[rank_text] = round(max(0.0, rec["t_detect"] - taken), 6)
        writer.recovery({**rec, "rolled_back_s": rolled_back_s})
    trace = writer.finish(stats)
    path = store_dir / TRACE_NAME
    trace.write(path)
    return path
