"""``snapline journal inspect``: images, segments, --edits, --image, and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from snapline.cli.main import app, main
from snapline.journal import KEY_VALUE, JournalConfig, kv_delete, kv_set, open_journal

runner = CliRunner()


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    d = tmp_path / "j"
    with open_journal(d, KEY_VALUE, JournalConfig(checkpointer="off")) as journal:
        journal.append_batch([kv_set(f"key{i}", i) for i in range(3)])
        journal.checkpoint()
        journal.append(kv_delete("key0"))
    return d


def test_inspect_lists_images_and_segments(journal_dir: Path) -> None:
    result = runner.invoke(app, ["journal", "inspect", str(journal_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "image_0000000000000000003" in result.output
    assert "4..4" in result.output and "finalized" in result.output and "clean" in result.output
    assert "1 images, 1 segments, 1 records" in result.output


def test_inspect_shows_a_torn_tail_without_cutting_it(journal_dir: Path) -> None:
    seg = next(journal_dir.glob("edits_0*"))
    torn = seg.with_name("edits_inprogress_" + seg.name.split("_")[1].split("-")[0])
    os.replace(seg, torn)
    with open(torn, "ab") as f:
        f.write(b"\xff" * 9)
    size = torn.stat().st_size
    result = runner.invoke(app, ["journal", "inspect", str(journal_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"torn at offset {size - 9}" in result.output
    assert torn.stat().st_size == size


def test_inspect_edits_and_image(journal_dir: Path) -> None:
    edits = runner.invoke(app, ["journal", "inspect", str(journal_dir), "--edits"])
    assert edits.exit_code == 0 and "'delete'" in edits.output and "key0" in edits.output
    image = runner.invoke(app, ["journal", "inspect", str(journal_dir), "--image", "3"])
    assert image.exit_code == 0 and "'key2': 2" in image.output and "3 entries" in image.output


def test_inspect_of_a_non_journal_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["journal", "inspect", str(tmp_path)])
    assert exit_info.value.code == 1
    assert "not a journal directory" in " ".join(capsys.readouterr().err.split())


def test_help_documents_the_command() -> None:
    result = runner.invoke(app, ["journal", "inspect", "--help"])
    assert result.exit_code == 0 and "--edits" in result.output and "oiv" in result.output
