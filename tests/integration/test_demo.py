"""The Quickstart's demo: a real job, a real kill -9, recovery, and the checks it prints."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from snapline.runtime.local.demo import DEMO_KILL, DEMO_RANKS, distributed_demo


def test_the_demo_recovers_from_its_kill_and_says_what_it_re_delivered(tmp_path: Path) -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    result = distributed_demo(tmp_path / "demo", console)
    text = " ".join(out.getvalue().split())  # as read, whatever rich wrapped
    assert [f["rank"] for f in result.failures] == [DEMO_KILL[0]]
    assert len(result.recoveries) == 1
    # How many recorded in-transit transfers came back is printed, and is the recovery's count.
    said = re.search(r"(\d+) recorded in-transit transfers re-delivered", text)
    assert said, text
    assert int(said.group(1)) == result.recoveries[0]["replayed"]
    assert "money conserved" in text
    assert len(result.results) == DEMO_RANKS
    assert (tmp_path / "demo" / "spacetime.png").stat().st_size > 0
