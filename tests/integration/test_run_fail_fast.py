"""``snapline run`` fails fast and says why, in the user's terms, on the terminal.

Each test runs the real command (real worker processes, real files) on a small ring app and
reads what a user would read: the exit code and the terminal text -- not the logs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import snapline

pytestmark = pytest.mark.timeout(180)

RING = '''
import os
import time

import snapline

#: The hop at which ``check`` raises (-1: never). Tests edit this line to "fix the bug".
BAD_HOP = -1
#: Raise at BAD_HOP only until this file exists (a transient fault); "" to raise every time.
ONCE_FLAG = ""


class Ring(snapline.Process):
    """A token goes around the ring ``hops`` times, paced so that checkpoints happen."""

    def __init__(self, rank, n, hops=30, step_s=0.02, bad_state=0):
        self.rank, self.n, self.hops, self.step_s = rank, n, hops, step_s
        self.bad_state = bad_state
        self.count = 0

    def state(self):
        state = {"count": self.count}
        if self.bad_state:
            state["handle"] = object()
        return state

    def restore(self, state):
        self.count = state["count"]

    def result(self):
        return self.count

    def on_start(self, ctx):
        ctx.finish()
        if self.rank == 0:
            ctx.send(1 % self.n, 0)

    def on_message(self, ctx, src, hop):
        self.count += 1
        check(hop)
        time.sleep(self.step_s)
        if hop + 1 < self.hops:
            ctx.send((self.rank + 1) % self.n, hop + 1)


def check(hop):
    if hop != BAD_HOP:
        return
    if ONCE_FLAG:
        if os.path.exists(ONCE_FLAG):
            return
        open(ONCE_FLAG, "w").close()
    raise ValueError(f"hop {hop} is not allowed")


class Flaky(Ring):
    """Raises at hop 10 an error that names the process: never the same one twice."""

    def on_message(self, ctx, src, hop):
        if hop == 10:
            raise OSError(f"service unavailable (pid {os.getpid()})")
        super().on_message(ctx, src, hop)


class HangingRestore(Ring):
    """Never finishes restoring: a hang during recovery."""

    def restore(self, state):
        time.sleep(120)
'''


def _snapline(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapline", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=170,
        env={**os.environ, "COLUMNS": "200"},
    )


def _ring(tmp_path: Path, **settings: object) -> None:
    text = RING
    for name, value in settings.items():
        default = {"BAD_HOP": "-1", "ONCE_FLAG": '""'}[name]
        text = text.replace(f"{name} = {default}\n", f"{name} = {value!r}\n")
    (tmp_path / "ring.py").write_text(text)


def _flat(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join((result.stdout + result.stderr).split())


def test_unencodable_state_fails_at_the_first_checkpoint_and_allow_pickle_runs_it(
    tmp_path: Path,
) -> None:
    _ring(tmp_path)
    failed = _snapline(
        "run", "ring.py:Ring", "-n", "3", "--interval", "50ms", "--store", "job",
        "-p", "bad_state=1", cwd=tmp_path,
    )  # fmt: skip
    text = _flat(failed)
    assert failed.returncode == 1, text
    # The codec's message, naming the value, and the opt-in -- on the terminal.
    assert "cannot checkpoint its state: cannot encode state['handle']" in failed.stderr, text
    assert "--allow-pickle" in failed.stderr and "untrusted" in failed.stderr, text
    assert "finished in" not in text
    # The opt-in works, on the very store (it stayed resumable).
    resumed = _snapline(
        "run", "--resume", "--store", "job", "--allow-pickle", cwd=tmp_path
    )  # fmt: skip
    assert resumed.returncode == 0, _flat(resumed)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["checkpoints_committed"] > 0
    assert summary["messages_delivered"] == 30


def test_a_typo_in_the_app_path_fails_before_anything_is_created(tmp_path: Path) -> None:
    _ring(tmp_path)
    typo = _snapline("run", "rnig.py:Ring", "-n", "2", "--store", "job", cwd=tmp_path)
    assert typo.returncode == 1, _flat(typo)
    assert "app file 'rnig.py' does not exist" in typo.stderr
    assert "restart limit" not in _flat(typo)
    assert not (tmp_path / "job").exists()

    wrong_class = _snapline("run", "ring.py:Rnig", "-n", "2", "--store", "job", cwd=tmp_path)
    assert wrong_class.returncode == 1
    assert "'Rnig' is not defined in 'ring.py'" in _flat(wrong_class)
    assert not (tmp_path / "job").exists()

    (tmp_path / "broken.py").write_text("import snapline\n\nvalue = undefined_name\n")
    broken = _snapline("run", "broken.py:App", "-n", "2", "--store", "job", cwd=tmp_path)
    assert broken.returncode == 1
    # The user's traceback, their frames only.
    assert 'broken.py", line 3, in <module>' in broken.stderr
    assert "NameError: name 'undefined_name' is not defined" in broken.stderr
    assert "snapline" + os.sep + "runtime" not in broken.stderr
    assert not (tmp_path / "job").exists()

    # Nothing half-made refuses the corrected command.
    fixed = _snapline("run", "ring.py:Ring", "-n", "2", "--store", "job", cwd=tmp_path)
    assert fixed.returncode == 0, _flat(fixed)


def test_an_exception_raised_again_after_a_restore_stops_the_job_resumably(
    tmp_path: Path,
) -> None:
    _ring(tmp_path, BAD_HOP=10)
    failed = _snapline(
        "run", "ring.py:Ring", "-n", "3", "--interval", "50ms", "--store", "job", cwd=tmp_path
    )  # fmt: skip
    text = _flat(failed)
    assert failed.returncode == 1, text
    assert "application bug in rank 2" in failed.stderr, text
    # The user's traceback as Python prints it: their frames, not the supervisor's.
    assert "Traceback (most recent call last):" in failed.stderr
    assert 'ring.py", line' in failed.stderr and "in on_message" in failed.stderr
    assert "ValueError: hop 10 is not allowed" in failed.stderr
    assert "snapline" + os.sep + "runtime" not in failed.stderr
    assert "restart limit" not in text
    assert "snapline run --resume --store" in text
    # Fix the code; the store resumes to the end.
    _ring(tmp_path)
    resumed = _snapline("run", "--resume", "--store", "job", cwd=tmp_path)
    assert resumed.returncode == 0, _flat(resumed)
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["messages_delivered"] == 30


def test_a_first_exception_is_recovered_like_a_crash(tmp_path: Path) -> None:
    _ring(tmp_path, BAD_HOP=10, ONCE_FLAG=str(tmp_path / "raised-once"))
    run = _snapline(
        "run", "ring.py:Ring", "-n", "3", "--interval", "50ms", "--store", "job", cwd=tmp_path
    )  # fmt: skip
    assert run.returncode == 0, _flat(run)
    assert (tmp_path / "raised-once").exists()
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["restarts"] == 1 and summary["messages_delivered"] == 30


def test_an_exception_that_varies_is_restarted_to_the_limit_and_shown(tmp_path: Path) -> None:
    _ring(tmp_path)
    run = _snapline(
        "run", "ring.py:Flaky", "-n", "3", "--interval", "50ms", "--store", "job",
        "--max-restarts", "1", "--no-trace", cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 1, _flat(run)
    assert "restart limit reached" in run.stderr
    # Each failure says what was raised, not how the death was noticed.
    assert _flat(run).count("(raised OSError: service unavailable (pid") == 2
    assert "The last exception of rank 2, in the application's code:" in run.stderr
    assert 'ring.py", line' in run.stderr and "in on_message" in run.stderr
    assert "snapline" + os.sep + "runtime" not in run.stderr


def test_debug_works_after_the_subcommand(tmp_path: Path) -> None:
    run = _snapline("run", "missing.py:App", "-n", "2", "--store", "job", "--debug", cwd=tmp_path)
    assert run.returncode == 1, _flat(run)
    assert "Traceback (most recent call last)" in run.stderr
    assert "ConfigError: app file 'missing.py' does not exist" in run.stderr


def test_a_hang_during_recovery_names_the_rank_and_the_step(tmp_path: Path) -> None:
    _ring(tmp_path)
    run = _snapline(
        "run", "ring.py:HangingRestore", "-n", "3", "--interval", "50ms", "--store", "job",
        "-p", "hops=60", "--kill", "1@500ms", "--heartbeat-timeout", "1s",
        "--max-restarts", "1", "--no-trace", cwd=tmp_path,
    )  # fmt: skip
    text = _flat(run)
    assert run.returncode == 1, text
    assert "restart limit reached" in text
    assert "(no heartbeat: did not send its 'ready' reply to 'restore' of round 1)" in text


def test_a_kill_due_after_the_job_ended_is_reported(tmp_path: Path) -> None:
    _ring(tmp_path)
    run = _snapline(
        "run", "ring.py:Ring", "-n", "2", "--store", "job", "-p", "hops=4", "--kill", "1@60s",
        cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, _flat(run)
    assert "warning: --kill 1@60s did not fire: the job finished" in " ".join(run.stderr.split())


def test_allow_pickle_restores_pickled_states_after_a_kill(tmp_path: Path) -> None:
    _ring(tmp_path)
    result = snapline.run(
        f"{tmp_path / 'ring.py'}:Ring",
        3,
        store=tmp_path / "job",
        interval="50ms",
        kill=["1@400ms"],
        app_options={"bad_state": 1, "hops": 40},
        allow_pickle=True,
        timeout="60s",
    )
    assert sum(result.results.values()) == 40
    # The recovery loaded pickled checkpoints (not the initial states).
    assert len(result.recoveries) == 1
    assert any(int(i) > 0 for i in result.recoveries[0]["restore"].values())
    assert result.checkpoints_committed > 0


def test_the_api_raises_application_error(tmp_path: Path) -> None:
    _ring(tmp_path)
    with pytest.raises(snapline.ApplicationError, match="cannot encode state"):
        snapline.run(
            f"{tmp_path / 'ring.py'}:Ring",
            2,
            store=tmp_path / "job",
            interval="50ms",
            app_options={"bad_state": 1},
            timeout="60s",
        )
