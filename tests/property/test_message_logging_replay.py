"""Message logging under random interleavings and crashes: replay is exact, results unchanged.

The harness below is a tiny deterministic job driver (real replay, no simulator).

Each rank runs a small piecewise-deterministic application whose state is order-sensitive (a
digest over every handled event), so an inexact replay shows up as a different digest. The
driver follows the engine contract: it assigns seqs on ``Transmit``, makes log entries stable
in any order the test picks, keeps an app timer pending until ``FireAppTimer`` runs it, captures
state at ``TakeCheckpoint``, and on recovery restores only what the plan names, replays straight
into the application (sends still go through the protocol), then feeds ``rearrive`` through the
protocol. Choices (which channel, which log write, crash or not) come from the caller.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from snapline.protocols.base import (
    Action,
    AppTimerDue,
    CheckpointPersisted,
    CheckpointRecord,
    CheckpointRequested,
    CollectGarbage,
    Commit,
    ControlArrived,
    Deliver,
    DiscardCheckpoint,
    Event,
    FireAppTimer,
    LogMessage,
    MessageArrived,
    MessageLogged,
    OutputRequested,
    PeerFailed,
    RecoveryCompleted,
    RecoveryPlan,
    RecoveryView,
    Redelivery,
    ReleaseOutput,
    SendControl,
    SendRequested,
    TakeCheckpoint,
    TimerReplay,
    Transmit,
    initial_record,
)
from snapline.protocols.message_logging import PessimisticMessageLogging
from snapline.topology import Topology

MODULUS = (1 << 61) - 1


def initial_app(rank: int, *, budget: int, ticks: int) -> dict[str, Any]:
    """The application state before ``on_start``."""
    return {
        "digest": rank + 1,
        "total": 0,
        "budget": budget,
        "ticks_left": ticks,
        "handled": [],  # (src, seq, payload) in handling order
        "sent": [],  # (dst, seq, payload) in sending order
        "outputs": 0,
    }


@dataclass
class Rank:
    """Everything the driver keeps for one rank."""

    rank: int
    protocol: PessimisticMessageLogging
    app: dict[str, Any]
    alive: bool = True
    sent: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    arrived: dict[tuple[int, int], object] = field(default_factory=dict)
    next_send_id: int = 1
    next_timer_id: int = 1
    next_output_id: int = 1
    #: name -> (timer_id, already handed to the protocol as AppTimerDue)
    timers: dict[str, tuple[int, bool]] = field(default_factory=dict)
    log_pending: dict[int, Any] = field(default_factory=dict)
    log_stable: list[Any] = field(default_factory=list)
    taken: dict[int, tuple[CheckpointRecord, dict[str, Any]]] = field(default_factory=dict)
    committed: list[tuple[CheckpointRecord, dict[str, Any]]] = field(default_factory=list)
    released_output: int = 0
    restores: int = 0
    replaying: bool = False
    #: The application state and pending timer names at the crash (for the exact-replay check).
    at_crash: Any = None


class Job:
    """N ranks under message logging, stepped by the caller."""

    def __init__(
        self, topology: Topology, *, budget: int = 4, ticks: int = 2, ack_every: int = 2
    ) -> None:
        self.topology = topology
        self.n = topology.n
        self.budget = budget
        self.ticks = ticks
        self.options = {"ack_every": ack_every}
        self.channels: dict[tuple[int, int], deque[tuple[str, Any]]] = {
            e: deque() for e in sorted(topology.edges)
        }
        self.ranks: list[Rank] = []
        for r in range(self.n):
            proto = PessimisticMessageLogging(
                rank=r,
                n=self.n,
                inbound=topology.inbound(r),
                outbound=topology.outbound(r),
                options=self.options,
            )
            app = initial_app(r, budget=budget, ticks=ticks)
            state = Rank(rank=r, protocol=proto, app=app)
            state.committed.append((initial_record(r), copy.deepcopy(app)))
            self.ranks.append(state)
        self.incarnation = 0
        self.plans: list[RecoveryPlan] = []
        self.restored_ranks: list[int] = []
        for r in range(self.n):
            self._on_start(self.ranks[r])

    # ---------------------------------------------------------------- the application
    def _ctx_send(self, state: Rank, dst: int, payload: int) -> None:
        send_id = state.next_send_id
        state.next_send_id += 1
        self.feed(state, SendRequested(send_id=send_id, dst=dst, payload=payload))

    def _set_timer(self, state: Rank, name: str) -> None:
        state.timers[name] = (state.next_timer_id, False)
        state.next_timer_id += 1

    def _mix(self, state: Rank, *values: int) -> None:
        digest = state.app["digest"]
        for v in values:
            digest = (digest * 1_000_003 + v + 7) % MODULUS
        state.app["digest"] = digest

    def _on_start(self, state: Rank) -> None:
        outs = sorted(self.topology.outbound(state.rank))
        for dst in outs:
            self._ctx_send(state, dst, state.app["budget"])
        if state.app["ticks_left"] > 0:
            self._set_timer(state, "tick")

    def _on_message(self, state: Rank, src: int, seq: int, payload: int) -> None:
        state.app["handled"].append((src, seq, payload))
        self._mix(state, src, payload)
        state.app["total"] += payload
        outs = sorted(self.topology.outbound(state.rank))
        if payload > 0 and outs:
            # The destination depends on the message only (not on the order of arrivals), so
            # the failure-free totals are the same under every interleaving.
            dst = outs[(payload + src + state.rank) % len(outs)]
            self._ctx_send(state, dst, payload - 1)
        if payload == 0:
            self._output(state)

    def _on_timer(self, state: Rank, name: str) -> None:
        assert name == "tick"
        self._mix(state, 999_983)
        state.app["total"] += 1000
        state.app["ticks_left"] -= 1
        outs = sorted(self.topology.outbound(state.rank))
        if outs:
            self._ctx_send(state, outs[state.app["ticks_left"] % len(outs)], 1)
        if state.app["ticks_left"] > 0:
            self._set_timer(state, "tick")

    def _output(self, state: Rank) -> None:
        state.app["outputs"] += 1
        if state.replaying:
            return  # drivers suppress outputs re-produced by a replay
        output_id = state.next_output_id
        state.next_output_id += 1
        self.feed(state, OutputRequested(output_id=output_id))

    # ---------------------------------------------------------------- the driver
    def feed(self, state: Rank, event: Event) -> None:
        """Feed an event to a live rank's protocol and carry out its actions."""
        assert state.alive
        for action in state.protocol.handle(event):
            self._execute(state, action)

    def _execute(self, state: Rank, action: Action) -> None:
        r = state.rank
        match action:
            case Transmit(dst=dst, payload=payload, piggyback=piggyback):
                seq = state.sent.get(dst, 0) + 1
                state.sent[dst] = seq
                state.app["sent"].append((dst, seq, payload))
                self.channels[(r, dst)].append(("msg", (seq, payload, piggyback)))
            case SendControl(dst=dst, control=control):
                self.channels[(r, dst)].append(("ctl", control))
            case LogMessage(entry_id=entry_id, entry=entry):
                assert entry_id not in state.log_pending
                state.log_pending[entry_id] = copy.deepcopy(entry)
            case Deliver(src=src, seq=seq):
                payload = state.arrived.pop((src, seq))
                assert seq == state.received.get(src, 0) + 1, "Deliver out of channel order"
                state.received[src] = seq
                self._on_message(state, src, seq, int(payload))  # type: ignore[call-overload]
            case FireAppTimer(timer_id=timer_id):
                name = next(n for n, (tid, _) in state.timers.items() if tid == timer_id)
                del state.timers[name]
                self._on_timer(state, name)
            case TakeCheckpoint(index=index, forced=forced, meta=meta):
                record = CheckpointRecord(
                    rank=r,
                    index=index,
                    forced=forced,
                    sent=dict(state.sent),
                    received=dict(state.received),
                    meta=copy.deepcopy(meta),
                )
                snapshot = copy.deepcopy(state.app)
                snapshot["_timers"] = sorted(state.timers)
                state.taken[index] = (record, snapshot)
            case Commit(index=index):
                state.committed.append(state.taken.pop(index))
            case DiscardCheckpoint(index=index):
                state.taken.pop(index, None)
            case CollectGarbage():
                pass
            case ReleaseOutput(output_id=output_id):
                state.released_output = max(state.released_output, output_id)
            case _:
                raise AssertionError(f"unexpected action {action!r}")

    def arrive(self, src: int, dst: int) -> None:
        """Hand the head of channel src->dst to dst."""
        kind, body = self.channels[(src, dst)].popleft()
        state = self.ranks[dst]
        if kind == "ctl":
            self.feed(state, ControlArrived(src=src, control=body))
            return
        seq, payload, piggyback = body
        if seq <= state.received.get(src, 0) or (src, seq) in state.arrived:
            return  # duplicate: dropped by seq
        state.arrived[(src, seq)] = payload
        self.feed(state, MessageArrived(src=src, seq=seq, payload=payload, piggyback=piggyback))

    def make_stable(self, rank: int, entry_id: int) -> None:
        """A log write completes (writes may complete in any order)."""
        state = self.ranks[rank]
        state.log_stable.append(state.log_pending.pop(entry_id))
        self.feed(state, MessageLogged(entry_id=entry_id))

    def timer_due(self, rank: int, name: str) -> None:
        """An app timer is due: handed to the protocol once; it stays pending until fired."""
        state = self.ranks[rank]
        timer_id, handed = state.timers[name]
        assert not handed
        state.timers[name] = (timer_id, True)
        self.feed(state, AppTimerDue(timer_id=timer_id, name=name))

    def request_checkpoint(self, rank: int) -> None:
        """The checkpoint schedule fires on ``rank``."""
        self.feed(self.ranks[rank], CheckpointRequested())

    def persist(self, rank: int, index: int) -> None:
        """Checkpoint ``index`` of ``rank`` is durably written."""
        self.feed(self.ranks[rank], CheckpointPersisted(index=index))

    def crash(self, rank: int, *, lose_inbound: bool) -> None:
        """``rank`` dies: its volatile state, pending writes and arrived messages are gone."""
        state = self.ranks[rank]
        assert state.alive
        state.alive = False
        state.at_crash = (copy.deepcopy(state.app), sorted(state.timers))
        state.log_pending.clear()  # unconfirmed writes never land
        state.taken.clear()
        state.arrived.clear()
        if lose_inbound:
            for (_src, d), queue in self.channels.items():
                if d == rank:
                    queue.clear()
        for other in self.ranks:
            if other.alive:
                self.feed(other, PeerFailed(rank=rank))

    def view(self) -> RecoveryView:
        """The recovery view a driver builds now."""
        return RecoveryView(
            n=self.n,
            failed=frozenset(s.rank for s in self.ranks if not s.alive),
            committed={s.rank: [rec for rec, _ in s.committed] for s in self.ranks},
            volatile={
                s.rank: CheckpointRecord(
                    rank=s.rank,
                    index=-1,
                    forced=False,
                    sent=dict(s.sent),
                    received=dict(s.received),
                    meta=s.protocol.volatile_meta(),
                )
                for s in self.ranks
                if s.alive
            },
            message_logs={s.rank: list(s.log_stable) for s in self.ranks},
            edges=self.topology.edges,
        )

    def recover(self, *, drop_old_in_flight: bool = False) -> RecoveryPlan:
        """Plan with the protocol class and carry the plan out.

        ``drop_old_in_flight``: drop *every* message a restored rank's old incarnation left in
        flight (not only those after its checkpoint), as a stricter driver may.
        """
        view = self.view()
        plan = PessimisticMessageLogging.plan_recovery(view)
        assert set(plan.restore) == set(view.failed), "only failed ranks may roll back"
        assert plan.replay_timers_only == view.failed
        self.plans.append(plan)
        self.incarnation += 1
        for rank in sorted(plan.restore):
            self._restore(self.ranks[rank], plan.restore[rank], drop_old_in_flight)
        for rank in sorted(plan.restore):
            state = self.ranks[rank]
            self._replay(state, plan.replay.get(rank, ()))
            # Exact replay: the log holds every event the rank handled, so re-execution
            # reaches the very state it crashed in (sends included, same seqs).
            assert (state.app, sorted(state.timers)) == state.at_crash, f"rank {rank} diverged"
        for rank in sorted(plan.rearrive):
            state = self.ranks[rank]
            for item in plan.rearrive[rank]:
                if (
                    item.seq <= state.received.get(item.src, 0)
                    or (item.src, item.seq) in state.arrived
                ):
                    continue
                state.arrived[(item.src, item.seq)] = item.payload
                self.feed(
                    state,
                    MessageArrived(
                        src=item.src, seq=item.seq, payload=item.payload, piggyback=None
                    ),
                )
        for state in self.ranks:
            if state.rank not in plan.restore:
                self.feed(
                    state,
                    RecoveryCompleted(
                        restored=frozenset(plan.restore), incarnation=self.incarnation
                    ),
                )
        return plan

    def _restore(self, state: Rank, index: int, drop_old_in_flight: bool) -> None:
        record, snapshot = next((rec, snap) for rec, snap in state.committed if rec.index == index)
        self.restored_ranks.append(state.rank)
        state.restores += 1
        state.protocol = PessimisticMessageLogging.restored(
            record=record,
            n=self.n,
            inbound=self.topology.inbound(state.rank),
            outbound=self.topology.outbound(state.rank),
            options=self.options,
            incarnation=self.incarnation,
        )
        state.alive = True
        app = copy.deepcopy(snapshot)
        timer_names = app.pop("_timers", [])
        state.app = app
        state.sent = dict(record.sent)
        state.received = dict(record.received)
        state.timers = {}
        for name in timer_names:
            self._set_timer(state, name)
        # What the old incarnation sent after the checkpoint is re-sent by its re-execution.
        for (s, d), queue in self.channels.items():
            if s == state.rank:
                kept = [
                    m
                    for m in queue
                    if m[0] == "msg" and m[1][0] <= state.sent.get(d, 0) and not drop_old_in_flight
                ]
                queue.clear()
                queue.extend(kept)
        if index == 0:
            self._on_start(state)

    def _replay(self, state: Rank, items: Any) -> None:
        state.replaying = True
        for item in items:
            if isinstance(item, Redelivery):
                assert item.seq == state.received.get(item.src, 0) + 1
                state.received[item.src] = item.seq
                self._on_message(state, item.src, item.seq, int(item.payload))  # type: ignore[call-overload]
            else:
                assert isinstance(item, TimerReplay)
                assert item.name in state.timers, "replayed a timer that is not pending"
                del state.timers[item.name]
                self._on_timer(state, item.name)
        state.replaying = False

    # ---------------------------------------------------------------- stepping
    def choices(self) -> list[tuple[str, int, Any]]:
        """Everything that could happen next (crashes aside), in a stable order."""
        out: list[tuple[str, int, Any]] = []
        for (s, d), queue in self.channels.items():
            if queue and self.ranks[d].alive:
                out.append(("arrive", s, d))
        for state in self.ranks:
            if not state.alive:
                continue
            out.extend(("stable", state.rank, eid) for eid in sorted(state.log_pending))
            out.extend(
                ("timer", state.rank, name)
                for name, (_, handed) in sorted(state.timers.items())
                if not handed
            )
            out.extend(("persist", state.rank, index) for index in sorted(state.taken))
            out.append(("checkpoint", state.rank, None))
        return out

    def do(self, choice: tuple[str, int, Any]) -> None:
        """Carry out one choice from ``choices``."""
        kind, a, b = choice
        if kind == "arrive":
            self.arrive(a, b)
        elif kind == "stable":
            self.make_stable(a, b)
        elif kind == "timer":
            self.timer_due(a, b)
        elif kind == "persist":
            self.persist(a, b)
        else:
            self.request_checkpoint(a)

    def drain(self, *, limit: int = 100_000) -> None:
        """Run to quiescence without checkpoints or crashes (the liveness phase)."""
        for _ in range(limit):
            todo = [c for c in self.choices() if c[0] != "checkpoint"]
            if not todo:
                return
            self.do(todo[0])
        raise AssertionError("the job does not quiesce")

    def results(self) -> list[int]:
        """Per rank, the order-independent total (equal to the failure-free run)."""
        return [state.app["total"] for state in self.ranks]

    def check_exactly_once(self) -> None:
        """Every channel: handled == sent, same seqs, same payloads, in order."""
        for s, d in sorted(self.topology.edges):
            sent = [(seq, p) for dst, seq, p in self.ranks[s].app["sent"] if dst == d]
            got = [(seq, p) for src, seq, p in self.ranks[d].app["handled"] if src == s]
            assert got == sent, f"channel {s}->{d}: handled {got} != sent {sent}"


