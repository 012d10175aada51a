"""snapline.mpi under real mpiexec (2 ranks): restore, commit atomicity, errors, debug mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mpi_support import PROGRAMS, python, require_mpi, run

CASES = str(PROGRAMS / "ckpt_cases.py")


@pytest.fixture
def mpiexec() -> str:
    return require_mpi()


def _said(store: Path, rank: int) -> list[str]:
    """What rank ``rank`` said in the last case run (and empties it for the next)."""
    said = store.parent / f"said-by-rank-{rank}.txt"
    lines = said.read_text().splitlines() if said.exists() else []
    said.unlink(missing_ok=True)
    return lines


def _case(mpiexec: str, case: str, store: Path) -> tuple[int, str]:
    return run([mpiexec, "-n", "2", python(), CASES, case, str(store)], cwd=store.parent)


def test_first_run_restores_none_and_a_second_checkpointer_restores_the_last_step(
    mpiexec: str, tmp_path: Path
) -> None:
    store = tmp_path / "ckpts"
    code, output = _case(mpiexec, "first-run-then-restore", store)
    assert code == 0, output
    for rank in (0, 1):
        assert _said(store, rank) == [
            "first restore None",
            f"restored step 20 of rank {rank} intact=True",
        ], output
    record = json.loads((store / "commits" / "000000000020.json").read_text())
    assert record["step"] == 20 and record["ranks"] == 2
    assert record["format"] == "snapline-mpi-commit"


def test_a_crash_between_the_part_writes_and_the_commit_leaves_the_previous_checkpoint(
    mpiexec: str, tmp_path: Path
) -> None:
    store = tmp_path / "ckpts"
    code, output = _case(mpiexec, "crash-before-commit", store)
    assert code != 0, output
    for rank in (0, 1):
        assert _said(store, rank) == ["parts of step 20 durable, dying before the commit"]
    # Every part of step 20 is on disk, but no record says the checkpoint is complete.
    for rank in (0, 1):
        manifests = sorted(p.name for p in (store / f"rank-{rank}" / "manifests").iterdir())
        assert manifests == ["000000000010.json", "000000000020.json"]
    assert sorted(p.name for p in (store / "commits").iterdir()) == ["000000000010.json"]

    code, output = _case(mpiexec, "restore-only", store)
    assert code == 0, output
    for rank in (0, 1):
        # Step 10 is restored and the uncommitted parts of 20 dropped, so 20 can be redone.
        assert _said(store, rank) == ["restored step 10", "parts left [10]"], output


def test_a_background_write_error_on_one_rank_is_raised_on_every_rank(
    mpiexec: str, tmp_path: Path
) -> None:
    store = tmp_path / "ckpts"
    code, output = _case(mpiexec, "write-error", store)
    assert code == 0, output
    for rank in (0, 1):
        lines = _said(store, rank)
        assert len(lines) == 1 and lines[0].startswith("caught CheckpointFailed"), (lines, output)
        message = lines[0]
        assert "writing checkpoint step 20 failed on rank 1" in message
        assert "No space left on device (injected)" in message
        assert "newest complete checkpoint is step 10" in message
    # The failed step was never committed.
    assert sorted(p.name for p in (tmp_path / "ckpts" / "commits").iterdir()) == [
        "000000000010.json"
    ]


def test_debug_mode_names_the_channel_with_a_message_in_flight(
    mpiexec: str, tmp_path: Path
) -> None:
    store = tmp_path / "ckpts"
    code, output = _case(mpiexec, "unmatched-message", store)
    assert code == 0, output
    for rank in (0, 1):
        lines = _said(store, rank)
        assert lines[0] == "checkpoint 10 passed the safe-point check", output
        assert lines[1].startswith("caught SafePointViolation: "), output
        assert (
            "rank 0 sent 1 message to rank 1 that rank 1 has not received at checkpoint step 20"
            in lines[1]
        )
