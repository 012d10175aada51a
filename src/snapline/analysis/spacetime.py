"""The space-time diagram of a run as data: what to draw where, before any drawing.

Theory of operation
-------------------
A space-time diagram has one horizontal line per rank (time on x) and shows the run's history
on it: application messages as arrows from send to delivery, control messages as light arrows,
checkpoints (basic / forced), crashes, the work each recovery rolled back (from the restored
checkpoint to the crash, or to the failure's detection for a survivor), the time ranks waited
for the recovery (a survivor from detection to the end of recovery; a crashed rank is "down"
from its crash), the recovery line (the cut the ranks were restored to) and the messages
replayed to restored ranks.

``layout_spacetime`` turns a ``Trace`` into a ``SpaceTime`` of plain marks, so the geometry can
be tested without pictures and drawn by any backend (``spacetime_plot`` draws it with
matplotlib). Matching rules, given what the trace records:

* a delivery ``(src, seq)`` on rank ``dst`` pairs with the latest send ``(dst, seq)`` on ``src``
  at or before it -- after a rollback the sender re-sends the same sequence numbers, and the
  latest send is the one that was delivered;
* a replay ``(src, seq)`` pairs the same way, and is drawn as a replayed message (the driver
  also reports it as a delivery at the same instant; that one is not drawn twice);
* control messages carry no sequence number: a receipt pairs with the oldest unpaired send on
  its channel; sends to a rank that is down, and sends still unpaired when either end crashes
  or is restored, were lost (the driver drops an old incarnation's control traffic).

Big traces are cut down to a rank subset -- crashed ranks always among them -- and a time
window; every cut is stated in ``notes``. Without ``--from`` the axis starts shortly before the
first event, so the start-up of the processes is not drawn as a long empty stretch.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

from snapline.analysis.metrics import checkpoint_time, crash_time
from snapline.analysis.trace_view import Trace
from snapline.errors import ConfigError

DEFAULT_MAX_RANKS = 16
DEFAULT_MAX_MESSAGES = 1500


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageMark:
    """An arrow from ``(t_send, src)`` to ``(t_recv, dst)``."""

    src: int
    dst: int
    t_send: float
    t_recv: float
    replayed: bool = False
    control: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PointMark:
    """A marker on rank ``rank`` at time ``t`` (checkpoint, crash, restore, finish)."""

    rank: int
    t: float
    index: int | None = None
    forced: bool = False
    discarded: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SpanMark:
    """A stretch ``[t_from, t_to]`` of rank ``rank`` (work rolled back, time down)."""

    rank: int
    t_from: float
    t_to: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryLineMark:
    """The cut one recovery restored: ``points`` are ``(rank, t, restored)``, by rank."""

    number: int
    t_detect: float
    points: tuple[tuple[int, float, bool], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SpaceTime:
    """Everything a space-time diagram shows, restricted to ``ranks`` and ``[t_from, t_to]``."""

    title: str
    n: int
    ranks: tuple[int, ...]
    t_from: float
    t_to: float
    messages: tuple[MessageMark, ...]
    checkpoints: tuple[PointMark, ...]
    crashes: tuple[PointMark, ...]
    restores: tuple[PointMark, ...]
    finishes: tuple[PointMark, ...]
    rolled_back: tuple[SpanMark, ...]
    down: tuple[SpanMark, ...]
    waiting: tuple[SpanMark, ...]
    recovery_lines: tuple[RecoveryLineMark, ...]
    notes: tuple[str, ...]

    @property
    def basic_checkpoints(self) -> int:
        """Basic checkpoints drawn."""
        return sum(1 for c in self.checkpoints if not c.forced)

    @property
    def forced_checkpoints(self) -> int:
        """Forced checkpoints drawn."""
        return sum(1 for c in self.checkpoints if c.forced)


def parse_rank_range(spec: str, n: int) -> tuple[int, ...]:
    """``"0-7"``, ``"3"`` or ``"0-3,8,10-11"`` -> sorted ranks, checked against ``n``."""
    ranks: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo_text, hi_text = part.split("-", 1)
                lo, hi = int(lo_text), int(hi_text)
            else:
                lo = hi = int(part)
        except ValueError:
            raise ConfigError(
                f"bad rank range {spec!r}: use forms like '0-7', '3' or '0-3,8'"
            ) from None
        if lo > hi or lo < 0 or hi >= n:
            raise ConfigError(f"rank range {part!r} is outside 0..{n - 1} (the job has {n} ranks)")
        ranks.update(range(lo, hi + 1))
    return tuple(sorted(ranks))


def _pair_messages(trace: Trace) -> list[MessageMark]:
    sends: dict[tuple[int, int, int], list[float]] = defaultdict(list)
    marks: list[MessageMark] = []
    control_sends: dict[tuple[int, int], deque[float]] = defaultdict(deque)
    down: set[int] = set()
    # A replayed message is also reported as delivered at the same instant; draw it once.
    replays = {
        (e.int_field("src"), e.rank, e.int_field("seq"), e.t)
        for e in trace.events
        if e.kind == "replay"
    }
    for event in trace.events:
        match event.kind:
            case "send":
                key = (event.rank, event.int_field("dst"), event.int_field("seq"))
                sends[key].append(event.t)
            case "deliver" | "replay":
                key = (event.int_field("src"), event.rank, event.int_field("seq"))
                if event.kind == "deliver" and (*key, event.t) in replays:
                    continue
                if sends[key]:
                    marks.append(
                        MessageMark(
                            src=key[0],
                            dst=key[1],
                            t_send=sends[key][-1],
                            t_recv=event.t,
                            replayed=event.kind == "replay",
                        )
                    )
            case "control_send":
                if event.int_field("dst") not in down:
                    control_sends[(event.rank, event.int_field("dst"))].append(event.t)
            case "control_recv":
                queue = control_sends[(event.int_field("src"), event.rank)]
                if queue:
                    marks.append(
                        MessageMark(
                            src=event.int_field("src"),
                            dst=event.rank,
                            t_send=queue.popleft(),
                            t_recv=event.t,
                            control=True,
                        )
                    )
            case "crash" | "restore":
                # Control messages in flight to or from a crashed rank are lost, and a restore
                # starts a new incarnation whose channels drop the old one's control traffic.
                for (src, dst), queue in control_sends.items():
                    if event.rank in (src, dst):
                        queue.clear()
                if event.kind == "crash":
                    down.add(event.rank)
                else:
                    down.discard(event.rank)
            case _:
                pass
    return marks


def _recovery_marks(
    trace: Trace,
) -> tuple[list[SpanMark], list[SpanMark], list[SpanMark], list[RecoveryLineMark]]:
    rolled: list[SpanMark] = []
    down: list[SpanMark] = []
    waiting: list[SpanMark] = []
    lines: list[RecoveryLineMark] = []
    for number, recovery in enumerate(trace.recoveries, start=1):
        points: list[tuple[int, float, bool]] = []
        for rank in range(trace.n):
            if rank in recovery.restore:
                # Survivors work on (and may checkpoint) until the recovery line is computed
                # at t_done; what they did until then is rolled back.
                index = recovery.restore[rank]
                t_ckpt = checkpoint_time(trace, rank, index, before_t=recovery.t_done)
                # Only a rank this recovery handles as failed crashed for it (a survivor may
                # have crashed in an earlier recovery).
                t_crash = (
                    crash_time(trace, rank, before_t=recovery.t_done)
                    if rank in recovery.failed
                    else None
                )
                # Work is lost up to the crash (or, for a survivor, up to the detection of the
                # failure); after that the rank is down, or waits for the recovery to end.
                t_end = recovery.t_detect if t_crash is None else t_crash
                if t_end > t_ckpt:
                    rolled.append(SpanMark(rank=rank, t_from=t_ckpt, t_to=t_end))
                if t_crash is not None:
                    down.append(SpanMark(rank=rank, t_from=t_crash, t_to=recovery.t_done))
                elif recovery.t_done > max(t_end, t_ckpt):
                    waiting.append(
                        SpanMark(rank=rank, t_from=max(t_end, t_ckpt), t_to=recovery.t_done)
                    )
                points.append((rank, t_ckpt, True))
            else:
                # A rank that keeps running contributes its state at recovery to the cut.
                points.append((rank, recovery.t_done, False))
        lines.append(
            RecoveryLineMark(number=number, t_detect=recovery.t_detect, points=tuple(points))
        )
    return rolled, down, waiting, lines


def crashed_ranks(trace: Trace) -> tuple[int, ...]:
    """Every rank that crashed or was declared failed during the run, sorted."""
    ranks = {e.rank for e in trace.events if e.kind == "crash"}
    for recovery in trace.recoveries:
        ranks |= recovery.failed
    return tuple(sorted(ranks))


def sample_ranks(trace: Trace, max_ranks: int) -> tuple[int, ...]:
    """At most ``max_ranks`` ranks to draw: every crashed rank first, then the lowest others."""
    crashed = crashed_ranks(trace)[:max_ranks]
    others = [r for r in range(trace.n) if r not in crashed]
    return tuple(sorted([*crashed, *others[: max_ranks - len(crashed)]]))


def _first_activity_t(trace: Trace) -> float:
    return min((e.t for e in trace.events), default=0.0)


def layout_spacetime(
    trace: Trace,
    *,
    ranks: tuple[int, ...] | None = None,
    t_from: float | None = None,
    t_to: float | None = None,
    max_ranks: int = DEFAULT_MAX_RANKS,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    show_control: bool = True,
) -> SpaceTime:
    """Lay out ``trace``; without explicit limits, big traces are cut and ``notes`` say so."""
    notes: list[str] = []
    if not show_control:
        notes.append("control messages hidden")
    if ranks is None:
        ranks = tuple(range(trace.n))
        if trace.n > max_ranks:
            ranks = sample_ranks(trace, max_ranks)
            crashed = [r for r in crashed_ranks(trace) if r in ranks]
            which = f"every crashed rank ({_rank_list(crashed)}) and " if crashed else ""
            rest = [r for r in ranks if r not in crashed]
            notes.append(
                f"showing {len(ranks)} of {trace.n} ranks: {which}ranks {_rank_list(rest)}; "
                "choose others with --ranks, or see all in the --html page"
            )
    else:
        for rank in ranks:
            if not 0 <= rank < trace.n:
                raise ConfigError(f"rank {rank} is outside 0..{trace.n - 1}")
        if len(ranks) < trace.n:
            notes.append(f"showing {len(ranks)} of {trace.n} ranks")
    shown = frozenset(ranks)
    start = 0.0 if t_from is None else t_from
    rolled, down, waiting, lines = _recovery_marks(trace)
    # A recovery line may go back to the initial state (t = 0): then the start is kept.
    first = min([_first_activity_t(trace), *(t for line in lines for _, t, _ in line.points)])
    if t_from is None and first > 0.05 * trace.end_t:
        # Nothing happens before the first event but the processes starting: leave it out.
        start = max(0.0, first - 0.02 * (trace.end_t - first))
        notes.append(f"the first {start:.3g} s (processes starting, no events) are not drawn")
    end = trace.end_t if t_to is None else t_to
    if end <= start:
        if t_from is not None or t_to is not None:
            raise ConfigError(f"empty time window: --from {start} must be before --to {end}")
        end = start + 1.0  # an empty or instantaneous trace still gets an axis
    all_messages = [
        m
        for m in _pair_messages(trace)
        if m.src in shown and m.dst in shown and (show_control or not m.control)
    ]
    if len(shown) < trace.n:
        notes.append("messages to or from hidden ranks are not drawn")
    if t_to is None:
        in_window = sorted(m.t_send for m in all_messages if m.t_send >= start)
        if len(in_window) > max_messages:
            end = in_window[max_messages - 1]
            notes.append(
                f"showing t={start:.2f}..{end:.2f} s of {trace.end_t:.2f} s (first {max_messages} "
                "messages); choose a window with --from/--to"
            )
    elif t_from is not None or t_to is not None:
        notes.append(f"time window t={start:.2f}..{end:.2f} s of {trace.end_t:.2f} s")

    def visible(t: float) -> bool:
        return start <= t <= end

    # An arrow is drawn when any part of it lies in the window.
    messages = [m for m in all_messages if m.t_recv >= start and m.t_send <= end]
    checkpoints: list[PointMark] = []
    discarded: set[tuple[int, int]] = set()
    crashes: list[PointMark] = []
    restores: list[PointMark] = []
    finishes: list[PointMark] = []
    for event in trace.events:
        if event.kind == "discard":
            discarded.add((event.rank, event.int_field("index")))
    for event in trace.events:
        if event.rank not in shown or not visible(event.t):
            continue
        match event.kind:
            case "checkpoint":
                index = event.int_field("index")
                checkpoints.append(
                    PointMark(
                        rank=event.rank,
                        t=event.t,
                        index=index,
                        forced=bool(event.fields["forced"]),
                        discarded=(event.rank, index) in discarded,
                    )
                )
            case "crash":
                crashes.append(PointMark(rank=event.rank, t=event.t))
            case "restore":
                restores.append(
                    PointMark(rank=event.rank, t=event.t, index=event.int_field("index"))
                )
            case "finish":
                finishes.append(PointMark(rank=event.rank, t=event.t))
            case _:
                pass

    def clip(spans: list[SpanMark]) -> tuple[SpanMark, ...]:
        return tuple(
            SpanMark(rank=s.rank, t_from=max(s.t_from, start), t_to=min(s.t_to, end))
            for s in spans
            if s.rank in shown and s.t_to >= start and s.t_from <= end
        )

    shown_lines = tuple(
        RecoveryLineMark(
            number=line.number,
            t_detect=line.t_detect,
            points=tuple(p for p in line.points if p[0] in shown),
        )
        for line in lines
        if start <= line.t_detect <= end
    )
    seed = "" if trace.seed is None else f", seed {trace.seed}"
    title = f"{trace.protocol} · {trace.app} · n={trace.n}{seed}"
    return SpaceTime(
        title=title,
        n=trace.n,
        ranks=ranks,
        t_from=start,
        t_to=end,
        messages=tuple(messages),
        checkpoints=tuple(checkpoints),
        crashes=tuple(crashes),
        restores=tuple(restores),
        finishes=tuple(finishes),
        rolled_back=clip(rolled),
        down=clip(down),
        waiting=clip(waiting),
        recovery_lines=shown_lines,
        notes=tuple(notes),
    )


def _rank_list(ranks: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``0-2, 5, 7-8``."""
    parts: list[str] = []
    for rank in sorted(ranks):
        if parts and rank == int(parts[-1].split("-")[-1]) + 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{rank}"
        else:
            parts.append(str(rank))
    return ", ".join(parts)
