"""The Checkpointer's commit and restore logic on a one-rank stand-in communicator (no MPI).

The real multi-rank behaviour is in tests/integration/test_mpi_restart.py; here the
bookkeeping is checked fast: which steps are committed, kept and restored, and bad input.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from snapline.errors import CheckpointFailed, ConfigError
from snapline.mpi import Checkpointer, EverySteps
from snapline.mpi._commit import CommitRecord, write_record


class OneRank:
    """The communicator calls the Checkpointer makes, for a job of one rank."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def Dup(self) -> OneRank:
        return self

    def Free(self) -> None:
        pass

    def allgather(self, value: Any) -> list[Any]:
        return [value]

    def bcast(self, value: Any, root: int = 0) -> Any:
        return value


def _state(step: int) -> dict[str, Any]:
    return {"step": step, "u": np.arange(1000.0) + step}


def _commits(root: Path) -> list[int]:
    return sorted(int(p.stem) for p in (root / "commits").glob("*.json"))


def test_first_run_checkpoints_commit_on_the_next_call_and_old_ones_are_deleted(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ckpts"
    with Checkpointer(OneRank(), store=root, every=10, keep_last=2) as ckpt:
        assert ckpt.restore() is None
        ckpt.checkpoint(_state(10), step=10)
        assert _commits(root) == []  # written in the background, committed at the next call
        ckpt.checkpoint(_state(20), step=20)
        assert _commits(root) == [10]
        ckpt.checkpoint(_state(30), step=30)
        ckpt.checkpoint(_state(40), step=40)
    # close() committed 40; keep_last=2 keeps the two newest complete checkpoints only.
    assert _commits(root) == [30, 40]
    with Checkpointer(OneRank(), store=root, every=10) as ckpt:
        state = ckpt.restore()
        assert state["step"] == 40 and np.array_equal(state["u"], _state(40)["u"])
        assert ckpt.store.steps() == _commits(root)


def test_a_checkpoint_abandoned_before_its_commit_is_not_restored_and_its_part_is_dropped(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ckpts"
    ckpt = Checkpointer(OneRank(), store=root, every=10)
    ckpt.restore()
    ckpt.checkpoint(_state(10), step=10)
    ckpt.checkpoint(_state(20), step=20)
    ckpt.store.wait()  # the part of 20 is durable, but no commit record says so
    ckpt.abandon()
    assert _commits(root) == [10]
    with Checkpointer(OneRank(), store=root, every=10) as again:
        assert again.restore()["step"] == 10
        assert again.store.steps() == [10]
        again.checkpoint(_state(20), step=20)  # step 20 can be written again


def test_a_damaged_part_falls_back_to_the_previous_complete_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "ckpts"
    with Checkpointer(OneRank(), store=root, every=10, keep_last=3) as ckpt:
        ckpt.checkpoint(_state(10), step=10)
        ckpt.checkpoint(_state(20), step=20)
    with Checkpointer(OneRank(), store=root, every=10) as peek:
        older = {c.key for c in peek.store.manifest(10).chunks}
        own = [c.key for c in peek.store.manifest(20).chunks if c.key not in older]
        peek.abandon()
    assert own
    for key in own:  # flip a byte in each chunk only step 20 uses
        path = root / "rank-0" / key
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, "snapline.mpi"):
        ckpt = Checkpointer(OneRank(), store=root, every=10)
        assert ckpt.restore()["step"] == 10
        ckpt.close()
    assert "checkpoint step 20 cannot be restored" in caplog.text


def test_a_store_of_a_job_with_another_size_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ckpts"
    write_record(root, CommitRecord(step=10, ranks=4, created_unix_s=1.0))
    ckpt = Checkpointer(OneRank(), store=root, every=10)
    with pytest.raises(ConfigError, match=r"job of \[4\] ranks; this job has 1"):
        ckpt.restore()


def test_a_state_the_safe_codec_cannot_encode_fails_on_every_rank_with_the_cause(
    tmp_path: Path,
) -> None:
    with Checkpointer(OneRank(), store=tmp_path / "c", every=1) as ckpt:
        with pytest.raises(CheckpointFailed, match=r"step 3 could not be started: rank 0: Encode"):
            ckpt.checkpoint({"f": object()}, step=3)
        ckpt.checkpoint(_state(4), step=4)  # the checkpointer is still usable


def test_measured_cost_drives_young_daly_and_time_schedules_use_the_broadcast(
    tmp_path: Path,
) -> None:
    with Checkpointer(OneRank(), store=tmp_path / "c", mtbf_s=3600.0) as ckpt:
        assert ckpt.cost_s is None
        assert ckpt.should_checkpoint(1)  # nothing measured yet: measure now
        ckpt.checkpoint(_state(1), step=1)
        ckpt.checkpoint(_state(2), step=2)
        assert ckpt.cost_s is not None and ckpt.cost_s >= 0
        assert not ckpt.should_checkpoint(3)  # sqrt(2 C M) is far away
        assert ckpt.committed_steps == [1]


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"every": 10, "keep_last": 0}, "keep_last"),
        ({"every": 10, "store": "memory://x"}, "URLs are not supported"),
        ({"every": 10, "policy": EverySteps(3)}, "not both"),
        ({"every": 0}, "every must be"),
        ({"every": 10, "interval_s": 5.0}, "exactly one"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any], says: str, tmp_path: Path) -> None:
    kwargs.setdefault("store", tmp_path / "c")
    with pytest.raises(ConfigError, match=says):
        Checkpointer(OneRank(), **kwargs)


def test_a_closed_checkpointer_says_so(tmp_path: Path) -> None:
    ckpt = Checkpointer(OneRank(), store=tmp_path / "c", every=1)
    ckpt.close()
    with pytest.raises(ConfigError, match="closed"):
        ckpt.checkpoint(_state(1), step=1)


def test_unreadable_commit_records_fail_restore_with_the_cause(tmp_path: Path) -> None:
    root = tmp_path / "ckpts"
    root.mkdir()
    (root / "commits").write_text("a file where the records' directory should be")
    ckpt = Checkpointer(OneRank(), store=root, every=10)
    with pytest.raises(CheckpointFailed, match="rank 0 could not read the commit records"):
        ckpt.restore()
