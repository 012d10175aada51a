"""Z-paths, Z-cycles and useless checkpoints of a recorded execution (pure).

Theory of operation
-------------------
Netzer and Xu: a checkpoint can be part of a consistent global checkpoint iff it lies on no
Z-cycle. Number each rank's checkpoints by position ``0, 1, 2, ...`` (0 is the initial
state); *interval* ``i`` of a rank is what it does after checkpoint ``i`` and before ``i + 1``.
A message records the interval it was sent in and the interval it was delivered in.

A Z-path from checkpoint ``(s, i)`` to ``(d, j)`` is a sequence of delivered messages
``m1 .. mk`` where ``m1`` is sent by ``s`` in interval ``>= i``; each ``m(l+1)`` is sent by
the receiver of ``m(l)`` in an interval ``>=`` the one ``m(l)`` was delivered in (it may be
sent *before* ``m(l)`` arrives: that is the zig-zag, which causality alone does not see); and
``mk`` is delivered to ``d`` in an interval ``< j``. A Z-cycle is a Z-path from a checkpoint
to itself; such a checkpoint is *useless*.

The search keeps, per rank ``q``, the smallest interval in which a message on a Z-path from
the start reaches ``q`` (``z_reach``); a message sent by ``q`` extends the path iff it was sent
in an interval at least that small. A fixed point over the messages gives everything reachable
in ``O(ranks * messages)`` per start checkpoint. ``recovery_line.useless_checkpoints`` decides
the same question with channel counters; the tests check both agree.

All checkpoints at once (``dependency_vectors``): if a Z-path leaves ``(s, i)`` it also leaves
``(s, i')`` for every ``i' <= i``, so what reaches a checkpoint is one vector: per rank, the
newest checkpoint of it with a Z-path to here. A message sent by ``q`` in interval ``k`` carries
``q``'s Z-vector at the *end* of interval ``k`` (a zig may use a later delivery of the same
interval), so the vectors are a fixed point, iterated over the messages until nothing grows;
started from the causal vectors (vector clocks, which need each rank's order of events: the
``send_step`` / ``deliver_step`` of messages), it stops after one pass more than the most
zig-zags any path needs -- one pass when every Z-path is causal. Cost: ``O(ranks * messages)``
per pass. Two guarantees read off the result: a checkpoint is useless iff a Z-path from itself
reaches it (``z_cycle_checkpoints``), and the execution is *rollback-dependency trackable* iff
every Z-path between checkpoints is doubled by a causal path, i.e. the Z-vector of every
checkpoint equals its causal vector (``rdt_violations``).

``ExecutionRecorder`` builds an ``Execution`` from events in the order each rank saw them, and
``execution_from_trace`` reads a failure-free snapline trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from snapline.errors import ConfigError

CheckpointId = tuple[int, int]
"""``(rank, position)``: the position-th checkpoint of a rank, 0 being the initial state."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEvent:
    """One application message: intervals of its send and (if it arrived) its delivery."""

    src: int
    dst: int
    send_interval: int
    deliver_interval: int | None
    #: Positions of the send and the delivery in their rank's own sequence of sends and
    #: deliveries (increasing); needed only for causal dependencies (``dependency_vectors``).
    send_step: int | None = None
    deliver_step: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Execution:
    """Checkpoints (as their protocol indices, per rank, in taking order) and messages.

    ``checkpoints[r]`` lists the indices of rank r's checkpoints after the initial one, so
    rank r has checkpoint positions ``0 .. len(checkpoints[r])``.
    """

    n: int
    checkpoints: Mapping[int, Sequence[int]]
    messages: Sequence[MessageEvent]

    def positions(self, rank: int) -> int:
        """Number of checkpoints of ``rank``, the initial one included."""
        return len(self.checkpoints.get(rank, ())) + 1


