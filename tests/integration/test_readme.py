"""The README works as written: its code blocks, pasted in order into a fresh shell, run.

Every fenced block except the Quickstart's (which installs and runs the demo and the test
suite, i.e. this file) becomes part of one bash script, in README order: ``bash`` blocks as they
are, a ``python`` block that the text before it says to save ("Save this as `counter.py`:") as
that file, any other ``python`` block run with the environment's ``python``. The script runs in
an empty directory that holds only a ``.venv`` link to the environment these tests run in, as a
fresh clone would hold one after ``./dev demo``. The figures the README quotes from a command
are checked against what the command reports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from snapline.analysis.units import human_seconds

README = Path(__file__).resolve().parents[2] / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.M | re.S)
_SAVE_AS = re.compile(r"[Ss]ave (?:this|it) as `([^`]+)`:\s*$")
_QUICKSTART = "./dev demo"


@dataclass(frozen=True, slots=True)
class Block:
    language: str
    code: str
    before: str  # the README text between the previous block and this one


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    end = 0
    for match in _FENCE.finditer(text):
        blocks.append(Block(match.group(1), match.group(2), text[end : match.start()]))
        end = match.end()
    return blocks


def as_script(blocks: list[Block]) -> str:
    """The blocks as one bash script, as a user pasting them in order would run them."""
    lines = ["set -euo pipefail"]
    for number, block in enumerate(blocks):
        lines.append(f"echo '--- README block {number}' >&2")
        if block.language in ("bash", "sh", "shell", "console"):
            lines.append(block.code)
        elif block.language == "python":
            save_as = _SAVE_AS.search(block.before.strip())
            marker = f"README_BLOCK_{number}_END"
            assert marker not in block.code
            if save_as:
                lines.append(f"cat > {shlex.quote(save_as.group(1))} <<'{marker}'")
            else:
                lines.append(f"python - <<'{marker}'")
            lines.append(block.code.rstrip("\n"))
            lines.append(marker)
        else:
            raise AssertionError(
                f"README block {number} has language {block.language!r}: give it one this "
                "test knows how to run (bash or python)"
            )
    return "\n".join(lines) + "\n"


def test_every_readme_block_runs_in_order_in_a_fresh_shell(tmp_path: Path) -> None:
    blocks = readme_blocks(README.read_text())
    quickstart = [b for b in blocks if _QUICKSTART in b.code]
    assert len(quickstart) == 1, "the Quickstart block (./dev demo, ./dev test) is not found"
    runnable = [b for b in blocks if b is not quickstart[0]]
    assert len(runnable) >= 5, "fewer README blocks than expected: did the parser break?"

    (tmp_path / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    script = tmp_path / "readme.sh"
    script.write_text(as_script(runnable))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONHOME") and not key.startswith("SNAPLINE_")
    }
    done = subprocess.run(
        ["bash", str(script)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=420,  # a hang guard: the script took 225 s at load 6 on 2 cores
    )
    assert done.returncode == 0, (
        f"the README's blocks fail when run in order (exit {done.returncode}); the last block "
        f"started is named last below\n--- stdout\n{done.stdout[-4000:]}\n"
        f"--- stderr\n{done.stderr[-4000:]}"
    )

    # The counter's three jobs end with the totals the README quotes, and the resumed job
    # really was a resume.
    quoted = re.search(r"same totals \((\d+), (\d+) and (\d+)\)", README.read_text())
    assert quoted, "the README no longer quotes the counter's totals"
    expected = {str(rank): int(total) for rank, total in enumerate(quoted.groups())}
    work = tmp_path / "try"
    for job in ("job", "job-kill", "job-dies"):
        summary = json.loads((work / job / "summary.json").read_text())
        assert summary["results"] == expected, f"{job}: {summary['results']}"
    killed = json.loads((work / "job-kill" / "summary.json").read_text())
    assert len(killed["failures"]) == 1, killed["failures"]

    # The word count killed on 4 ranks and resumed on 6 counted every word once.
    resized = json.loads((work / "wc" / "summary.json").read_text())
    words = sum(sum(counts.values()) for counts in resized["results"].values())
    assert (resized["n"], resized["violations"], words) == (6, [], 12 * 150), resized


def test_the_domino_figures_quoted_in_the_readme_are_what_compare_reports(
    tmp_path: Path,
) -> None:
    text = README.read_text()
    command = next(
        b.code for b in readme_blocks(text) if b.code.lstrip().startswith("snapline compare")
    )
    argv = shlex.split(command.replace("\\\n", " "))[1:]
    out = tmp_path / "compare.json"
    subprocess.run(
        [sys.executable, "-m", "snapline", *argv, "--json", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    metrics = {p["protocol"]: p["metrics"] for p in json.loads(out.read_text())["protocols"]}
    prose = " ".join(text.split())
    claim = re.search(
        r"uncoordinated loses (\S+ \S+) of work to the one crash, rolling a rank back (\d+) "
        r"checkpoints \(the domino effect\); bcs loses (\S+ \S+) and fdas (\S+ \S+), paying with "
        r"forced checkpoints instead \((\d+) and (\d+) of them\)",
        prose,
    )
    assert claim, "the README's sentence about the domino figures changed: update this test"
    lost_unc, rollback_unc, lost_bcs, lost_fdas, forced_bcs, forced_fdas = claim.groups()
    assert lost_unc == human_seconds(metrics["uncoordinated"]["work_lost_s"])
    assert int(rollback_unc) == metrics["uncoordinated"]["rollback_checkpoints_max"]
    assert lost_bcs == human_seconds(metrics["bcs"]["work_lost_s"])
    assert lost_fdas == human_seconds(metrics["fdas"]["work_lost_s"])
    assert int(forced_bcs) == metrics["bcs"]["forced_checkpoints"]
    assert int(forced_fdas) == metrics["fdas"]["forced_checkpoints"]
