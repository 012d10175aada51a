"""The documentation's examples run as written.

The how-to guides' Python blocks run in an empty directory, and each ``print(...)  # value``
line must print that value. The testing guide's ``relay.py`` and ``test_relay.py`` are saved
and run under pytest, as a user would. The tutorial's blocks, pasted in order into a fresh
shell, run and end with the totals it quotes (slow: several real jobs).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.M | re.S)
# "Save this as `x.py`:" or "Save this as `x.py` (a remark):" or "and this as `y.py`:".
_SAVE_AS = re.compile(
    r"[Ss]ave this as\s+`([^`]+)`(?: \([^)]*\))?:\s*$|and this as\s+`([^`]+)`:\s*$"
)
_PRINTS = re.compile(r"^\s*print\(.*\)\s+# (.+?)\s*$", re.M)


def _blocks(page: str) -> list[tuple[str, str, str]]:
    """(language, code, the text before it) for each fenced block of ``docs/page``."""
    text = (DOCS / page).read_text()
    blocks, end = [], 0
    for match in _FENCE.finditer(text):
        blocks.append((match.group(1), match.group(2), text[end : match.start()]))
        end = match.end()
    return blocks


def _env() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONHOME") and not key.startswith("SNAPLINE_")
    }


@pytest.mark.parametrize("page", ["howto/store.md", "howto/journal.md", "howto/resize.md"])
def test_howto_python_blocks_run_and_print_what_they_say(page: str, tmp_path: Path) -> None:
    blocks = [code for language, code, _ in _blocks(page) if language == "python"]
    assert blocks, f"no python block in docs/{page}"
    for number, code in enumerate(blocks):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"docs/{page} block {number} fails:\n{done.stderr}"
        printed = done.stdout.splitlines()
        assert printed == _PRINTS.findall(code), f"docs/{page} block {number} prints {printed}"


def _save_files(page: str, directory: Path) -> list[str]:
    saved = []
    for language, code, before in _blocks(page):
        wanted = _SAVE_AS.search(before.strip())
        if language == "python" and wanted:
            name = wanted.group(1) or wanted.group(2)
            (directory / name).write_text(code)
            saved.append(name)
    return saved


def test_testing_guide_example_passes_under_pytest(tmp_path: Path) -> None:
    assert _save_files("howto/testing.md", tmp_path) == ["relay.py", "test_relay.py"]
    # The failure-free test and one protocol's two tests: the whole file takes a while.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_relay.py",
            "-k",
            "failure_free or chandy-lamport",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "3 passed" in done.stdout, done.stdout


@pytest.mark.slow
def test_tutorial_blocks_run_in_order_in_a_fresh_shell(tmp_path: Path) -> None:
    lines = ["set -euo pipefail"]
    for number, (language, code, before) in enumerate(_blocks("tutorial.md")):
        if language == "bash":
            lines += [f"echo '--- tutorial block {number}' >&2", code]
        elif language == "python":
            wanted = _SAVE_AS.search(before.strip())
            assert wanted, f"tutorial block {number}: python that is not saved to a file"
            marker = f"TUTORIAL_BLOCK_{number}_END"
            name = shlex.quote(wanted.group(1))
            lines += [f"cat > {name} <<'{marker}'", code.rstrip("\n"), marker]
    (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    script = tmp_path / "tutorial.sh"
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        ["bash", str(script)],
        cwd=tmp_path,
        env=_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    expected = {"0": 1683, "1": 1717, "2": 1650}  # the totals the tutorial quotes
    assert "1683, 1717 and 1650" in (DOCS / "tutorial.md").read_text()
    work = tmp_path / "try"
    jobs = ["job", "job-kill", "job-dies", "job-two-phase", "job-uncoordinated"]
    for job in [*jobs, "job-message-logging"]:
        summary = json.loads((work / job / "summary.json").read_text())
        assert summary["results"] == expected, f"{job}: {summary['results']}"
    assert (work / "kill.svg").is_file() and (work / "compare.png").is_file()