@dataclass(slots=True)
class ExecutionRecorder:
    """Builds an ``Execution`` from events in each rank's own order."""

    n: int
    _checkpoints: dict[int, list[int]] = field(default_factory=dict)
    _sends: list[tuple[int, int, int, int]] = field(default_factory=list)
    _delivered: dict[int, tuple[int, int]] = field(default_factory=dict)
    _steps: dict[int, int] = field(default_factory=dict)

    def checkpoint(self, rank: int, index: int) -> None:
        """``rank`` took a checkpoint with this protocol index."""
        self._check_rank(rank)
        self._checkpoints.setdefault(rank, []).append(index)

    def interval(self, rank: int) -> int:
        """The interval ``rank`` is in now (its number of checkpoints after the initial one)."""
        return len(self._checkpoints.get(rank, ()))

    def send(self, src: int, dst: int) -> int:
        """``src`` sent a message to ``dst``; returns the message's id."""
        self._check_rank(src)
        self._check_rank(dst)
        self._sends.append((src, dst, self.interval(src), self._step(src)))
        return len(self._sends) - 1

    def deliver(self, message_id: int) -> None:
        """The message ``message_id`` was delivered to its destination."""
        if not 0 <= message_id < len(self._sends) or message_id in self._delivered:
            raise ConfigError(f"message {message_id} was never sent or is delivered twice")
        dst = self._sends[message_id][1]
        self._delivered[message_id] = (self.interval(dst), self._step(dst))

    def execution(self) -> Execution:
        """The execution recorded so far."""
        messages = []
        for i, (src, dst, send_interval, send_step) in enumerate(self._sends):
            delivered = self._delivered.get(i)
            messages.append(
                MessageEvent(
                    src=src,
                    dst=dst,
                    send_interval=send_interval,
                    deliver_interval=None if delivered is None else delivered[0],
                    send_step=send_step,
                    deliver_step=None if delivered is None else delivered[1],
                )
            )
        return Execution(
            n=self.n,
            checkpoints={r: tuple(c) for r, c in self._checkpoints.items()},
            messages=tuple(messages),
        )

    def _step(self, rank: int) -> int:
        step = self._steps.get(rank, 0)
        self._steps[rank] = step + 1
        return step

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.n:
            raise ConfigError(f"rank {rank} is outside 0..{self.n - 1}")


def z_reach(execution: Execution, start: CheckpointId) -> dict[int, int]:
    """Per rank ``q``: the smallest interval in which a Z-path from ``start`` is delivered to q.

    Ranks no Z-path from ``start`` reaches are absent.
    """
    rank, position = start
    # sent_from[q]: the smallest interval from which a message sent by q continues the path.
    sent_from: dict[int, int] = {rank: position}
    reach: dict[int, int] = {}
    changed = True
    while changed:
        changed = False
        for m in execution.messages:
            if m.deliver_interval is None:
                continue
            floor = sent_from.get(m.src)
            if floor is None or m.send_interval < floor:
                continue
            if m.deliver_interval < reach.get(m.dst, m.deliver_interval + 1):
                reach[m.dst] = m.deliver_interval
                if m.deliver_interval < sent_from.get(m.dst, m.deliver_interval + 1):
                    sent_from[m.dst] = m.deliver_interval
                changed = True
    return reach


def z_precedes(execution: Execution, frm: CheckpointId, to: CheckpointId) -> bool:
    """True iff a Z-path leads from checkpoint ``frm`` to checkpoint ``to``."""
    reached = z_reach(execution, frm).get(to[0])
    return reached is not None and reached < to[1]


def z_path(execution: Execution, frm: CheckpointId, to: CheckpointId) -> list[int] | None:
    """A Z-path from ``frm`` to ``to`` as message numbers into ``execution.messages``, or None."""
    # Breadth-first over messages; a message's successor is sent by its receiver no earlier
    # than the interval it was delivered in.
    frontier = [
        i
        for i, m in enumerate(execution.messages)
        if m.src == frm[0] and m.send_interval >= frm[1] and m.deliver_interval is not None
    ]
    parent: dict[int, int | None] = dict.fromkeys(frontier)
    while frontier:
        following: list[int] = []
        for i in frontier:
            m = execution.messages[i]
            assert m.deliver_interval is not None
            if m.dst == to[0] and m.deliver_interval < to[1]:
                path = [i]
                step = parent[i]
                while step is not None:
                    path.append(step)
                    step = parent[step]
                return path[::-1]
            for k, nxt in enumerate(execution.messages):
                if (
                    k not in parent
                    and nxt.deliver_interval is not None
                    and nxt.src == m.dst
                    and nxt.send_interval >= m.deliver_interval
                ):
                    parent[k] = i
                    following.append(k)
        frontier = following
    return None


