"""Simulated stable storage: writes, commits, crashes, voiding and garbage collection."""

from __future__ import annotations

import pytest

from snapline.protocols.base import CheckpointRecord
from snapline.runtime.engine import CheckpointImage
from snapline.runtime.sim.storage import StableStorage, StorageMisuse


def image(rank: int, index: int, state: object) -> CheckpointImage:
    record = CheckpointRecord(rank=rank, index=index, forced=False, sent={}, received={})
    return CheckpointImage(record=record, state=state, extras={"k": [1]})


def test_state_is_copied_at_write_start_and_again_at_restore() -> None:
    store = StableStorage(1)
    state = {"x": [1]}
    store.begin_write(0, image(0, 1, state), now_s=2.0)
    state["x"].append(2)  # the process goes on
    assert store.finish_write(0, 1)
    store.commit(0, 1)
    restored, taken_at_s = store.restore_image(0, 1)
    assert restored.state == {"x": [1]} and taken_at_s == 2.0
    restored.state["x"].append(9)
    assert store.restore_image(0, 1)[0].state == {"x": [1]}


def test_uncommitted_and_unpersisted_checkpoints_are_invisible() -> None:
    store = StableStorage(1)
    store.begin_write(0, image(0, 1, 1), 0.0)
    with pytest.raises(StorageMisuse, match="before it was persisted"):
        store.commit(0, 1)
    assert [r.index for r in store.committed_records(0)] == [0]
    assert store.lose_writes(0) == 1
    with pytest.raises(StorageMisuse, match="unknown"):
        store.commit(0, 1)


def test_attachments_appear_in_committed_records() -> None:
    store = StableStorage(1)
    store.begin_write(0, image(0, 3, 1), 0.0)
    store.attach(0, 3, "channel_state", {"1": [[1, "p"]]})
    store.finish_write(0, 3)
    store.commit(0, 3)
    (_, rec) = store.committed_records(0)
    assert rec.attachments == {"channel_state": {"1": [[1, "p"]]}}
    with pytest.raises(StorageMisuse):
        store.attach(0, 9, "k", 1)


def test_void_discard_and_garbage_collection() -> None:
    store = StableStorage(1)
    for i in (1, 2, 3, 4):
        store.begin_write(0, image(0, i, i), 0.0)
        store.finish_write(0, i)
        if i < 4:
            store.commit(0, i)
    with pytest.raises(StorageMisuse, match="twice"):
        store.begin_write(0, image(0, 2, 2), 0.0)
    with pytest.raises(StorageMisuse, match="discarded committed"):
        store.discard(0, 1)
    store.discard(0, 4)
    assert store.collect_garbage(0, 2) == 1
    assert store.void_after(0, 2) == 1
    assert [r.index for r in store.committed_records(0)] == [0, 2]
    assert store.stored_count() == {"committed": 1, "uncommitted": 0}
