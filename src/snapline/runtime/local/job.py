"""Running a local job: start, recover from failures, detect termination, report.

Theory of operation
-------------------
The supervisor (``supervisor.Supervisor``) notices failures; this module is the *recovery
coordinator*. Recovery is stop-the-world, in rounds:

1. **Freeze** every surviving rank: it tells its protocol ``PeerFailed``, reads what the dead
   left in its sockets, makes its pending stable writes durable, stops running its engine and
   answers with its *volatile record* (current counters and protocol data).
2. **Plan**: read every rank's ledger (committed checkpoint records, attachments, message logs)
   -- survivors have drained, the dead wrote nothing more -- build the ``RecoveryView`` and call
   the protocol class's pure ``plan_recovery``, the very function the simulator calls.
3. **Restore**: respawn each failed rank (after a backoff if it keeps failing; past the
   restart limit the job ends with ``RuntimeFailure``) and rebuild every rank the plan rolls
   back -- survivors in place, from the store -- under a new recovery epoch. On an engine
   where one death ends every rank (MPI: ``Supervisor.restarts_whole_job``) every rank has
   failed, there is no volatile record, and the respawn is one relaunch of the whole job,
   counted once against the restart limit: the ``--resume`` procedure below.
4. **Reconnect and resume**: channels to new processes are reopened (unacknowledged messages
   are resent; see ``channels``); each rank learns the channel cuts of the rolled-back ranks,
   restored ranks replay the plan's messages before anything new, and every rank is told
   ``RecoveryCompleted``.

A failure during a round (a replacement killed while the others connect to it, say) starts a
new round that plans with it included; ranks already rebuilt in the aborted round count as
failed again (their state is a stored one, not a volatile one). Survivors never give up on a
peer on their own: they retry with backoff until connected or frozen for the next round.
``--resume`` after the whole job died is the same procedure with every rank failed and no
volatile records; ranks that die while it runs are respawned under the same restart limit and
backoff as any other.

Application errors: a rank that fails by raising tells the supervisor what it raised (the
user's frames of the traceback). A first exception is recovered like any crash; a state the
codec cannot encode, or the same exception raised again after a restore, ends the job at once
with ``ApplicationError`` -- no restart can cure a bug -- and leaves the store resumable
(``_check_application_errors``). A rank that dies while a recovery step waits for its reply is
reported with the step it did not answer.

Termination: when every rank reports it is done, holds no timers, undelivered or unsent
messages, and the job-wide number of sends requested equals the number delivered, the
supervisor probes all ranks twice; identical quiescent answers mean nothing is in flight, and
the job stops.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapline.errors import ApplicationError, ConfigError, RuntimeFailure, SnaplineError
from snapline.protocols import protocol_class
from snapline.protocols.base import CheckpointRecord, RecoveryPlan, RecoveryView, initial_record
from snapline.protocols.reachability import INDEX_INCARNATION_SHIFT
from snapline.runtime.local.config import JOB_FILE, JobConfig, app_factory, load_job, save_job
from snapline.runtime.local.ledger import LedgerView, LedgerWriter, ledger_path, read_ledger
from snapline.runtime.local.plain import record_from_plain, replay_to_plain
from snapline.runtime.local.status import JobStatus, RankStatus, read_status, write_status
from snapline.runtime.local.supervisor import (
    STARTUP_TIMEOUT_S,
    RankSlot,
    Supervisor,
    write_log_line,
)
from snapline.runtime.local.tracefile import merge_trace
from snapline.runtime.sim.checks import CheckFailed, RecoveryChecker
from snapline.topology import Topology

_STEP_TIMEOUT_S = 30.0
#: The request each recovery reply answers (for messages that name the step a rank missed).
_REQUEST_OF = {
    "ready": "restore",
    "connected": "connect",
    "frozen": "freeze",
    "resumed": "resume",
    "probe_reply": "probe",
}
#: A job whose ranks all report no activity, no timers and nothing queued, while some channel
#: has sent more than was delivered, for this long, has lost a message: it can never finish.
_STALL_S = 10.0


SupervisorFactory = Callable[..., Supervisor]
"""Builds the job's ``Supervisor`` (process control and failure notification of an engine)
from ``Supervisor``'s keyword arguments."""


class _RoundAborted(Exception):
    """A rank failed while a recovery round waited for it."""


@dataclass(slots=True, kw_only=True)
class RunResult:
    """What a finished local job reports."""

    results: dict[int, Any]
    outputs: dict[int, list[Any]]
    stats: dict[int, dict[str, Any]]
    recoveries: list[dict[str, Any]]
    restarts: int
    elapsed_s: float
    store: Path
    trace_path: Path | None
    protocol: str
    n: int
    messages_delivered: int = 0
    checkpoints_committed: int = 0
    #: Seconds from every rank running to termination detected (no spawn, no shutdown).
    run_s: float = 0.0
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: Guarantees the supervisor saw violated (plan or recovered cut); empty on a correct run.
    violations: list[str] = field(default_factory=list)
    #: What the user asked for that did not happen (a ``--kill`` due after the job ended).
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class Kill:
    """Fault injection: SIGKILL ``rank`` ``at_s`` seconds after every rank started running."""

    rank: int
    at_s: float
    done: bool = False


