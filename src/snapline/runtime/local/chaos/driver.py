"""Driving one chaos run from outside: its supervisor process, and faults on its progress.

``JobDriver`` starts ``snapline run`` (and ``snapline run --resume`` after a whole-job kill) as
a child process in a new session, carrying the run's environment marker, and reads the job's
status file as ``snapline ps`` does. ``ScheduleRunner`` waits for each fault's progress point
and fires it through ``inject``, recording every signal and whether it landed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapline.errors import ConfigError
from snapline.runtime.local.chaos.checks import Reference, read_log
from snapline.runtime.local.chaos.inject import (
    MARKER_ENV,
    Injection,
    acceptor_answers,
    kill_all,
    send_signal,
    stranger,
)
from snapline.runtime.local.chaos.schedule import Fault, FaultKind
from snapline.runtime.local.config import format_duration_s
from snapline.runtime.local.status import JobStatus, read_status

if TYPE_CHECKING:
    from snapline.runtime.local.chaos.campaign import CampaignConfig

#: Extra time, beyond the job's own --timeout, before the campaign stops a run itself.
WATCHDOG_GRACE_S = 30.0


class JobDriver:
    """The supervisor process of one run (and of its resumed runs), driven from outside."""

    def __init__(
        self, *, config: CampaignConfig, protocol: str, app: str, run_dir: Path, token: str
    ) -> None:
        self.config = config
        self.protocol = protocol
        self.app = app
        self.run_dir = run_dir
        self.store = run_dir / "store"
        self.token = token
        self.proc: subprocess.Popen[bytes] | None = None
        self.segments = 0

    def start(self, *, resume: bool) -> None:
        """Start the job's supervisor (``snapline run``, or ``--resume`` its stored job)."""
        config = self.config
        cmd = [sys.executable, "-m", "snapline", "run"]
        if resume:
            cmd += ["--resume"]
        else:
            cmd += [self.app, "-n", str(config.n), "--protocol", self.protocol]
            cmd += ["--interval", format_duration_s(config.interval_s)]
            for key, value in sorted(config.job_params(self.protocol, self.app).items()):
                cmd += ["-p", f"{key}={value}"]
        cmd += ["--store", str(self.store)]
        cmd += ["--heartbeat-timeout", format_duration_s(config.heartbeat_timeout_s)]
        cmd += ["--timeout", format_duration_s(config.job_timeout_s)]
        # Restarts are what a campaign injects; the job must not give up on them.
        cmd += ["--max-restarts", "1000"]
        env = {**os.environ, MARKER_ENV: self.token, "COLUMNS": "200"}
        self.segments += 1
        with open(self.run_dir / f"run-{self.segments}.log", "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The current supervisor's pid."""
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        """Whether the current supervisor still runs."""
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> JobStatus | None:
        """This supervisor's status (None before it wrote one, or after a resume began)."""
        try:
            status = read_status(self.store)
        except ConfigError:
            return None
        return status if status.supervisor_pid == self.pid else None

    def wait(self, timeout_s: float) -> str:
        """Wait for the supervisor to end; stop it (and its workers) past ``timeout_s``."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            send_signal(self.proc.pid, signal.SIGKILL, self.token)
            self.proc.wait()
            kill_all(self.token)
            return f"still running after {format_duration_s(timeout_s)}: stopped by the campaign"
        if code == 0:
            return "finished"
        tail = (self.run_dir / f"run-{self.segments}.log").read_text(errors="replace")
        last = [line for line in tail.splitlines() if line.strip()][-1:] or [""]
        return f"exit code {code}: {last[0].strip()}"


class ScheduleRunner:
    """Injects one run's schedule into its job and records what landed."""

    def __init__(self, job: JobDriver, reference: Reference, schedule: Sequence[Fault]) -> None:
        self.job = job
        self.config = job.config
        self.total = max(reference.delivered, 1)
        self.schedule = schedule
        self.injections: list[Injection] = []
        self.whole_job_kills = 0
        self.problems: list[str] = []
        #: Pids stopped for good by hang faults (a pause must not continue them).
        self.hung: set[int | None] = set()
        self.deadline = time.monotonic() + self.config.job_timeout_s

    def run(self) -> str:
        """Start the job, fire the schedule, wait for the end; say how the job ended."""
        job = self.job
        job.start(resume=False)
        for fault in self.schedule:
            status = self._wait_point(fault.at)
            if status is None:
                break  # the job ended (or stalled) before this point: the rest never fire
            self._inject(fault, status)
        limit = max(self.deadline - time.monotonic(), 0.0) + WATCHDOG_GRACE_S
        return job.wait(limit)

    def _wait_point(self, at: float) -> JobStatus | None:
        """Wait until the job runs normally with ``at`` of its messages delivered."""
        while time.monotonic() < self.deadline:
            if not self.job.running():
                return None
            status = self.job.status()
            if (
                status is not None
                and status.state == "running"
                and all(r.state == "running" for r in status.ranks)
                and status.messages_delivered >= at * self.total
            ):
                return status
            time.sleep(0.02)
        return None

    def _record(
        self, fault: Fault, action: str, rank: int, pid: int | None, landed: bool, **kw: Any
    ) -> Injection:
        inj = Injection(
            fault=fault.describe(),
            action=action,
            rank=rank,
            pid=pid,
            t_unix=time.time(),
            landed=landed,
            **kw,
        )
        self.injections.append(inj)
        return inj

    def _signal(
        self, fault: Fault, action: str, rank: int, pid: int | None, sig: signal.Signals, **kw: Any
    ) -> Injection:
        t = time.time()
        landed = send_signal(pid, sig, self.job.token)
        inj = self._record(fault, action, rank, pid, landed, **kw)
        inj.t_unix = t  # before the signal: the job cannot have seen it earlier
        return inj

    def _inject(self, fault: Fault, status: JobStatus) -> None:
        pid = status.ranks[fault.rank].pid if fault.rank >= 0 else None
        match fault.kind:
            case FaultKind.KILL:
                self._signal(fault, "kill", fault.rank, pid, signal.SIGKILL, expect_failure=True)
            case FaultKind.HANG:
                self._signal(fault, "stop", fault.rank, pid, signal.SIGSTOP, expect_failure=True)
                self.hung.add(pid)
            case FaultKind.PAUSE if pid in self.hung:
                # Continuing it would undo the hang (and the failure it must cause).
                self._record(fault, "stop", fault.rank, pid, False, note="already hung")
            case FaultKind.PAUSE:
                inj = self._signal(fault, "stop", fault.rank, pid, signal.SIGSTOP)
                inj.note = format_duration_s(fault.pause_s)
                time.sleep(fault.pause_s)
                self._signal(fault, "cont", fault.rank, pid, signal.SIGCONT)
            case FaultKind.RECOVERY_KILL:
                first = self._signal(
                    fault, "kill", fault.rank, pid, signal.SIGKILL, expect_failure=True
                )
                if first.landed:
                    self._kill_during_recovery(fault, killed_pid=pid)
            case FaultKind.STRANGER:
                self._stranger(fault, status)
            case FaultKind.WHOLE_JOB:
                self._whole_job(fault)

    def _kill_during_recovery(self, fault: Fault, *, killed_pid: int | None) -> None:
        """Kill ``fault.second_rank`` ``fault.delay_s`` into the recovery the first kill began."""
        limit = time.monotonic() + self.config.heartbeat_timeout_s + 10.0
        status = None
        while time.monotonic() < limit and self.job.running():
            status = self.job.status()
            if status is not None and status.state == "recovering":
                break
            time.sleep(0.005)
        else:
            return  # the job ended or never began recovering: nothing to hit
        time.sleep(fault.delay_s)
        target = fault.second_rank
        pid: int | None = None
        note = "during recovery"
        while time.monotonic() < limit and self.job.running():
            status = self.job.status()
            if status is None:
                time.sleep(0.005)
                continue
            pid = status.ranks[target].pid
            if target != fault.rank or (pid is not None and pid != killed_pid):
                if status.state != "recovering":
                    note = "just after the recovery"
                break
            time.sleep(0.005)
        if pid is not None and pid != killed_pid:
            self._signal(fault, "kill", target, pid, signal.SIGKILL, expect_failure=True, note=note)

    def _stranger(self, fault: Fault, status: JobStatus) -> None:
        socket_dir = Path(status.socket_dir)
        name = "control.sock" if fault.rank < 0 else f"rank-{fault.rank}.sock"
        path = socket_dir / name
        began = time.time()
        outcome = stranger(path, fault.payload)
        self._record(fault, "stranger", fault.rank, None, True, note=outcome)
        if acceptor_answers(path) is False and not self._ending_since(began):
            self.problems.append(
                f"after a stranger's {fault.payload!r} on {name} the job no longer answers "
                f"connections there ({outcome})"
            )

    def _ending_since(self, t_unix: float) -> bool:
        """Whether the job ended, or began collecting its results, after ``t_unix``.

        Then its ranks stop accepting connections for a good reason.
        """
        if not self.job.running():
            return True
        return any(
            e.get("event") == "collecting_results" and float(e.get("ts", 0.0)) >= t_unix
            for e in read_log(self.job.store)
        )

    def _whole_job(self, fault: Fault) -> None:
        job = self.job
        self._wait_reported()
        t = time.time()
        landed = send_signal(job.pid, signal.SIGKILL, job.token)
        assert job.proc is not None
        job.proc.wait()
        killed = kill_all(job.token)
        self._record(fault, "supervisor-kill", -1, job.pid, landed, note=f"workers {killed}")
        self.injections[-1].t_unix = t
        if not landed:
            return  # the job had ended by itself
        self.whole_job_kills += 1
        job.start(resume=True)

    def _wait_reported(self) -> None:
        """Before a whole-job kill, let the job report the failures injected so far.

        A supervisor killed before it noticed a failure cannot report it; waiting (at most a
        heartbeat timeout and a recovery's worth) keeps "failures reported = injected" exact.
        """
        expected = [i.pid for i in self.injections if i.landed and i.expect_failure]
        limit = time.monotonic() + self.config.heartbeat_timeout_s + 10.0
        while time.monotonic() < limit and self.job.running():
            log = read_log(self.job.store)
            reported = [e.get("pid") for e in log if e.get("event") == "rank_failed"]
            if all(pid in reported for pid in expected):
                status = self.job.status()
                if status is not None and status.state == "running":
                    return
            time.sleep(0.02)
