"""Simulated stable storage: checkpoints and message logs that survive simulated crashes.

A checkpoint write starts at ``TakeCheckpoint`` (the state is deep-copied then: later changes
of the process cannot leak into it) and becomes visible only when its write completes; a crash
of the writing rank before that loses it, exactly like a torn write the real store never shows.
A persisted checkpoint is eligible for recovery only once the protocol commits it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import msgpack

from snapline.errors import EncodeError
from snapline.protocols.base import CheckpointRecord, PlainData, initial_record
from snapline.runtime.engine import CheckpointImage
from snapline.state.codec import encode_tree


def checkpoint_size_bytes(image: CheckpointImage) -> int | None:
    """What the real store would write for this checkpoint before chunk sharing.

    The state's encoded skeleton and leaves (as ``snapline.state`` encodes them) plus the
    msgpack size of the protocol meta and engine extras. ``None`` if the state or meta cannot
    be encoded (a user's Process in the simulator may hold objects the store would refuse).
    """
    try:
        tree = encode_tree(image.state)
        meta = msgpack.packb([image.record.meta, dict(image.extras)], use_bin_type=True)
    except (EncodeError, TypeError, ValueError):
        return None
    return len(tree.skeleton) + sum(leaf.nbytes for leaf in tree.leaves) + len(meta)


class StorageMisuse(Exception):
    """A protocol asked storage for something impossible (commit before persist, ...)."""


@dataclass(slots=True)
class StoredCheckpoint:
    """One local checkpoint in storage, with its attachments and status."""

    image: CheckpointImage
    taken_at_s: float
    size_bytes: int | None = None
    attachments: dict[str, PlainData] = field(default_factory=dict)
    persisted: bool = False
    committed: bool = False

    def record(self) -> CheckpointRecord:
        """The record with its attachments, as recovery planners see it."""
        if not self.attachments:
            return self.image.record
        return dataclasses.replace(self.image.record, attachments=dict(self.attachments))


class StableStorage:
    """Per-rank checkpoints and message logs."""

    __slots__ = ("bytes_stored", "checkpoints", "logs", "n", "unsized_checkpoints")

    def __init__(self, n: int) -> None:
        self.n = n
        #: Bytes of every persisted checkpoint, as the real store would write them before
        #: sharing chunks between checkpoints (an upper bound on what it writes).
        self.bytes_stored = 0
        #: Persisted checkpoints whose size could not be measured (state not encodable).
        self.unsized_checkpoints = 0
        self.checkpoints: list[dict[int, StoredCheckpoint]] = [{} for _ in range(n)]
        self.logs: list[list[PlainData]] = [[] for _ in range(n)]

    def begin_write(self, rank: int, image: CheckpointImage, now_s: float) -> None:
        """A checkpoint write starts; ``image.state`` is copied here."""
        index = image.record.index
        if index <= 0:
            raise StorageMisuse(f"rank {rank} took checkpoint index {index}; indices start at 1")
        if index in self.checkpoints[rank]:
            raise StorageMisuse(f"rank {rank} took checkpoint {index} twice")
        extras = dict(image.extras)
        # The random state is a tuple of 600-odd ints, immutable: copying it int by int was
        # most of the cost of a checkpoint in a large run. The memo hands it over as is.
        random_state = extras.get("random")
        memo: dict[int, Any] = {} if random_state is None else {id(random_state): random_state}
        copied = CheckpointImage(
            record=image.record,
            state=copy.deepcopy(image.state),
            extras=copy.deepcopy(extras, memo),
        )
        self.checkpoints[rank][index] = StoredCheckpoint(
            image=copied, taken_at_s=now_s, size_bytes=checkpoint_size_bytes(copied)
        )

    def finish_write(self, rank: int, index: int) -> bool:
        """The write completed; False if the checkpoint was discarded meanwhile."""
        stored = self.checkpoints[rank].get(index)
        if stored is None:
            return False
        stored.persisted = True
        if stored.size_bytes is None:
            self.unsized_checkpoints += 1
        else:
            self.bytes_stored += stored.size_bytes
        return True

    def lose_writes(self, rank: int) -> int:
        """``rank`` crashed: writes in progress are lost. Returns how many."""
        lost = [i for i, c in self.checkpoints[rank].items() if not c.persisted]
        for index in lost:
            del self.checkpoints[rank][index]
        return len(lost)

    def attach(self, rank: int, index: int, key: str, meta: PlainData) -> None:
        """Store ``meta`` under ``key`` with checkpoint ``index``."""
        stored = self.checkpoints[rank].get(index)
        if stored is None:
            raise StorageMisuse(f"rank {rank} attached {key!r} to unknown checkpoint {index}")
        stored.attachments[key] = copy.deepcopy(meta)

    def commit(self, rank: int, index: int) -> None:
        """Make a persisted checkpoint eligible for recovery."""
        stored = self.checkpoints[rank].get(index)
        if stored is None:
            raise StorageMisuse(f"rank {rank} committed unknown checkpoint {index}")
        if not stored.persisted:
            raise StorageMisuse(
                f"rank {rank} committed checkpoint {index} before it was persisted "
                "(commit only after CheckpointPersisted)"
            )
        stored.committed = True

    def discard(self, rank: int, index: int) -> None:
        """Drop a checkpoint that will never commit."""
        stored = self.checkpoints[rank].get(index)
        if stored is not None and stored.committed:
            raise StorageMisuse(f"rank {rank} discarded committed checkpoint {index}")
        self.checkpoints[rank].pop(index, None)

    def void_after(self, rank: int, index: int) -> int:
        """``rank`` rolled back to ``index``: its later checkpoints are an undone future."""
        later = [i for i in self.checkpoints[rank] if i > index]
        for i in later:
            del self.checkpoints[rank][i]
        return len(later)

    def collect_garbage(self, rank: int, before_index: int) -> int:
        """Delete committed checkpoints below ``before_index``; returns how many."""
        old = [i for i, c in self.checkpoints[rank].items() if c.committed and i < before_index]
        for index in old:
            del self.checkpoints[rank][index]
        return len(old)

    def committed_records(self, rank: int) -> list[CheckpointRecord]:
        """Rank's committed checkpoint records, oldest first, starting with index 0."""
        stored = sorted((i, c) for i, c in self.checkpoints[rank].items() if c.committed)
        return [initial_record(rank), *(c.record() for _, c in stored)]

    def tentative_records(self, rank: int) -> list[CheckpointRecord]:
        """Rank's persisted checkpoints neither committed nor discarded, oldest first."""
        stored = sorted(
            (i, c) for i, c in self.checkpoints[rank].items() if c.persisted and not c.committed
        )
        return [c.record() for _, c in stored]

    def restore_image(self, rank: int, index: int) -> tuple[CheckpointImage, float]:
        """A private copy of committed checkpoint ``index`` and the time it was taken."""
        stored = self.checkpoints[rank].get(index)
        if stored is None or not stored.committed:
            raise StorageMisuse(f"rank {rank} has no committed checkpoint {index}")
        image = CheckpointImage(
            record=stored.record(),
            state=copy.deepcopy(stored.image.state),
            extras=copy.deepcopy(dict(stored.image.extras)),
        )
        return image, stored.taken_at_s

    def stored_count(self) -> dict[str, Any]:
        """How many checkpoints are committed and pending, over all ranks."""
        committed = sum(c.committed for ckpts in self.checkpoints for c in ckpts.values())
        total = sum(len(ckpts) for ckpts in self.checkpoints)
        return {"committed": committed, "uncommitted": total - committed}
