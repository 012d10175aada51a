"""``snapline mpirun --levels``: the MPI Checkpointer writes node-local first, protected on a
partner node and flushed to a shared directory; a restore after losing one node's directory,
then every node's, loads the committed step from the level that still holds it."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from mpi_support import PROGRAMS, python, require_mpi, run

pytestmark = pytest.mark.timeout(150)

CASES = str(PROGRAMS / "levels_cases.py")


def _said(store: Path, rank: int) -> list[str]:
    said = store.parent / f"said-by-rank-{rank}.txt"
    lines = said.read_text().splitlines() if said.exists() else []
    said.unlink(missing_ok=True)
    return lines


def _mpirun(tmp_path: Path, case: str) -> tuple[int, str]:
    store = tmp_path / "ckpts"
    levels = f"local:{tmp_path / 'scratch'},partner,remote:{tmp_path / 'shared'}"
    argv = [
        sys.executable, "-m", "snapline", "mpirun", "-n", "2", "--max-restarts", "0",
        "--levels", levels, "--flush-every", "2", "--node-of", "a,b",
        "--", python(), CASES, case, str(store),
    ]  # fmt: skip
    return run(argv, cwd=tmp_path)


def test_checkpointer_on_levels_survives_a_lost_node_then_every_node(tmp_path: Path) -> None:
    require_mpi()
    store = tmp_path / "ckpts"
    code, output = _mpirun(tmp_path, "write")
    assert code == 0, output
    assert [_said(store, r) for r in (0, 1)] == [["wrote 1..6"]] * 2
    # The commit record names the levels every part was durable on when it was written.
    record = json.loads((store / "commits" / "000000000006.json").read_text())
    assert record["levels"] == ["local", "partner"]
    assert not (store / "rank-0").exists()  # the parts live on the levels

    shutil.rmtree(tmp_path / "scratch" / "b")  # rank 1's node
    code, output = _mpirun(tmp_path, "restore")
    assert code == 0, output
    assert _said(store, 0) == ["restored step 6 intact=True from local"], output
    assert _said(store, 1) == ["restored step 6 intact=True from partner"], output

    shutil.rmtree(tmp_path / "scratch")  # every node
    code, output = _mpirun(tmp_path, "restore")
    assert code == 0, output
    for rank in (0, 1):
        assert _said(store, rank) == ["restored step 6 intact=True from remote"], output
