"""The Ray engine on a cluster of three hosts: TCP channels, moved ranks, remote failures.

The hosts are three Ray nodes on this machine with different loopback addresses (the head on
this host's address, two on 127.0.0.2 and 127.0.0.3), so ranks listen and connect over TCP
between different addresses, a restarted rank comes back on another node with a new address,
and ranks off the head's address are watched without a pidfd, as on another machine. What
this cannot show: a network between the hosts (loss, latency, partitions) and a host whose
kernel vanishes with unsent bytes (here a dead process's kernel still sends what it wrote).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ray_support import require_ray

PROGRAM = Path(__file__).resolve().parent / "ray_programs" / "multi_host.py"


def run_cases(tmp_path: Path, cases: list[str], timeout_s: float) -> list[dict[str, Any]]:
    """Run ``multi_host.py`` on ``cases``; its reports (the refusal first)."""
    require_ray()
    # Its own process: a cluster of three raylets cannot share this session's Ray.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPLINE_")}
    done = subprocess.run(
        [sys.executable, str(PROGRAM), str(tmp_path), *cases],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and reports and reports[-1] == {"done": True}, (
        done.stdout[-4000:] + done.stderr[-4000:]
    )
    return reports[:-1]


def check_case(report: dict[str, Any], why: str) -> None:
    """One rank on another host failed once, moved, and the job ended exactly."""
    assert "error" not in report, report
    assert report["transport"] == "tcp", report
    victim = str(report["victim"])
    assert report["before"][victim][0] in ("127.0.0.2", "127.0.0.3"), report
    # ``ps`` shows where each rank runs: three hosts before the failure.
    assert len({node for node, _ in report["before"].values()}) == 3, report
    assert [f["rank"] for f in report["failures"]] == [report["victim"]], report
    assert why in report["failures"][0]["why"], report
    assert report["recoveries"] == 1, report
    # The restarted rank listens somewhere new, and its peers reached it there.
    first, *later = report["addresses"][victim]
    assert later and later[-1] != first, report
    assert report["after"][victim][1] != report["before"][victim][1], report
    assert report["problems"] == [], report
    assert not report["outlived"], report  # a hung rank was ended (through Ray: no pidfd)
    assert sum(report["results"].values()) == 3 * 1000, report  # bank: money conserved


def check_refused(report: dict[str, Any]) -> None:
    assert "node-local file system" in report["refused"], report
    assert "--shared-store" in report["refused"], report
    assert not report["left_a_job"], report


@pytest.mark.timeout(200)
def test_kill_9_of_a_rank_on_another_host_is_recovered_over_tcp(tmp_path: Path) -> None:
    refused, killed = run_cases(tmp_path, ["chandy-lamport:kill9"], timeout_s=180)
    check_refused(refused)
    check_case(killed, "")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_failure_of_a_remote_rank_under_both_protocol_families(tmp_path: Path) -> None:
    cases = {
        "message-logging:kill9": "",
        "chandy-lamport:node": "",
        "message-logging:node": "",
        "message-logging:raykill": "",
        "chandy-lamport:raykill": "",
        "message-logging:hang": "no heartbeat",
    }
    refused, *reports = run_cases(tmp_path, list(cases), timeout_s=580)
    check_refused(refused)
    for report in reports:
        check_case(report, cases[report["case"]])