# ------------------------------------------------------------------------------ the properties

TOPOLOGIES = [
    Topology.complete(3),
    Topology.ring(4),  # every rank has a single inbound channel and no reverse channel
    Topology.random_graph(5, degree=2, seed=3),
    Topology.from_edges(3, [(0, 1), (1, 2), (2, 0), (0, 2)]),  # rank 1: one inbound channel
]
_FAILURE_FREE: dict[int, list[int]] = {}


def failure_free(topology_index: int) -> list[int]:
    """Per-rank totals of a run without crashes (any interleaving gives the same totals)."""
    if topology_index not in _FAILURE_FREE:
        job = Job(TOPOLOGIES[topology_index])
        job.drain()
        _FAILURE_FREE[topology_index] = job.results()
    return _FAILURE_FREE[topology_index]


@settings(max_examples=150, deadline=None)
@given(
    topology_index=st.integers(0, len(TOPOLOGIES) - 1),
    steps=st.lists(st.integers(0, 1 << 20), min_size=60, max_size=300),
)
def test_random_interleavings_and_crashes_replay_exactly(
    topology_index: int, steps: list[int]
) -> None:
    job = Job(TOPOLOGIES[topology_index])
    crashes = 0
    for pick in steps:
        if pick % 17 == 0 and crashes < 6:
            crashes += 1
            victims = {pick % job.n} | ({(pick // 7) % job.n} if pick % 3 == 0 else set())
            for victim in sorted(victims):
                job.crash(victim, lose_inbound=bool(pick & 1 << 10))
            job.recover(drop_old_in_flight=bool(pick & 1 << 11))  # asserts exact replays
            continue
        todo = job.choices()
        job.do(todo[pick % len(todo)])
    event(f"recoveries: {min(crashes, 3)}+" if crashes >= 3 else f"recoveries: {crashes}")
    event("rearrived" if any(p.rearrive for p in job.plans) else "nothing rearrived")
    job.drain()
    job.check_exactly_once()
    assert job.results() == failure_free(topology_index)
    # Only failed ranks ever rolled back.
    assert sorted(job.restored_ranks) == sorted(r for plan in job.plans for r in plan.restore)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.integers(0, 1 << 20), min_size=20, max_size=200))
def test_log_replayed_on_a_fresh_process_reproduces_its_state(steps: list[int]) -> None:
    """Crash a rank that never checkpointed: its whole state comes back from the log alone."""
    job = Job(Topology.complete(3), budget=5, ticks=3)
    for pick in steps:
        todo = [c for c in job.choices() if c[0] != "checkpoint"]
        if not todo:
            break
        job.do(todo[pick % len(todo)])
    handled_before = list(job.ranks[1].app["handled"])
    job.crash(1, lose_inbound=True)
    plan = job.recover()
    assert plan.restore == {1: 0}
    assert job.ranks[1].app["handled"] == handled_before
    job.drain()
    job.check_exactly_once()
    reference = Job(Topology.complete(3), budget=5, ticks=3)
    reference.drain()
    assert job.results() == reference.results()
