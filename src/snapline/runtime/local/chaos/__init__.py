"""``snapline chaos``: a standing fault campaign against real jobs of the local runtime.

A campaign runs an app under one or more protocols, many times, as real jobs (``snapline
run``), and injects faults into each from outside on a schedule drawn from one seed:
``kill -9`` of random ranks (also of replacements while the job recovers), ``SIGSTOP`` (hangs
and short pauses), the whole job killed and then resumed with ``--resume``, and strangers that
send garbage and crafted frames to the job's sockets. Each run is then checked against a
failure-free run of the same job: the results, exactly-once delivery, the released outputs
(none lost or repeated), no process left behind, and failures reported = failures injected.
Every run prints a replay command that draws the same schedule again.

Modules: ``schedule`` (faults drawn from a seed), ``inject`` (signals and strangers from
outside the job), ``driver`` (one run's job driven from outside), ``checks`` (what a run must
satisfy), ``campaign`` (runs, references and records).
"""

from __future__ import annotations

from snapline.runtime.local.chaos.campaign import (
    CampaignConfig,
    RunRecord,
    default_params,
    run_campaign,
    run_one,
)
from snapline.runtime.local.chaos.schedule import (
    DEFAULT_FAULTS,
    Fault,
    FaultKind,
    draw_schedule,
    parse_faults,
)

__all__ = [
    "DEFAULT_FAULTS",
    "CampaignConfig",
    "Fault",
    "FaultKind",
    "RunRecord",
    "default_params",
    "draw_schedule",
    "parse_faults",
    "run_campaign",
    "run_one",
]