class LocalJob:
    """One run (or resumed run) of a job on this machine."""

    def __init__(
        self,
        config: JobConfig,
        *,
        resume: bool = False,
        kills: list[tuple[int, float]] | None = None,
        on_status: Callable[[JobStatus], None] | None = None,
        supervisor: SupervisorFactory = Supervisor,
    ) -> None:
        config.validate()
        #: Which engine's process control and failure notification the job runs on.
        self._make_supervisor = supervisor
        self.config = config
        self.store_dir = Path(config.store).resolve()
        self.resume = resume
        self.kills = [Kill(rank=r, at_s=t) for r, t in (kills or [])]
        for kill in self.kills:
            if not 0 <= kill.rank < config.n:
                raise ConfigError(f"--kill names rank {kill.rank}, but ranks are 0..{config.n - 1}")
        self.on_status = on_status
        self.protocol_cls = protocol_class(config.protocol)
        topo = Topology.from_edges(config.n, [(int(s), int(d)) for s, d in config.edges])
        self.edges = topo.edges
        self.epoch = 0
        self.recoveries: list[dict[str, Any]] = []
        self.failures: list[dict[str, Any]] = []
        self.restarts = 0
        self.violations: list[str] = []
        self._recovery_checker = RecoveryChecker()
        self._log_fd = -1
        self._status: JobStatus | None = None
        self._status_due_s = 0.0
        self._rate_mark: tuple[float, int] = (0.0, 0)
        self._t0 = time.monotonic()
        self._probe_seq = 0
        self._rebuilt_this_round: set[int] = set()
        #: When every rank first ran (``--kill`` times count from here, not from the spawn).
        self._running_since_s: float | None = None
        self._terminated_s = 0.0
        #: (idle signature, since when) for the stall detector.
        self._idle_mark: tuple[object, float] | None = None
        #: Ranks whose reply the supervisor waits for, and which (for failure reports).
        self._awaiting: dict[int, str] = {}
        #: (rank, signature) of every exception a rank's application code raised so far.
        self._app_errors: set[tuple[int, tuple[str, ...]]] = set()

    # ------------------------------------------------------------------ helpers

    def log(self, event: str, **fields: object) -> None:
        """Structured log line in ``<store>/logs/supervisor.jsonl``."""
        if self._log_fd >= 0:
            write_log_line(self._log_fd, event, **fields)

    def _boot(self, rank: int) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "rank": rank,
            "secret": self._secret,
            "socket_dir": str(self._socket_dir),
            "t0": self._t0,
            "epoch": self.epoch,
        }

    def _connect_message(self, round_id: int | None) -> dict[str, Any]:
        """``connect``, with where every rank listens now (a restarted rank may have moved)."""
        msg: dict[str, Any] = {"op": "connect", "round": round_id}
        peers = self._sup.peer_table()
        if peers:
            msg["peers"] = peers
        return msg

    def _prepare_store(self) -> None:
        store = self.store_dir
        if self.resume:
            previous = load_job(store)
            if (previous.app, previous.n, previous.protocol) != (
                self.config.app,
                self.config.n,
                self.config.protocol,
            ):
                raise ConfigError(
                    f"{store} holds a job of app {previous.app!r}, n={previous.n}, protocol "
                    f"{previous.protocol!r}; resume it with the same app, -n and --protocol"
                )
            old = refuse_if_running(store, "stop it before resuming")
            if old is not None:
                self.epoch = max(self.epoch, old.incarnation)
            self.epoch = max(self.epoch, self._newest_incarnation())
        elif (store / "job.json").exists():
            raise ConfigError(
                f"{store} already holds a job; continue it with --resume, or use a new --store"
            )
        store.mkdir(mode=0o700, parents=True, exist_ok=True)
        trace_dir = store / "trace"
        if self.resume and trace_dir.exists():
            # Times restart at zero in a resumed run: keep the old run's events apart.
            trace_dir.rename(store / f"trace-before-{int(time.time() * 1000)}")
        for sub in ("logs", "trace", "ledger"):
            (store / sub).mkdir(mode=0o700, exist_ok=True)
        save_job(store, self.config)

    # ------------------------------------------------------------------ status

    def _publish(self, state: str, *, force: bool = False, note: str = "") -> None:
        now = time.monotonic()
        if not force and now < self._status_due_s:
            return
        self._status_due_s = now + 0.25
        sup = self._sup
        delivered = sum(int(s.counters.get("delivered", 0)) for s in sup.slots)
        t_mark, d_mark = self._rate_mark
        rate = (delivered - d_mark) / (now - t_mark) if now > t_mark and t_mark else 0.0
        if now - t_mark >= 1.0 or not t_mark:
            self._rate_mark = (now, delivered)
        status = self._status
        assert status is not None
        status.state = state
        status.incarnation = self.epoch
        status.recoveries = len(self.recoveries)
        status.checkpoints_committed = sum(
            int(s.counters.get("committed", 0)) > 0 for s in sup.slots
        )
        status.recovery_line = {str(s.rank): int(s.counters.get("committed", 0)) for s in sup.slots}
        if rate > 0 or state != "running":
            status.messages_per_s = round(max(rate, 0.0), 1)
        status.messages_delivered = delivered
        status.note = note or status.note
        status.ranks = [
            RankStatus(
                rank=s.rank,
                pid=s.pid,
                node=s.node,
                state=s.state,
                incarnation=s.incarnation,
                restarts=s.restarts,
                last_checkpoint=int(s.counters.get("committed", 0)),
            )
            for s in sup.slots
        ]
        write_status(self.store_dir, status)
        if self.on_status is not None:
            self.on_status(status)

    # ------------------------------------------------------------------ waiting

    def _wait_replies(
        self, ranks: list[int], op: str, round_id: int | None, *, key: str = "round"
    ) -> dict[int, Any]:
        """Wait for ``op`` replies from ``ranks`` whose ``key`` is ``round_id`` (any if None).

        A death aborts the round. Replies with another ``key`` are late answers to an earlier,
        aborted request and are ignored.
        """
        sup = self._sup
        deadline = time.monotonic() + _STEP_TIMEOUT_S
        got: dict[int, Any] = {}
        step = _REQUEST_OF.get(op, op)
        where = "" if round_id is None else f" of {key} {round_id}"
        # Kept after an abort: a rank that died (a hang is detected as a death) while we
        # waited failed *at this step*, and its failure says so (``_failure``).
        self._awaiting = {rank: f"{op!r} reply to {step!r}{where}" for rank in ranks}
        while True:
            for rank in ranks:
                msg = sup.slots[rank].replies.get(op)
                if msg is not None and (round_id is None or msg.get(key) == round_id):
                    got[rank] = msg
                    self._awaiting.pop(rank, None)
            if len(got) == len(ranks):
                for rank in ranks:
                    sup.slots[rank].replies.pop(op, None)
                return got
            if sup.dead:
                raise _RoundAborted
            if time.monotonic() > deadline:
                missing = sorted(set(ranks) - set(got))
                for rank in missing:
                    sup.kill(rank, f"no {op!r} reply to {step!r}{where} within {_STEP_TIMEOUT_S}s")
                sup.poll(0.5)
                raise _RoundAborted
            self._fire_kills()
            sup.poll(0.05)
            self._publish("recovering")

    def _wait_hello(self, ranks: list[int]) -> None:
        sup = self._sup
        # Process start-up (interpreter, imports), not a step of the recovery protocol.
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not all(sup.slots[r].sock is not None for r in ranks):
            if sup.dead:
                raise _RoundAborted
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"ranks {[r for r in ranks if sup.slots[r].sock is None]} did not connect "
                    f"within {STARTUP_TIMEOUT_S}s; see {self.store_dir / 'logs'}"
                )
            sup.poll(0.05)

    def _fire_kills(self) -> None:
        if self._running_since_s is None:
            return
        elapsed = time.monotonic() - self._running_since_s
        for kill in self.kills:
            if not kill.done and elapsed >= kill.at_s:
                kill.done = True
                self._sup.kill(kill.rank, f"--kill {kill.rank}@{kill.at_s}s")

    # ------------------------------------------------------------------ main

    def run(self) -> RunResult:
        """Run the job to completion (or ``RuntimeFailure``).

        The app is imported here first, as every worker will: a typo in its path or an error
        in its module fails at once with the reason, before any file or process is created.
        """
        app_factory(self.config.app, self.config.app_options)
        self._prepare_store()
        self._log_fd = os.open(
            self.store_dir / "logs" / "supervisor.jsonl",
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o600,
        )
        self._secret = secrets.token_bytes(32)
        self._socket_dir = Path(tempfile.mkdtemp(prefix="snapline-"))  # mode 0700
        self._t0 = time.monotonic()
        started = time.time()
        self._status = JobStatus(
            job_id=secrets.token_hex(6),
            app=self.config.app,
            protocol=self.config.protocol,
            n=self.config.n,
            supervisor_pid=os.getpid(),
            state="starting",
            started_at=started,
            socket_dir=str(self._socket_dir),
        )
        try:
            self._sup = self._make_supervisor(
                n=self.config.n,
                socket_dir=self._socket_dir,
                store_dir=self.store_dir,
                secret=self._secret,
                heartbeat_timeout_s=self.config.heartbeat_timeout_s,
                log=self.log,
            )
        except BaseException:
            # The engine refused (e.g. a node-local store for a cluster of several hosts):
            # nothing ran, so a new job leaves no job behind that a corrected rerun with the
            # same store would have to ``--resume``.
            if not self.resume:
                (self.store_dir / JOB_FILE).unlink(missing_ok=True)
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            os.close(self._log_fd)
            self._log_fd = -1
            raise
        self.log("job_start", config=self.config.to_json(), resume=self.resume)
        try:
            self._start()
            self._main_loop()
            while not self._collect_results():
                self._main_loop()
            return self._finish()
        except BaseException as exc:
            self.log("job_failed", error=repr(exc))
            with contextlib.suppress(Exception):
                self._publish("failed", force=True, note=str(exc))
            # The run that failed is the one most worth drawing: write its trace too.
            with contextlib.suppress(Exception):
                self._write_trace(time.monotonic() - self._t0, outcome=f"failed: {exc}")
            raise
        finally:
            self._sup.close()
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            if self._log_fd >= 0:
                os.close(self._log_fd)
                self._log_fd = -1

    def _newest_incarnation(self) -> int:
        """The newest incarnation any rank's ledger has a checkpoint of.

        A resumed job's recovery epochs continue after the previous run's: protocols order
        what they saved by incarnation (Chandy-Lamport's snapshot ids start with it), so a
        resume that counted from 1 again would make new snapshots older than restored ones.
        """
        newest = 0
        for rank in range(self.config.n):
            view = read_ledger(ledger_path(self.store_dir, rank), rank)
            for index in view.persisted:
                newest = max(newest, index >> INDEX_INCARNATION_SHIFT)
        return newest

    def _start(self) -> None:
        sup = self._sup
        ranks = list(range(self.config.n))
        for rank in ranks:
            sup.spawn(rank, self._boot(rank))
        sup.launch()
        if self.resume:
            self._recover(set(ranks), whole_job=True)
            return
        try:
            self._wait_hello(ranks)
            for rank in ranks:
                sup.send(rank, {"op": "init"})
            self._wait_replies(ranks, "ready", None)
            for rank in ranks:
                sup.send(rank, self._connect_message(None))
            self._wait_replies(ranks, "connected", None)
        except _RoundAborted:
            # A rank died before the job ran at all: recover like any failure (from scratch).
            self._recover(set(sup.take_dead()))
            return
        for rank in ranks:
            sup.slots[rank].state = "running"
            sup.send(rank, {"op": "resume", "epoch": 0, "recovery": False})
        self._running_since_s = time.monotonic()
        self._publish("running", force=True)

    def _main_loop(self) -> None:
        sup = self._sup
        deadline = self._t0 + self.config.timeout_s
        while True:
            dead = sup.take_dead()
            if dead:
                self._recover(set(dead))
                continue
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"the job did not finish within {self.config.timeout_s:g}s "
                    "(raise --timeout, or check that every rank calls ctx.finish()); "
                    f"{self.stuck_report()}"
                )
            self._check_stalled()
            if self._looks_quiescent() and self._confirm_termination():
                self._terminated_s = time.monotonic()
                return
            self._fire_kills()
            sup.poll(0.05)
            self._publish("running")

    def stuck_report(self) -> str:
        """What keeps the job from ending: unfinished ranks, channels with messages in flight."""
        slots = self._sup.slots
        unfinished = [s.rank for s in slots if not s.counters.get("done")]
        flight = []
        for src, dst in sorted(self.edges):
            sent = int((slots[src].counters.get("sent_to") or {}).get(dst, 0))
            got = int((slots[dst].counters.get("received_from") or {}).get(src, 0))
            if sent != got:
                flight.append(f"{src}->{dst} sent {sent} delivered {got}")
        busy = [
            f"rank {s.rank}: {k} {s.counters.get(k)}"
            for s in slots
            for k in ("undelivered", "unsent", "timers")
            if s.counters.get(k)
        ]
        return (
            f"ranks not finished: {unfinished or 'none'}; channels with sent != delivered: "
            f"{', '.join(flight) or 'none'}; queued work: {', '.join(busy) or 'none'}; "
            f"logs in {self.store_dir / 'logs'}"
        )

    def _check_stalled(self) -> None:
        """Fail fast (naming what is stuck) when no rank can ever act again."""
        now = time.monotonic()
        counters = [s.counters for s in self._sup.slots]
        idle = all(
            c.get("ready")
            and not c.get("frozen")
            and not c.get("undelivered")
            and not c.get("unsent")
            and not c.get("timers")
            for c in counters
        )
        if not idle or self._looks_quiescent():
            self._idle_mark = None
            return
        signature = (self.epoch, tuple((c.get("activity"), c.get("sent")) for c in counters))
        if self._idle_mark is None or self._idle_mark[0] != signature:
            self._idle_mark = (signature, now)
            return
        if now - self._idle_mark[1] >= _STALL_S:
            raise RuntimeFailure(
                f"the job is stuck: for {_STALL_S:g}s no rank delivered, sent or had a timer "
                f"or queued work, yet it has not terminated; {self.stuck_report()}"
            )

    def _looks_quiescent(self) -> bool:
        counters = [s.counters for s in self._sup.slots]
        if not all(c.get("ready") and not c.get("frozen") for c in counters):
            return False
        if not all(
            c.get("done")
            and not c.get("undelivered")
            and not c.get("unsent")
            and not c.get("timers")
            for c in counters
        ):
            return False
        return sum(int(c["requested"]) for c in counters) == sum(
            int(c["delivered"]) for c in counters
        )

    def _confirm_termination(self) -> bool:
        sup = self._sup
        ranks = list(range(self.config.n))
        answers: list[dict[int, Any]] = []
        for _ in range(2):
            self._probe_seq += 1
            for rank in ranks:
                sup.slots[rank].replies.pop("probe_reply", None)
                sup.send(rank, {"op": "probe", "seq": self._probe_seq})
            try:
                answers.append(self._wait_replies(ranks, "probe_reply", self._probe_seq, key="seq"))
            except _RoundAborted:
                return False
        first, second = answers
        keys = ("done", "requested", "delivered", "undelivered", "unsent", "timers", "activity")
        for rank in ranks:
            a, b = first[rank], second[rank]
            if any(a.get(k) != b.get(k) for k in keys):
                return False
            sup.slots[rank].counters.update(b)
        return self._looks_quiescent()

    # ------------------------------------------------------------------ recovery

    def _recover(self, failed: set[int], *, whole_job: bool = False) -> None:
        sup = self._sup
        t_detect = time.monotonic() - self._t0
        for rank in sorted(failed):
            self.failures.append(self._failure(rank, t_detect))
        self._check_application_errors(failed)
        newly = set(failed)
        while True:
            try:
                plan, restored = self._recovery_round(failed, newly)
                break
            except _RoundAborted:
                more = set(sup.take_dead())
                t_now = time.monotonic() - self._t0
                for rank in sorted(more):
                    self.failures.append(self._failure(rank, t_now))
                self._check_application_errors(more)
                newly = more
                failed = failed | more | self._rebuilt_this_round
                self.log("recovery_round_aborted", failed=sorted(failed))
        self._awaiting = {}  # later failures happen outside this recovery's steps
        t_done = time.monotonic() - self._t0
        self.recoveries.append(
            {
                "t_detect": round(t_detect, 6),
                "t_done": round(t_done, 6),
                "failed": sorted(failed),
                "restore": {str(r): int(i) for r, i in plan.restore.items()},
                "replayed": sum(len(v) for v in plan.replay.values())
                + sum(len(v) for v in plan.rearrive.values()),
                "whole_job": whole_job,
            }
        )
        if self._running_since_s is None:
            self._running_since_s = time.monotonic()
        self.log(
            "recovered",
            failed=sorted(failed),
            restore=dict(plan.restore),
            commit={r: list(i) for r, i in plan.commit.items()},
            epoch=self.epoch,
        )
        self._publish("running", force=True)
        del restored

    def _check_application_errors(self, failed: Iterable[int]) -> None:
        """Stop the job (``ApplicationError``) when a failure is a bug no restart can cure.

        Two kinds: a state the codec cannot encode (every checkpoint would fail alike, so the
        job could never commit one), and an exception from the application's code that the
        same rank already raised -- same type, message and raising line of the user's code --
        before it was restored and re-executed. A *first* exception is recovered like a crash:
        it may come from a transient condition (a full disk, a flaky service), and rolling back
        costs little. Raised again by the re-execution, it is deterministic: restarting until
        the limit would only hide it. The store stays resumable either way.
        """
        for rank in sorted(failed):
            report = self._sup.slots[rank].fatal_report
            if report is None:
                continue
            kind = report.get("kind")
            store = self.store_dir
            if kind == "encode":
                raise ApplicationError(
                    f"rank {rank} cannot checkpoint its state: {report.get('message')}\n"
                    "No checkpoint can be committed while state() returns this. Return plain "
                    "data from state(), or allow pickling with --allow-pickle "
                    "(snapline.run(..., allow_pickle=True)) -- unsafe for checkpoints from "
                    "untrusted sources: loading a pickle runs code. The job stopped; its store "
                    f"is resumable: snapline run --resume --store {store} (add --allow-pickle, "
                    "or fix state() first)"
                )
            if kind != "app":
                continue
            key = (rank, tuple(str(x) for x in report.get("signature") or ()))
            if key not in self._app_errors:
                self._app_errors.add(key)
                self.log("application_exception", rank=rank, error=report.get("error"))
                continue
            raise ApplicationError(
                f"application bug in rank {rank}: the same exception was raised again when the "
                "rank re-executed from its restored checkpoint:\n"
                f"{report.get('traceback')}\n"
                "A first exception is recovered like a crash (it may come from a transient "
                "condition); raised again the same way after a restore, it is deterministic, "
                "so the job stopped instead of restarting it until the limit. The store is "
                f"resumable: fix the code, then run: snapline run --resume --store {store}"
            )

    def _failure(self, rank: int, t: float) -> dict[str, Any]:
        slot = self._sup.slots[rank]
        why = slot.failure
        waited = self._awaiting.pop(rank, None)
        if why and waited and not why.startswith("killed: no "):
            # A hang during recovery is a failure to answer a step, not a crash: say which.
            why = f"{why}: did not send its {waited}"
        report = slot.fatal_report
        if report is not None:
            # "control link closed" says how the death was seen; the exception says why.
            raised = str(report.get("traceback") or report.get("error")).rstrip().splitlines()
            why = f"raised {raised[-1]}" if raised else why
        return {"t": round(t, 6), "rank": rank, "pid": slot.pid, "why": why}

    def _recovery_round(self, failed: set[int], newly: set[int]) -> tuple[RecoveryPlan, set[int]]:
        sup = self._sup
        n = self.config.n
        self._rebuilt_this_round = set()
        self.epoch += 1
        round_id = self.epoch
        epoch = self.epoch
        self._publish("recovering", force=True)
        survivors = [r for r in range(n) if r not in failed]
        for rank in failed:
            sup.slots[rank].state = "failed"
        # A survivor still starting up (a rank died during the job's start) can only be frozen
        # once it is connected.
        self._wait_hello([r for r in survivors if sup.slots[r].alive])
        # Freeze every live process, survivors and ranks rebuilt by an aborted round alike (the
        # latter may already run); only the survivors' volatile records count.
        live = [r for r in range(n) if sup.slots[r].alive and sup.slots[r].sock is not None]
        for rank in live:
            sup.slots[rank].state = "frozen" if rank in survivors else "failed"
            sup.send(
                rank,
                {
                    "op": "freeze",
                    "round": round_id,
                    "failed": sorted(failed),
                    "newly_failed": sorted(newly),
                },
            )
        frozen = self._wait_replies(sorted(set(live) | set(survivors)), "frozen", round_id)
        # A survivor that never ran (a rank died during start-up, before ``init`` reached the
        # others) has no state to keep and no volatile record: restore it in place from its
        # initial checkpoint, like the failed ranks. It is not counted as a failure.
        unstarted = {r for r in survivors if frozen.get(r, {}).get("volatile") is None}
        if unstarted:
            failed = failed | unstarted
            survivors = [r for r in survivors if r not in unstarted]
        volatile = {
            r: record_from_plain(msg["volatile"])
            for r, msg in frozen.items()
            if r in survivors and msg.get("volatile") is not None
        }
        ledgers = {r: read_ledger(ledger_path(self.store_dir, r), r) for r in range(n)}
        plan = self._plan(failed, volatile, ledgers)
        self._restart_ranks(sorted(failed))
        respawned = sorted(r for r in failed if not sup.slots[r].alive or sup.slots[r].sock is None)
        self._wait_hello(sorted(failed))
        del respawned
        restored = set(plan.restore)
        # In-doubt checkpoints the plan resolved as committed: each rank writes the commit
        # markers itself (it owns its ledger), restored ones before they restore.
        commit = {r: [int(i) for i in indices] for r, indices in plan.commit.items() if indices}
        records = {
            r: self._record_of(ledgers[r], plan.restore[r], commit.get(r, ())) for r in restored
        }
        for rank in sorted(restored):
            replay = plan.replay.get(rank, ())
            sup.send(
                rank,
                {
                    "op": "restore",
                    "round": round_id,
                    "index": int(plan.restore[rank]),
                    "epoch": epoch,
                    "replay": replay_to_plain(replay),
                    "timers_only": rank in plan.replay_timers_only,
                    "commit": commit.get(rank, []),
                },
            )
            self._rebuilt_this_round.add(rank)
        self._wait_replies(sorted(restored), "ready", round_id)
        everyone = list(range(n))
        for rank in everyone:
            sup.send(rank, self._connect_message(round_id))
        self._wait_replies(everyone, "connected", round_id)
        for rank in everyone:
            cuts = {src: rec.sent.get(rank, 0) for src, rec in records.items() if src != rank}
            sup.slots[rank].state = "running"
            sup.slots[rank].incarnation = epoch if rank in restored else sup.slots[rank].incarnation
            sup.send(
                rank,
                {
                    "op": "resume",
                    "round": round_id,
                    "epoch": epoch,
                    "recovery": True,
                    "restored": sorted(restored),
                    "cuts": cuts,
                    # Restored ranks that re-execute exactly: they send the very same messages
                    # again, so what a survivor holds from them stays valid.
                    "exact": sorted(plan.replay_timers_only),
                    # Messages to feed through the protocol (after replay, before new ones).
                    "rearrive": replay_to_plain(getattr(plan, "rearrive", {}).get(rank, ())),
                    "commit": commit.get(rank, []),
                },
            )
        self._check_recovered_cut(self._wait_replies(everyone, "resumed", round_id))
        return plan, restored

    def _check_recovered_cut(self, replies: dict[int, Any]) -> None:
        sent = {r: {int(k): int(v) for k, v in m["sent"].items()} for r, m in replies.items()}
        received = {
            r: {int(k): int(v) for k, v in m["received"].items()} for r, m in replies.items()
        }
        try:
            self._recovery_checker.check_cut(sorted(self.edges), sent, received)
        except CheckFailed as exc:
            self.violations.append(str(exc))
            self.log("check_failed", error=str(exc))

    def _plan(
        self,
        failed: set[int],
        volatile: dict[int, CheckpointRecord],
        ledgers: dict[int, LedgerView],
    ) -> RecoveryPlan:
        view = RecoveryView(
            n=self.config.n,
            failed=frozenset(failed),
            committed={r: lv.committed_records() for r, lv in ledgers.items()},
            volatile=volatile,
            message_logs={r: list(lv.message_log) for r, lv in ledgers.items()},
            edges=frozenset(self.edges),
            tentative={r: lv.tentative_records() for r, lv in ledgers.items()},
        )
        self.log(
            "plan_input",
            failed=sorted(failed),
            committed={r: [rec.index for rec in recs][-4:] for r, recs in view.committed.items()},
            volatile={r: [dict(v.sent), dict(v.received)] for r, v in volatile.items()},
        )
        try:
            plan = self.protocol_cls.plan_recovery(view)
        except SnaplineError as exc:
            raise RuntimeFailure(f"recovery planning failed: {exc}") from exc
        try:
            self._recovery_checker.validate_plan(
                view, plan, {r: {rec.index for rec in recs} for r, recs in view.committed.items()}
            )
        except CheckFailed as exc:
            raise RuntimeFailure(f"{self.config.protocol}.plan_recovery: {exc}") from exc
        return plan

    @staticmethod
    def _record_of(
        ledger: LedgerView, index: int, committing: Iterable[int] = ()
    ) -> CheckpointRecord:
        if index == 0:
            return initial_record(ledger.rank)
        if index in committing and index in ledger.persisted:
            return ledger.persisted[index]
        for record in ledger.committed_records():
            if record.index == index:
                return record
        raise RuntimeFailure(
            f"the recovery plan restores rank {ledger.rank} to checkpoint {index}, which its "
            "ledger does not hold as committed"
        )

    def _restart_ranks(self, ranks: list[int]) -> None:
        """Start the failed ``ranks`` again: one by one, or as one relaunch of the whole job
        on an engine where one death ends every rank (``Supervisor.restarts_whole_job``)."""
        sup = self._sup
        # Ranks alive already were started by a resumed job's first round or rebuilt in place.
        dead = [r for r in ranks if not sup.slots[r].alive]
        if dead and sup.restarts_whole_job:
            # One relaunch is one restart (of every rank), with one back-off.
            self.restarts += 1
            for rank in dead:
                sup.slots[rank].restarts += 1
            # The rank that raised, if one did: its exception is what the user must see.
            self._check_restart_limit(
                next((r for r in dead if sup.slots[r].fatal_report is not None), dead[0])
            )
            self._back_off([sup.slots[r] for r in dead])
            for rank in dead:
                sup.slots[rank].state = "restarting"
                sup.spawn(rank, self._boot(rank))
        else:
            for rank in dead:
                self._restart(rank)
        sup.launch()

    def _restart(self, rank: int) -> None:
        sup = self._sup
        slot = sup.slots[rank]
        # Every respawn counts, a resumed job's included: ``--resume`` starts all ranks at
        # once (not here), but a rank that dies again while the job is being resumed is
        # respawned here, and must neither loop forever nor skip the back-off.
        self.restarts += 1
        slot.restarts += 1
        self._check_restart_limit(rank)
        self._back_off([slot])
        slot.state = "restarting"
        sup.spawn(rank, self._boot(rank))

    def _check_restart_limit(self, rank: int) -> None:
        """``RuntimeFailure`` once ``self.restarts`` is past the limit (``rank`` restarts)."""
        sup = self._sup
        slot = sup.slots[rank]
        if self.restarts > self.config.max_restarts:
            history = ", ".join(
                f"rank {f['rank']} at {f['t']:.2f}s" + (f" ({f['why']})" if f.get("why") else "")
                for f in self.failures
            )
            fatal = "; ".join(f"rank {s.rank}: {s.fatal}" for s in sup.slots if s.fatal)
            report = slot.fatal_report
            raise RuntimeFailure(
                f"restart limit reached: {self.restarts - 1} restarts allowed "
                f"(--max-restarts {self.config.max_restarts}); failures: {history}"
                + (f"; errors: {fatal}" if fatal else "")
                + f". Logs: {self.store_dir / 'logs'}"
                + (
                    f"\nThe last exception of rank {rank}, in the application's code:\n"
                    f"{report.get('traceback')}"
                    if report is not None and report.get("kind") == "app"
                    else ""
                )
            )

    def _back_off(self, slots: list[RankSlot]) -> None:
        """Wait before starting ``slots`` again if they keep failing (doubling, capped)."""
        sup = self._sup
        first = slots[0]
        since_start = time.monotonic() - first.last_start_s
        recent = first.recent_failures + 1 if since_start < 5.0 else 1
        for slot in slots:
            slot.recent_failures = recent
        delay_s = min(
            self.config.backoff_initial_s * 2 ** (recent - 1),
            self.config.backoff_max_s,
        )
        if recent > 1:
            more = {"ranks": [s.rank for s in slots]} if len(slots) > 1 else {}
            self.log("backoff", rank=first.rank, delay_s=delay_s, **more)
            end = time.monotonic() + delay_s
            while time.monotonic() < end:
                sup.poll(min(0.05, end - time.monotonic()))
                if sup.dead:
                    raise _RoundAborted

    # ------------------------------------------------------------------ finish

    def _collect_results(self) -> bool:
        """Ask every rank for its result; False if a rank failed meanwhile (then recovered).

        Ranks stay alive until every result is in, so a failure at this point is recovered
        like any other and the job runs on to termination again.
        """
        sup = self._sup
        ranks = list(range(self.config.n))
        # Marks where failures stop mattering once every result is in: a rank killed after the
        # last such line of a finished job is not a failure of the job (``chaos`` relies on it).
        self.log("collecting_results", epoch=self.epoch)
        for rank in ranks:
            sup.slots[rank].result = None
            sup.send(rank, {"op": "stop"})
        deadline = time.monotonic() + _STEP_TIMEOUT_S
        while not all(sup.slots[r].result is not None for r in ranks):
            dead = sup.take_dead()
            if dead:
                self.log("failure_while_stopping", ranks=dead)
                self._recover(set(dead))
                return False
            if time.monotonic() > deadline:
                raise RuntimeFailure("ranks did not report their results in time")
            self._fire_kills()
            sup.poll(0.05)
        for rank in ranks:
            sup.slots[rank].stopped = True
            sup.send(rank, {"op": "exit"})
        return True

    def _release_held_outputs(self, ranks: list[int]) -> None:
        """Release what the protocols still held at the end into the ranks' ledgers.

        Every rank has reported its result, so no failure can roll the job back any more:
        this is the moment the held output becomes safe (before it, ``none`` holds all of it).
        The workers have exited (one that lingers is killed first), so the supervisor is the
        only writer of their ledgers; ids already released are skipped.
        """
        sup = self._sup
        for rank in ranks:
            if sup.slots[rank].alive:
                sup.kill(rank, "still running after its result was in")
        sup.reap_finished(timeout_s=5.0)
        for rank in ranks:
            held = (sup.slots[rank].result or {}).get("held_outputs") or []
            if not held:
                continue
            path = ledger_path(self.store_dir, rank)
            released = read_ledger(path, rank).released_outputs
            writer = LedgerWriter(path)
            try:
                for output_id, item in held:
                    if int(output_id) > released:
                        writer.append({"k": "output", "id": int(output_id), "item": item})
                        released = int(output_id)
            finally:
                writer.close()

    def _finish(self) -> RunResult:
        sup = self._sup
        run_s = self._terminated_s - (self._running_since_s or self._t0)
        ranks = list(range(self.config.n))
        sup.reap_finished(timeout_s=5.0)
        for slot in sup.slots:
            slot.state = "finished"
        results = {r: sup.slots[r].result["result"] for r in ranks}  # type: ignore[index]
        stats = {r: dict(sup.slots[r].result["stats"]) for r in ranks}  # type: ignore[index]
        self._release_held_outputs(ranks)
        ledgers = {r: read_ledger(ledger_path(self.store_dir, r), r) for r in ranks}
        outputs = {r: list(ledgers[r].outputs) for r in ranks}
        elapsed = time.monotonic() - self._t0
        trace_path = self._write_trace(self._terminated_s - self._t0, outcome="finished")
        # One definition per figure, shared by the run table, summary.json, ``ps`` and the
        # trace: "delivered" counts the messages each rank's final state has received (work
        # redone after a rollback counts once), "checkpoints" the checkpoints committed over the
        # whole run, "restarts" the processes started again after a failure.
        for rank in ranks:
            engine_delivered = stats[rank].pop("messages_delivered", 0)
            stats[rank]["deliveries_since_restore"] = engine_delivered
            stats[rank]["messages_delivered"] = int(
                sup.slots[rank].counters.get("delivered", engine_delivered)
            )
            stats[rank]["checkpoints_committed"] = len(ledgers[rank].committed_records()) - 1
            stats[rank]["restarts"] = sup.slots[rank].restarts
        committed = sum(len(lv.committed_records()) - 1 for lv in ledgers.values())
        # A kill due after the end did nothing: say so, or the run reads as having survived it.
        warnings = [
            f"--kill {k.rank}@{k.at_s:g}s did not fire: the job finished {run_s:.2f}s after "
            "its ranks started (use an earlier time, or a longer job)"
            for k in self.kills
            if not k.done
        ]
        for text in warnings:
            self.log("warning", text=text)
        result = RunResult(
            results=results,
            outputs=outputs,
            stats=stats,
            recoveries=self.recoveries,
            restarts=self.restarts,
            elapsed_s=elapsed,
            store=self.store_dir,
            trace_path=trace_path,
            protocol=self.config.protocol,
            n=self.config.n,
            messages_delivered=sum(int(s.get("messages_delivered", 0)) for s in stats.values()),
            checkpoints_committed=committed,
            run_s=run_s,
            failures=self.failures,
            violations=self.violations,
            warnings=warnings,
        )
        write_summary(self.store_dir, result)
        self.log("job_finished", elapsed_s=elapsed, restarts=self.restarts)
        self._publish("finished", force=True)
        return result

    def _write_trace(self, end_s: float, *, outcome: str) -> Path | None:
        """``<store>/trace.json`` from the ranks' event files (None when tracing is off)."""
        if not self.config.trace:
            return None
        return merge_trace(
            self.store_dir,
            n=self.config.n,
            protocol=self.config.protocol,
            app=self.config.app,
            seed=self.config.seed,
            edges=sorted(self.edges),
            recoveries=self.recoveries,
            failures=self.failures,
            stats={
                "elapsed_s": time.monotonic() - self._t0,
                # When every rank first ran (the initial state's time: spawning is no work)
                # and when the job ended (termination detected, or the failure).
                "start_t": round((self._running_since_s or self._t0) - self._t0, 6),
                "end_t": round(max(end_s, 0.0), 6),
                "restarts": sum(slot.restarts for slot in self._sup.slots),
                "outcome": outcome,
            },
        )


