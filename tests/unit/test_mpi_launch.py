"""``snapline mpirun``'s relaunch loop, with a stand-in mpiexec that fails on chosen launches."""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import pytest

from snapline.errors import ConfigError, RuntimeFailure
from snapline.mpi._launch import backoff_for, describe_exit, find_mpiexec, relaunch_loop


def _fake_mpiexec(tmp_path: Path, fail_first: int) -> str:
    """An "mpiexec -n N PROGRAM..." that fails its first ``fail_first`` launches (exit 9)."""
    script = tmp_path / "mpiexec"
    script.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$*" >> "$(dirname "$0")/launches"\n'
        f'[ "$SNAPLINE_MPI_ATTEMPT" -lt {fail_first} ] && exit 9\n'
        "shift 2\n"
        'exec "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_a_failing_job_is_relaunched_until_it_succeeds(tmp_path: Path) -> None:
    said: list[str] = []
    relaunches = relaunch_loop(
        ["true"],
        ranks=3,
        max_restarts=3,
        backoff_s=0.0,
        mpiexec=_fake_mpiexec(tmp_path, fail_first=2),
        say=said.append,
    )
    assert relaunches == 2
    assert (tmp_path / "launches").read_text().splitlines() == ["-n 3 true"] * 3
    assert said[0].startswith("snapline mpirun: the job exited with code 9; relaunch 1 of 3")
    assert said[-1] == "snapline mpirun: the job finished after 2 relaunch(es)"


def test_the_restart_limit_ends_the_loop_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match=r"failed 2 time\(s\); giving up after --max-rest"):
        relaunch_loop(
            ["true"],
            ranks=2,
            max_restarts=1,
            backoff_s=0.0,
            mpiexec=_fake_mpiexec(tmp_path, fail_first=5),
            say=lambda _: None,
        )


def test_back_off_doubles_and_is_capped() -> None:
    assert [backoff_for(n, 1.0) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff_for(30, 1.0) == 300.0
    assert backoff_for(4, 0.0) == 0.0


def test_exit_statuses_in_words() -> None:
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


@pytest.mark.parametrize(
    ("program", "ranks", "max_restarts", "says"),
    [([], 2, 1, "give the program"), (["x"], 0, 1, "--ranks"), (["x"], 2, -1, "--max-restarts")],
)
def test_bad_input_is_a_config_error(
    program: list[str], ranks: int, max_restarts: int, says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        relaunch_loop(
            program,
            ranks=ranks,
            max_restarts=max_restarts,
            backoff_s=0.0,
            mpiexec="mpiexec",
            say=lambda _: None,
        )


def test_an_mpiexec_that_does_not_exist_is_named() -> None:
    with pytest.raises(ConfigError, match="no-such-mpiexec"):
        find_mpiexec("no-such-mpiexec")
