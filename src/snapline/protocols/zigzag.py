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

``ExecutionRecorder`` builds an ``Execution`` from events in the order each rank saw them, and
``execution_from_trace`` reads a failure-free snapline trace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
    _sends: list[tuple[int, int, int]] = field(default_factory=list)
    _delivered: dict[int, int] = field(default_factory=dict)

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
        self._sends.append((src, dst, self.interval(src)))
        return len(self._sends) - 1

    def deliver(self, message_id: int) -> None:
        """The message ``message_id`` was delivered to its destination."""
        if not 0 <= message_id < len(self._sends) or message_id in self._delivered:
            raise ConfigError(f"message {message_id} was never sent or is delivered twice")
        self._delivered[message_id] = self.interval(self._sends[message_id][1])

    def execution(self) -> Execution:
        """The execution recorded so far."""
        return Execution(
            n=self.n,
            checkpoints={r: tuple(c) for r, c in self._checkpoints.items()},
            messages=tuple(
                MessageEvent(
                    src=src, dst=dst, send_interval=si, deliver_interval=self._delivered.get(i)
                )
                for i, (src, dst, si) in enumerate(self._sends)
            ),
        )

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
