"""Global commit records: the one small file that makes a set of rank parts a checkpoint.

Each rank writes its part of checkpoint ``step`` into its own store; a part alone proves
nothing, since another rank may have crashed before its part became durable. Once every part is
durable (agreed with a collective), rank 0 writes ``commits/<step:012d>.json`` through a
temporary file, fsync, rename and an fsync of the directory, so the record exists, complete,
exactly when the global checkpoint does: a crash at any moment before the rename leaves the
previous record the newest one.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from snapline._durable import fsync_dir, write_atomic
from snapline.errors import CorruptCheckpoint, StoreError

RECORD_FORMAT = "snapline-mpi-commit"
RECORD_VERSION = 1
COMMITS_DIR = "commits"
_NAME = re.compile(r"^(\d{12})\.json$")


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRecord:
    """Checkpoint ``step`` of a job of ``ranks`` ranks is complete: every part is durable."""

    step: int
    ranks: int
    created_unix_s: float
    #: The storage levels every part is durable on (multi-level stores; empty otherwise).
    levels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if type(self.step) is not int or self.step < 0:
            raise ValueError(f"step must be an int >= 0, got {self.step!r}")
        if type(self.ranks) is not int or self.ranks < 1:
            raise ValueError(f"ranks must be an int >= 1, got {self.ranks!r}")


def record_name(step: int) -> str:
    """The file name of step ``step``'s record (zero-padded, so names sort by step)."""
    return f"{step:012d}.json"


def encode_record(record: CommitRecord) -> bytes:
    """The record as the JSON bytes written to disk."""
    body = {
        "format": RECORD_FORMAT,
        "format_version": RECORD_VERSION,
        "step": record.step,
        "ranks": record.ranks,
        "created_unix_s": record.created_unix_s,
    }
    if record.levels:
        body["levels"] = list(record.levels)
    return json.dumps(body, indent=1).encode() + b"\n"


def parse_record(data: bytes, *, where: str) -> CommitRecord:
    """Parse and check a record (``CorruptCheckpoint`` naming ``where`` when malformed)."""
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise CorruptCheckpoint(f"commit record {where} is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("format") != RECORD_FORMAT:
        raise CorruptCheckpoint(f"commit record {where} is not a {RECORD_FORMAT} record")
    if body.get("format_version") != RECORD_VERSION:
        raise CorruptCheckpoint(
            f"commit record {where} has format version {body.get('format_version')!r}; this "
            f"snapline reads {RECORD_VERSION}. Upgrade snapline to restore it"
        )
    created = body.get("created_unix_s")
    if not isinstance(created, int | float) or isinstance(created, bool):
        raise CorruptCheckpoint(f"commit record {where}: created_unix_s is not a number")
    step, ranks = body.get("step"), body.get("ranks")
    if type(step) is not int or type(ranks) is not int:
        raise CorruptCheckpoint(f"commit record {where}: step and ranks must be integers")
    try:
        levels = body.get("levels", [])
        if not isinstance(levels, list) or not all(isinstance(x, str) for x in levels):
            raise ValueError("levels must be a list of level names")
        return CommitRecord(
            step=step, ranks=ranks, created_unix_s=float(created), levels=tuple(levels)
        )
    except ValueError as exc:
        raise CorruptCheckpoint(f"commit record {where}: {exc}") from None


def write_record(root: Path, record: CommitRecord) -> Path:
    """Write ``record`` under ``root/commits`` atomically and durably; return its path."""
    directory = root / COMMITS_DIR
    final = directory / record_name(record.step)
    temp = directory / f".{final.name}.tmp-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(final, encode_record(record), temp=temp)
    except OSError as exc:
        raise StoreError(
            f"could not write the commit record {final} ({exc.strerror or exc}); the previous "
            "complete checkpoint is still the newest one. Check the space and permissions there"
        ) from exc
    return final


def remove_record(root: Path, step: int) -> None:
    """Delete step ``step``'s record, if any (the checkpoint stops being restorable)."""
    path = root / COMMITS_DIR / record_name(step)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def read_records(root: Path) -> tuple[list[CommitRecord], list[str]]:
    """Every well-formed record under ``root/commits``, by step, and a note on each bad one.

    Temporary files of an interrupted write are not records and are ignored.
    """
    directory = root / COMMITS_DIR
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    records: list[CommitRecord] = []
    problems: list[str] = []
    for name in names:
        match = _NAME.match(name)
        if match is None:
            continue
        try:
            record = parse_record((directory / name).read_bytes(), where=str(directory / name))
        except (CorruptCheckpoint, OSError) as exc:
            problems.append(str(exc))
            continue
        if record.step != int(match.group(1)):
            problems.append(f"commit record {directory / name} names step {record.step}")
            continue
        records.append(record)
    return records, problems


def new_record(step: int, ranks: int, *, levels: Sequence[str] = ()) -> CommitRecord:
    """A record of step ``step`` stamped with the current time."""
    return CommitRecord(step=step, ranks=ranks, created_unix_s=time.time(), levels=tuple(levels))