def useless_checkpoints(execution: Execution) -> set[CheckpointId]:
    """Every checkpoint on a Z-cycle, as ``(rank, position)``: none can be in a recovery line."""
    useless: set[CheckpointId] = set()
    for rank in range(execution.n):
        for position in range(1, execution.positions(rank)):
            if z_precedes(execution, (rank, position), (rank, position)):
                useless.add((rank, position))
    return useless


Vector = list[int]
"""Per rank ``q``: the newest checkpoint position of q that a path leaves from, -1 for none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DependencyVectors:
    """What precedes each checkpoint ``(rank, position >= 1)``, causally and by Z-paths.

    ``causal[c][q]`` is the newest position ``x`` with ``C(q, x)`` happened-before ``c``;
    ``zigzag[c][q]`` the newest with a Z-path from ``C(q, x)`` to ``c``; -1 for none. A rank's
    own entry is at least ``position - 1`` (its earlier checkpoints precede it).
    """

    causal: Mapping[CheckpointId, Sequence[int]]
    zigzag: Mapping[CheckpointId, Sequence[int]]
    passes: int


def _causal_send_vectors(execution: Execution) -> list[np.ndarray | None]:
    """Vector clock of each message's send (own entry = its send interval); None: undelivered."""
    n = execution.n
    events: dict[int, list[tuple[int, int, bool]]] = {}
    for i, m in enumerate(execution.messages):
        if m.deliver_interval is None:
            continue
        if m.send_step is None or m.deliver_step is None:
            raise ConfigError(
                "causal dependencies need each rank's event order: record the execution with "
                "ExecutionRecorder (it sets send_step and deliver_step)"
            )
        events.setdefault(m.src, []).append((m.send_step, i, True))
        events.setdefault(m.dst, []).append((m.deliver_step, i, False))
    for rank_events in events.values():
        rank_events.sort()
    clock = {r: np.full(n, -1, dtype=np.int64) for r in events}
    at_send: list[np.ndarray | None] = [None] * len(execution.messages)
    cursor = dict.fromkeys(events, 0)
    # Ranks that may advance; a rank stops at a delivery whose send is not processed yet and
    # is woken when that send is.
    ready = list(events)
    waiting: dict[int, int] = {}
    while ready:
        rank = ready.pop()
        rank_events = events[rank]
        pos = cursor[rank]
        own = clock[rank]
        while pos < len(rank_events):
            _, i, is_send = rank_events[pos]
            if is_send:
                interval = execution.messages[i].send_interval
                if interval > own[rank]:
                    own[rank] = interval
                at_send[i] = own.copy()
                woken = waiting.pop(i, None)
                if woken is not None:
                    ready.append(woken)
            else:
                sent = at_send[i]
                if sent is None:
                    waiting[i] = rank
                    break
                np.maximum(own, sent, out=own)
            pos += 1
        cursor[rank] = pos
    stuck = [r for r, pos in cursor.items() if pos < len(events[r])]
    if stuck:
        raise ConfigError(
            f"ranks {sorted(stuck)} deliver messages that are never sent before their delivery: "
            "the execution is not a causal order"
        )
    return at_send


