"""Each rank's ledger: the append-only record of what its checkpoints mean to the protocol.

Theory of operation
-------------------
The store keeps checkpoint *states*; the ledger keeps the small facts recovery plans from:
which checkpoints were persisted (with their ``CheckpointRecord``), what was attached to them
later (Chandy-Lamport's recorded channel state), which ones the protocol committed or
discarded, the garbage-collection horizon, the rank's stable message log, and how many outputs
were released to the world -- the numbered output records themselves, so output is
exactly-once across rollbacks -- and each restore (which voids records of later indices).

Format: a file of records, each ``<u32 length><u64 xxh64 of body><msgpack body>``. Records are
appended and then fsynced before anything that depends on them happens (a commit marker before
the output it releases). A crash can tear only the last record; readers stop at the first
record whose length or hash does not check out, and a writer reopening the file truncates that
torn tail before appending, so a torn record can never be followed by good ones.

A checkpoint is *committed* when its ``ckpt`` record and a later ``commit`` record are both in
the ledger; the supervisor reads ledgers directly (the writer has drained) to build the
``RecoveryView``.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from snapline.protocols.base import CheckpointRecord, PlainData, initial_record
from snapline.runtime.local.wire import WireError, pack, unpack

_HEAD = struct.Struct("<IQ")


def ledger_path(store_dir: Path, rank: int) -> Path:
    """Where rank ``rank``'s ledger lives inside the job's store directory."""
    return store_dir / "ledger" / f"rank-{rank}.log"


def _scan(data: bytes) -> Iterator[tuple[int, Any]]:
    """Yield ``(end_offset, record)`` for each intact record, stopping at a torn one."""
    pos = 0
    while pos + _HEAD.size <= len(data):
        size, digest = _HEAD.unpack_from(data, pos)
        body = data[pos + _HEAD.size : pos + _HEAD.size + size]
        if len(body) != size or xxhash.xxh64_intdigest(body) != digest:
            return
        try:
            record = unpack(body)
        except (WireError, ValueError):
            return
        pos += _HEAD.size + size
        yield pos, record


class LedgerWriter:
    """Appends records to one rank's ledger; ``sync()`` makes everything appended durable.

    Group commit: appends never wait for an fsync in flight (the rank's loop appends commit
    markers while the stable thread syncs), and a ``sync`` that finds an fsync in flight
    waits for it and returns without another one if that fsync already covered everything
    appended before the call. ``fsync`` makes durable all that was written to the file before
    it started, which is what the counters rely on.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        good = 0
        if path.exists():
            for good, _ in _scan(path.read_bytes()):  # noqa: B007 - we want the last offset
                pass
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, good)  # drop a torn tail before appending after it
        os.lseek(self._fd, good, os.SEEK_SET)
        #: Records appended, and how many of them an fsync has made durable.
        self._appended = 0
        self._synced = 0
        # The stable-storage thread and the rank's loop both append and sync (see ``stable``):
        # ``_lock`` orders the writes, ``_sync_lock`` lets one fsync run at a time.
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()

    def append(self, record: dict[str, PlainData]) -> None:
        """Append one record (not yet durable)."""
        body = pack(record)
        data = _HEAD.pack(len(body), xxhash.xxh64_intdigest(body)) + body
        with self._lock:
            os.write(self._fd, data)
            self._appended += 1

    def sync(self) -> None:
        """fsync what was appended before this call (at once if an fsync already did)."""
        with self._lock:
            target = self._appended
        if self._synced >= target:
            return
        with self._sync_lock:
            if self._synced >= target:
                return  # the fsync we waited for started after our records were written
            with self._lock:
                covered = self._appended
            os.fsync(self._fd)
            self._synced = max(self._synced, covered)

    def close(self) -> None:
        """Sync and close the file."""
        self.sync()
        os.close(self._fd)


