"""The cost of a protocol on one run, summarised from its trace.

Everything here is derived from the trace events and recoveries (``trace_view``), so the same
summary works for a simulated and a real run. Two figures the events cannot show -- time the
application was blocked by the protocol and bytes written to stable storage -- are taken from
the trace's ``stats`` when the driver reports them (keys listed in ``STATS_KEYS``) and are
``None`` otherwise, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from snapline.analysis.trace_view import Trace, TraceRecovery

# Keys a driver may put in the trace's "stats" for figures events cannot show, in order of
# preference (first present wins).
STATS_KEYS: Mapping[str, tuple[str, ...]] = {
    "blocking_s": ("blocking_s", "blocked_s", "blocking_time_s"),
    "bytes_stored": ("bytes_stored", "checkpoint_bytes", "stored_bytes"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceMetrics:
    """What one run cost; times in seconds of (simulated or real) time."""

    basic_checkpoints: int
    forced_checkpoints: int
    discarded_checkpoints: int
    app_messages: int
    control_messages: int
    piggyback_bytes: int
    crashes: int
    recoveries: int
    work_lost_s: float
    rollback_checkpoints_max: int
    rollback_distance_s_max: float
    recovery_s: float
    replayed_messages: int
    makespan_s: float
    blocking_s: float | None
    bytes_stored: int | None

    def as_dict(self) -> dict[str, Any]:
        """The metrics as a JSON-ready dict."""
        return asdict(self)


def checkpoint_time(trace: Trace, rank: int, index: int, *, before_t: float) -> float:
    """When ``rank`` took checkpoint ``index`` (the latest such event at or before ``before_t``).

    Index 0 is the initial state, taken when the job started running (``initial_state_t``). A
    checkpoint the trace does not show (it may predate a windowed trace) is placed there too.
    """
    found = initial_state_t(trace)
    if index == 0:
        return found
    for event in trace.events:
        if event.t > before_t:
            break
        if event.rank == rank and event.kind == "checkpoint" and event.int_field("index") == index:
            found = event.t
    return found


def initial_state_t(trace: Trace) -> float:
    """When the ranks started running from their initial state: the driver's ``start_t``, or 0.

    A local job's clock starts before its processes are spawned; rolling back to the initial
    state loses the work done since they ran, not the start-up before.
    """
    start_t = trace.stats.get("start_t")
    if isinstance(start_t, int | float) and not isinstance(start_t, bool) and start_t > 0:
        return float(start_t)
    return 0.0


def crash_time(trace: Trace, rank: int, *, before_t: float) -> float | None:
    """The latest crash of ``rank`` at or before ``before_t`` (``None`` if it did not crash)."""
    found: float | None = None
    for event in trace.events:
        if event.t > before_t:
            break
        if event.rank == rank and event.kind == "crash":
            found = event.t
    return found


def _rolled_past(trace: Trace, recovery: TraceRecovery, rank: int, since_t: float) -> int:
    """How many of ``rank``'s checkpoints, taken after ``since_t``, a recovery threw away."""
    taken: set[int] = set()
    for event in trace.events:
        if event.t > recovery.t_done:
            break
        if event.rank != rank or event.t <= since_t:
            continue
        if event.kind == "checkpoint":
            taken.add(event.int_field("index"))
        elif event.kind == "discard":
            # A discarded checkpoint was never usable; rolling past it costs nothing.
            taken.discard(event.int_field("index"))
    return len(taken)


def _stat(stats: Mapping[str, Any], name: str) -> float | None:
    for key in STATS_KEYS[name]:
        value = stats.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def makespan_s(trace: Trace) -> float:
    """From the job's start (t = 0) to its end: the driver's ``end_t`` or the last event.

    Not the last ``finish`` event: ``ctx.finish()`` says a rank has no work of its own left
    (a rank may call it in ``on_start`` and still handle messages for the rest of the run).
    """
    end_t = trace.stats.get("end_t")
    reported = float(end_t) if isinstance(end_t, int | float) and not isinstance(end_t, bool) else 0
    return max(trace.end_t, reported)


def summarize(trace: Trace) -> TraceMetrics:
    """Count checkpoints, messages, control traffic, rollbacks and recovery for one trace."""
    basic = forced = discarded = app_messages = control = piggyback = crashes = 0
    replayed_events = 0
    for event in trace.events:
        match event.kind:
            case "checkpoint":
                if event.fields["forced"]:
                    forced += 1
                else:
                    basic += 1
            case "discard":
                discarded += 1
            case "send":
                app_messages += 1
                pb = event.fields.get("piggyback_bytes", 0)
                piggyback += pb if isinstance(pb, int) else 0
            case "control_send":
                control += 1
            case "crash":
                crashes += 1
            case "replay":
                replayed_events += 1
            case _:
                pass
    work_lost = recovery_s = distance_s = 0.0
    depth = replayed = 0
    for recovery in trace.recoveries:
        work_lost += sum(recovery.rolled_back_s.values())
        recovery_s += recovery.t_done - recovery.t_detect
        replayed += recovery.replayed
        for rank, index in recovery.restore.items():
            # The restored checkpoint may be younger than the detection: survivors keep
            # working (and checkpointing) until the recovery line is computed at t_done.
            since = checkpoint_time(trace, rank, index, before_t=recovery.t_done)
            # A survivor's earlier crash (handled by an earlier recovery) does not count.
            until = (
                crash_time(trace, rank, before_t=recovery.t_done)
                if rank in recovery.failed
                else None
            )
            distance_s = max(distance_s, (recovery.t_done if until is None else until) - since)
            depth = max(depth, _rolled_past(trace, recovery, rank, since))
    blocking = _stat(trace.stats, "blocking_s")
    stored = _stat(trace.stats, "bytes_stored")
    return TraceMetrics(
        basic_checkpoints=basic,
        forced_checkpoints=forced,
        discarded_checkpoints=discarded,
        app_messages=app_messages,
        control_messages=control,
        piggyback_bytes=piggyback,
        crashes=crashes,
        recoveries=len(trace.recoveries),
        work_lost_s=work_lost,
        rollback_checkpoints_max=depth,
        rollback_distance_s_max=distance_s,
        recovery_s=recovery_s,
        # Recoveries report their count; a driver that only writes replay events still counts.
        replayed_messages=max(replayed, replayed_events),
        makespan_s=makespan_s(trace),
        blocking_s=blocking,
        bytes_stored=None if stored is None else int(stored),
    )


def with_driver_stats(metrics: TraceMetrics, stats: Mapping[str, Any]) -> TraceMetrics:
    """Fill figures the trace lacked (blocking time, bytes stored) from a driver's stats."""
    blocking = metrics.blocking_s if metrics.blocking_s is not None else _stat(stats, "blocking_s")
    stored = metrics.bytes_stored
    if stored is None:
        value = _stat(stats, "bytes_stored")
        stored = None if value is None else int(value)
    return replace(metrics, blocking_s=blocking, bytes_stored=stored)