def write_summary(store_dir: Path, result: RunResult) -> None:
    """``<store>/summary.json``: the final report of a run."""
    import json

    summary = {
        "protocol": result.protocol,
        "n": result.n,
        "elapsed_s": round(result.elapsed_s, 3),
        "run_s": round(result.run_s, 3),
        "restarts": result.restarts,
        "recoveries": result.recoveries,
        "failures": result.failures,
        "messages_delivered": result.messages_delivered,
        "checkpoints_committed": result.checkpoints_committed,
        "violations": result.violations,
        "results": summary_json({str(k): v for k, v in result.results.items()}),
        "stats": summary_json({str(k): v for k, v in result.stats.items()}),
    }
    path = store_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=1), encoding="utf-8")


def summary_json(obj: object) -> object:
    """``obj`` as ``summary.json`` holds it (compare results with the file in this form).

    It goes through msgpack, then JSON: arrays and tuples become lists, dict keys strings.
    """
    import json

    from snapline.runtime.local.wire import pack, unpack

    return json.loads(json.dumps(unpack(pack(obj)), default=_jsonable))


def _jsonable(obj: object) -> object:
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(obj, bytes):
        return obj.hex()
    return repr(obj)


def refuse_if_running(store: Path, what_to_do: str) -> JobStatus | None:
    """The job's last status (None if unreadable); ``ConfigError`` if its supervisor still runs."""
    old: JobStatus | None = None
    with contextlib.suppress(ConfigError):  # no status yet (a job killed while starting)
        old = read_status(store)
    if old is not None and old.state in ("running", "recovering") and _pid_is_supervisor(old):
        raise ConfigError(
            f"the job in {store} still runs (supervisor pid {old.supervisor_pid}); {what_to_do}"
        )
    return old


def _pid_is_supervisor(status: JobStatus) -> bool:
    from snapline.runtime.local.status import pid_alive

    return status.supervisor_pid != os.getpid() and pid_alive(status.supervisor_pid)