def dependency_vectors(execution: Execution) -> DependencyVectors:
    """Causal and Z-path dependency vectors of every checkpoint after the initial ones.

    The vectors of all intervals of all ranks are the rows of one array (rank r's interval t
    is row ``offset[r] + t``), so a pass over the messages is one scatter-max and what a
    rank's sends carry is one running maximum down its rows: the cost per pass is the same
    ``O(ranks * messages)`` as message by message, at array speed.
    """
    n = execution.n
    at_send = _causal_send_vectors(execution)
    intervals = [execution.positions(r) for r in range(n)]
    offset = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(intervals, out=offset[1:])
    causal_in = np.full((int(offset[n]), n), -1, dtype=np.int64)
    src_rows: list[int] = []
    dst_rows: list[int] = []
    for i, m in enumerate(execution.messages):
        sent = at_send[i]
        if sent is None or m.deliver_interval is None:
            continue
        row = int(offset[m.dst]) + m.deliver_interval
        np.maximum(causal_in[row], sent, out=causal_in[row])
        src_rows.append(int(offset[m.src]) + m.send_interval)
        dst_rows.append(row)
    sources = np.asarray(src_rows, dtype=np.int64)
    targets = np.asarray(dst_rows, dtype=np.int64)

    def carry(into: np.ndarray, out: np.ndarray, ranks: Iterable[int]) -> None:
        # What a message sent in interval k carries: everything delivered in intervals <= k,
        # and the rank's own checkpoints up to k.
        for rank in ranks:
            rows = slice(int(offset[rank]), int(offset[rank + 1]))
            np.maximum.accumulate(into[rows], axis=0, out=out[rows])
            np.maximum(out[rows, rank], np.arange(intervals[rank]), out=out[rows, rank])

    z_in = causal_in.copy()
    z_out = np.empty_like(z_in)
    carry(z_in, z_out, range(n))
    passes = 0
    while True:
        passes += 1
        grown_in = z_in.copy()
        np.maximum.at(grown_in, targets, z_out[sources])
        changed = np.flatnonzero((grown_in != z_in).any(axis=1))
        if not len(changed):
            break
        z_in = grown_in
        grown = set(np.searchsorted(offset, changed, side="right") - 1)
        carry(z_in, z_out, sorted(int(r) for r in grown))
    causal_out = np.empty_like(causal_in)
    carry(causal_in, causal_out, range(n))
    causal_rows = causal_out.tolist()
    zigzag_rows = z_out.tolist()
    causal: dict[CheckpointId, Sequence[int]] = {}
    zigzag: dict[CheckpointId, Sequence[int]] = {}
    for r in range(n):
        base = int(offset[r])
        for position in range(1, intervals[r]):
            # Checkpoint ``position`` ends interval ``position - 1``.
            causal[(r, position)] = causal_rows[base + position - 1]
            zigzag[(r, position)] = zigzag_rows[base + position - 1]
    return DependencyVectors(causal=causal, zigzag=zigzag, passes=passes)


def z_cycle_checkpoints(vectors: DependencyVectors) -> set[CheckpointId]:
    """Checkpoints on a Z-cycle (useless), from ``dependency_vectors``."""
    return {c for c, z in vectors.zigzag.items() if z[c[0]] >= c[1]}


@dataclass(frozen=True, slots=True, kw_only=True)
class RdtViolation:
    """A Z-path from ``frm`` to ``to`` that no causal path doubles."""

    frm: CheckpointId
    to: CheckpointId


def rdt_violations(vectors: DependencyVectors) -> list[RdtViolation]:
    """Z-paths between checkpoints with no causal path behind them (none: the run is RDT).

    For each checkpoint, one violation per rank whose newest Z-path start is newer than its
    newest causal predecessor, naming that start; sorted.
    """
    found: list[RdtViolation] = []
    for c in sorted(vectors.zigzag):
        z, h = vectors.zigzag[c], vectors.causal[c]
        for q in range(len(z)):
            if z[q] > h[q]:
                found.append(RdtViolation(frm=(q, z[q]), to=c))
    return found


def useless_indices(execution: Execution) -> set[tuple[int, int]]:
    """Like ``useless_checkpoints`` but naming checkpoints by ``(rank, protocol index)``."""
    return {(r, execution.checkpoints[r][p - 1]) for r, p in useless_checkpoints(execution)}


def execution_from_trace(trace: Mapping[str, object]) -> Execution:
    """The execution recorded in a failure-free snapline trace (see docs/trace-format.md)."""
    n = trace.get("n")
    events = trace.get("events")
    if not isinstance(n, int) or not isinstance(events, list):
        raise ConfigError("not a snapline trace: it needs an int 'n' and an 'events' list")
    recorder = ExecutionRecorder(n)
    message_ids: dict[tuple[int, int, int], int] = {}
    for event in events:
        if not isinstance(event, dict):
            raise ConfigError(f"trace event {event!r} is not an object")
        kind, rank = event.get("kind"), event.get("rank")
        if not isinstance(rank, int):
            raise ConfigError(f"trace event {event!r} has no int 'rank'")
        if kind in ("crash", "restore"):
            raise ConfigError(
                "the trace has a crash or restore; Z-path analysis needs a failure-free run"
            )
        if kind == "checkpoint":
            recorder.checkpoint(rank, int(event["index"]))
        elif kind == "send":
            dst, seq = int(event["dst"]), int(event["seq"])
            message_ids[(rank, dst, seq)] = recorder.send(rank, dst)
        elif kind == "deliver":
            key = (int(event["src"]), rank, int(event["seq"]))
            if key not in message_ids:
                raise ConfigError(f"trace delivers {key} before it was sent")
            recorder.deliver(message_ids[key])
    return recorder.execution()
