"""The store commands: ls, inspect, verify (exit 1 on damage), gc, diff, and the demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from snapline.cli.main import app, main
from snapline.store import open_store
from snapline.store.manifest import manifest_key

runner = CliRunner()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    root = tmp_path / "s"
    with open_store(root, chunk_bytes=64 * 1024) as store:
        w = np.random.default_rng(0).random(100_000)
        store.save({"model": {"w": w, "b": np.zeros(3, np.float32)}, "step": 1}, step=1)
        w[:100] = 0
        store.save(
            {"model": {"w": w, "b": np.ones(3, np.float32)}, "step": 2}, step=2, meta={"loss": 0.5}
        )
    return root


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_ls(store_dir: Path) -> None:
    code, out = run("ls", str(store_dir))
    assert code == 0
    assert "loss=0.5" in out and "781.3 KiB" in out


def test_inspect_shows_the_tree(store_dir: Path) -> None:
    code, out = run("inspect", str(store_dir), "--step", "2")
    assert code == 0
    assert "'model'" in out and "'w'" in out and "<f8 [100000]" in out
    assert "shared with previous" in out and "'step': 2" in out


def test_verify_ok_then_damaged(store_dir: Path) -> None:
    code, out = run("verify", str(store_dir))
    assert code == 0 and "ok" in out
    path = store_dir / manifest_key(2)
    data = bytearray(path.read_bytes())
    data[40] ^= 1
    path.write_bytes(bytes(data))
    code, out = run("verify", str(store_dir))
    assert code == 1 and "damaged" in out
    code, _ = run("verify", str(store_dir), "--step", "1")
    assert code == 0


def test_gc_and_diff(store_dir: Path) -> None:
    code, out = run("diff", str(store_dir), "1", "2")
    assert code == 0 and "state['model']['w']" in out and "changed" in out
    code, out = run("gc", str(store_dir), "--keep-last", "1")
    assert code == 0 and "deleted steps: 1" in out
    code, out = run("ls", str(store_dir))
    assert code == 0


def test_not_a_store_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(SystemExit) as exc:
        main(["ls", str(tmp_path)])
    assert exc.value.code == 1
    assert "not a snapline store" in capsys.readouterr().err


def test_store_demo(tmp_path: Path) -> None:
    code, out = run("demo", "--store-only", "--dir", str(tmp_path / "demo"))
    assert code == 0, out
    assert "load() returned step 3" in out and "damage in step(s) [4]" in out


def test_diff_shows_changed_scalars_and_strings(tmp_path: Path) -> None:
    root = tmp_path / "d"
    with open_store(root) as store:
        store.save(
            {"w": np.zeros(8), "step": 1, "name": "a", "opt": {"betas": (0.9, 0.99)}, "old": 3},
            step=1,
        )
        store.save(
            {"w": np.zeros(8), "step": 2, "name": "b", "opt": {"betas": (0.9, 0.999)}, "new": 1},
            step=2,
        )
    code, out = run("diff", str(root), "1", "2")
    assert code == 0, out
    assert "state['step']" in out and "1 -> 2" in out
    assert "state['name']" in out and "'a' -> 'b'" in out
    assert "state['opt']['betas'][1]" in out and "0.99 -> 0.999" in out
    assert "state['old']" in out and "removed" in out
    assert "state['new']" in out and "added" in out
    assert "state['w']" not in out  # the array did not change
    assert "5 scalar or string value(s) changed" in out


def test_store_commands_on_a_job_directory_point_to_its_rank_stores(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.json").write_text("{}")
    for command in ("inspect", "verify"):
        result = runner.invoke(app, [command, str(job)], env={"COLUMNS": "200"})
        assert result.exit_code != 0
        assert "the directory of a job" in str(result.exception)
        assert str(job / "rank-0") in str(result.exception)


def test_damage_report_names_what_really_falls_back(store_dir: Path) -> None:
    path = store_dir / manifest_key(2)
    data = bytearray(path.read_bytes())
    data[40] ^= 1
    path.write_bytes(bytes(data))
    code, out = run("verify", str(store_dir))
    assert code == 1
    # There is no `snapline load` command; the fallback is the store's load() (and a resume).
    assert "snapline load" not in out
    assert "store.load()" in out and "newest intact step" in out