@dataclass(slots=True, kw_only=True)
class LedgerView:
    """What one rank's ledger says, folded into the shape recovery needs."""

    rank: int
    persisted: dict[int, CheckpointRecord] = field(default_factory=dict)
    extras: dict[int, dict[str, PlainData]] = field(default_factory=dict)
    committed: set[int] = field(default_factory=set)
    discarded: set[int] = field(default_factory=set)
    gc_before: int = 0
    message_log: list[PlainData] = field(default_factory=list)
    outputs: list[PlainData] = field(default_factory=list)
    released_outputs: int = 0
    #: Multi-level stores: the levels holding each checkpoint, and its checkpoint id.
    levels: dict[int, list[str]] = field(default_factory=dict)
    checkpoint_ids: dict[int, str] = field(default_factory=dict)

    def tentative_records(self) -> list[CheckpointRecord]:
        """Persisted checkpoints neither committed nor discarded, oldest first."""
        return [
            self.persisted[index]
            for index in sorted(self.persisted)
            if index > 0 and index not in self.committed and index not in self.discarded
        ]

    def committed_records(self) -> list[CheckpointRecord]:
        """Committed checkpoints oldest first, including the implicit initial checkpoint 0."""
        out = [initial_record(self.rank)]
        for index in sorted(self.committed):
            rec = self.persisted.get(index)
            if index > 0 and rec is not None and index not in self.discarded:
                out.append(rec)
        return out


def read_ledger(path: Path, rank: int) -> LedgerView:
    """Fold a ledger file into a ``LedgerView`` (a missing file is an empty ledger)."""
    view = LedgerView(rank=rank)
    if not path.exists():
        return view
    attachments: dict[int, dict[str, PlainData]] = {}
    for _, rec in _scan(path.read_bytes()):
        kind = rec.get("k")
        if kind == "ckpt":
            index = int(rec["index"])
            view.persisted[index] = CheckpointRecord(
                rank=rank,
                index=index,
                forced=bool(rec["forced"]),
                sent={int(k): int(v) for k, v in rec["sent"].items()},
                received={int(k): int(v) for k, v in rec["received"].items()},
                meta=rec.get("meta"),
                attachments=attachments.setdefault(index, {}),
            )
            view.extras[index] = rec.get("extras") or {}
            _fold_levels(view, index, rec)
        elif kind == "attach":
            attachments.setdefault(int(rec["index"]), {})[str(rec["key"])] = rec["meta"]
        elif kind == "commit":
            view.committed.add(int(rec["index"]))
        elif kind == "discard":
            view.discarded.add(int(rec["index"]))
        elif kind == "gc":
            view.gc_before = max(view.gc_before, int(rec["before"]))
        elif kind == "log":
            view.message_log.append(rec["entry"])
        elif kind == "output":
            view.outputs.append(rec["item"])
            view.released_outputs = max(view.released_outputs, int(rec["id"]))
        elif kind == "flushed":
            _fold_flushed(view, rec)
        elif kind == "restore":
            # The rank rolled back to ``index``: what it wrote about later checkpoints belongs
            # to an undone future (those indices will be reused by the new incarnation).
            index = int(rec["index"])
            for later in [i for i in view.persisted if i > index]:
                del view.persisted[later]
                view.extras.pop(later, None)
            for later in [i for i in view.levels if i > index]:
                del view.levels[later]
                view.checkpoint_ids.pop(later, None)
            for later in [i for i in attachments if i > index]:
                del attachments[later]
            view.committed = {i for i in view.committed if i <= index}
            view.discarded = {i for i in view.discarded if i <= index}
    # Attachments may come before or after the ckpt record; rebuild records to include them.
    for index, rec in list(view.persisted.items()):
        view.persisted[index] = CheckpointRecord(
            rank=rec.rank,
            index=rec.index,
            forced=rec.forced,
            sent=rec.sent,
            received=rec.received,
            meta=rec.meta,
            attachments=dict(attachments.get(index, {})),
        )
    return view


def _fold_levels(view: LedgerView, index: int, rec: dict[str, Any]) -> None:
    levels, ident = rec.get("levels"), rec.get("checkpoint_id")
    if isinstance(levels, list) and isinstance(ident, str):
        view.levels[index] = [str(level) for level in levels]
        view.checkpoint_ids[index] = ident
    else:
        view.levels.pop(index, None)
        view.checkpoint_ids.pop(index, None)


def _fold_flushed(view: LedgerView, rec: dict[str, Any]) -> None:
    # Only for the checkpoint that is current under that index: a flush of an older one
    # (the rank rolled back and saved the index again) proves nothing about the new one.
    index = int(rec["index"])
    if view.checkpoint_ids.get(index) == rec.get("id") and index in view.levels:
        level = str(rec.get("level", "remote"))
        if level not in view.levels[index]:
            view.levels[index].append(level)
