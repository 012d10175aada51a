"""An in-memory link: a pure, deterministic test harness for N protocol objects.

Theory of operation
-------------------
``InMemoryLink`` owns one protocol object per rank and plays a minimal driver for them, with no
application behind it: the "state" of a rank is its channel counters and the list of messages
delivered to it. Every directed channel ``src -> dst`` is one FIFO queue holding application
messages and control messages in the order they were sent (control is FIFO with application
data, as ``SendControl`` promises).

Nothing moves on its own. A test asks the link to ``send``, to ``deliver`` the head of a
channel (or ``step`` / ``run`` to pick channels in sorted order or from an injected generator
with ``randrange``), to ``request_checkpoint``, to ``persist`` written checkpoints, to ``crash``
a rank and to ``recover``. Each call feeds one event to one rank and carries out the returned
actions in order before returning, like a driver would; events a protocol causes for itself
(``CheckpointPersisted``) are only fed when the test asks, so a test controls every
interleaving.

The link checks what a driver relies on and raises ``LinkViolation`` (an ``AssertionError``)
when a protocol breaks the contract: ``Transmit`` of an unknown send, ``Deliver`` of a message
that has not arrived or out of channel order, ``Commit`` of a checkpoint never taken or not yet
persisted, a recovery plan that leaves a failed rank out, restores an uncommitted or collected
checkpoint, yields an inconsistent cut, or replays messages out of order. ``ProtocolError``
raised by a protocol propagates unchanged.

Recovery follows ``base``: committed records, tentative ones (persisted, not yet committed or
discarded) and the survivors' volatile records go to the protocol class's ``plan_recovery``;
tentative checkpoints the plan commits (``RecoveryPlan.commit``) are committed first; restored
ranks get new protocol objects via ``restored``,
counters from their record, in-flight control messages of their previous incarnation and
application messages it sent after the restored checkpoint dropped (those sent before it are in
transit for the cut and stay queued; arrived-but-undelivered messages are lost), replay
delivered straight to the "application" (not through the protocol), then ``rearrive`` items
fed through the protocols as ``MessageArrived`` (with their piggybacks), and every rank (restored
ones too, as in both drivers) gets ``RecoveryCompleted`` (with the checkpoints the plan committed
for it). Arriving duplicates (``seq`` already received) are dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol as TypingProtocol

from snapline.protocols.base import (
    Action,
    AttachToCheckpoint,
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
    PlainData,
    Protocol,
    RecordChannelMessage,
    RecoveryCompleted,
    RecoveryPlan,
    RecoveryView,
    Redelivery,
    ReleaseOutput,
    SendControl,
    SendRequested,
    SetTimer,
    SnapshotComplete,
    TakeCheckpoint,
    TimerFired,
    TimerReplay,
    Transmit,
    initial_record,
    is_consistent,
)


class LinkViolation(AssertionError):
    """A protocol broke the driver contract (see the module docstring for what is checked)."""


class Chooser(TypingProtocol):
    """What the link needs from a generator: ``random.Random`` fits."""

    def randrange(self, stop: int, /) -> int:
        """An int in ``0 .. stop-1``."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AppMessage:
    """An application message on a channel, or one delivered to a rank."""

    src: int
    dst: int
    seq: int
    payload: object
    piggyback: PlainData = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlMessage:
    """A protocol control message on a channel."""

    src: int
    dst: int
    control: PlainData


@dataclass(slots=True)
class RankState:
    """Everything the link keeps for one rank (read it freely in tests)."""

    rank: int
    protocol: Protocol
    alive: bool = True
    incarnation: int = 0
    sent: dict[int, int] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    next_send_id: int = 1
    next_output_id: int = 1
    #: Sends the protocol has not transmitted yet, by send_id: (dst, payload).
    pending_sends: dict[int, tuple[int, object]] = field(default_factory=dict)
    #: Arrived but not yet delivered, by (src, seq).
    arrived: dict[tuple[int, int], AppMessage] = field(default_factory=dict)
    delivered: list[AppMessage] = field(default_factory=list)
    #: Checkpoints taken in this incarnation and not yet committed or discarded.
    taken: dict[int, CheckpointRecord] = field(default_factory=dict)
    persisted: set[int] = field(default_factory=set)
    committed: list[CheckpointRecord] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)
    collected_before: int = 0
    #: ``RecordChannelMessage`` by snapshot id (as ``repr``): the recorded messages in order.
    recorded: dict[str, list[AppMessage]] = field(default_factory=dict)
    snapshots_complete: list[tuple[PlainData, int]] = field(default_factory=list)
    timers: dict[str, float] = field(default_factory=dict)
    log_pending: dict[int, PlainData] = field(default_factory=dict)
    log_stable: list[PlainData] = field(default_factory=list)
    fired_app_timers: list[int] = field(default_factory=list)
    released_output: int = 0
    actions: list[Action] = field(default_factory=list)

    def record_now(self, *, index: int, forced: bool, meta: PlainData) -> CheckpointRecord:
        """A checkpoint record of this rank's current counters."""
        return CheckpointRecord(
            rank=self.rank,
            index=index,
            forced=forced,
            sent=dict(self.sent),
            received=dict(self.received),
            meta=meta,
        )


class InMemoryLink:
    """N protocol objects joined by FIFO channels; see the module docstring."""

    def __init__(self, protocols: Sequence[Protocol]) -> None:
        if not protocols:
            raise LinkViolation("a link needs at least one protocol object")
        self.n = len(protocols)
        for rank, proto in enumerate(protocols):
            if proto.rank != rank or proto.n != self.n:
                raise LinkViolation(f"protocol {rank} says rank={proto.rank}, n={proto.n}")
        self.edges = frozenset((p.rank, dst) for p in protocols for dst in p.outbound)
        for src, dst in self.edges:
            if src not in protocols[dst].inbound:
                raise LinkViolation(f"channel {src}->{dst}: {dst} does not list {src} inbound")
        self.ranks = [RankState(rank=p.rank, protocol=p) for p in protocols]
        for state in self.ranks:
            state.committed.append(initial_record(state.rank))
        self.channels: dict[tuple[int, int], deque[AppMessage | ControlMessage]] = {
            edge: deque() for edge in sorted(self.edges)
        }
        self.incarnation = 0
        self.plans: list[RecoveryPlan] = []
        #: Per channel, the payload of every transmitted seq (seq k at position k-1) in the
        #: current execution: cut back when the sender restores.
        self.transmitted: dict[tuple[int, int], list[object]] = {e: [] for e in self.channels}

    @classmethod
    def build(
        cls,
        protocol_cls: type[Protocol],
        n: int,
        edges: frozenset[tuple[int, int]],
        options: Mapping[str, PlainData] | None = None,
    ) -> InMemoryLink:
        """A link over fresh ``protocol_cls`` objects for the directed graph ``edges``."""
        return cls(
            [
                protocol_cls(
                    rank=r,
                    n=n,
                    inbound=frozenset(s for s, d in edges if d == r),
                    outbound=frozenset(d for s, d in edges if s == r),
                    options=options,
                )
                for r in range(n)
            ]
        )

    # ----------------------------------------------------------------------------------------
    # What a test can make happen.

    def send(self, src: int, dst: int, payload: object) -> int:
        """The application of ``src`` sends ``payload`` to ``dst``; returns the send_id."""
        state = self._live(src)
        if (src, dst) not in self.edges:
            raise LinkViolation(f"no channel {src}->{dst}")
        send_id = state.next_send_id
        state.next_send_id += 1
        state.pending_sends[send_id] = (dst, payload)
        self.feed(src, SendRequested(send_id=send_id, dst=dst, payload=payload))
        return send_id

    def request_checkpoint(self, rank: int) -> None:
        """The driver's checkpoint schedule fires on ``rank``."""
        self.feed(rank, CheckpointRequested())

    def persist(self, rank: int, index: int | None = None) -> int | None:
        """Report checkpoint ``index`` (default: the oldest unpersisted one) as written."""
        state = self._live(rank)
        waiting = sorted(i for i in state.taken if i not in state.persisted)
        if index is None:
            if not waiting:
                return None
            index = waiting[0]
        elif index not in waiting:
            raise LinkViolation(f"rank {rank} has no unpersisted checkpoint {index}")
        state.persisted.add(index)
        self.feed(rank, CheckpointPersisted(index=index))
        return index

    def persist_all(self) -> int:
        """Persist every written checkpoint until none is left; returns how many."""
        count = 0
        progress = True
        while progress:
            progress = False
            for state in self.ranks:
                if state.alive and self.persist(state.rank) is not None:
                    count += 1
                    progress = True
        return count

    def fire_timer(self, rank: int, name: str) -> None:
        """Fire the protocol timer ``name`` set on ``rank``."""
        state = self._live(rank)
        if state.timers.pop(name, None) is None:
            raise LinkViolation(f"rank {rank} has no timer {name!r}")
        self.feed(rank, TimerFired(name=name))

    def confirm_logs(self, rank: int) -> None:
        """Report every pending ``LogMessage`` entry of ``rank`` as stable, in order."""
        state = self._live(rank)
        for entry_id in sorted(state.log_pending):
            state.log_stable.append(state.log_pending.pop(entry_id))
            self.feed(rank, MessageLogged(entry_id=entry_id))

    def output(self, rank: int) -> int:
        """The application of ``rank`` produces output; returns the output_id."""
        state = self._live(rank)
        output_id = state.next_output_id
        state.next_output_id += 1
        self.feed(rank, OutputRequested(output_id=output_id))
        return output_id

    def deliverable(self) -> list[tuple[int, int]]:
        """Channels with something queued whose receiver is alive, in sorted order."""
        return [
            edge for edge, queue in self.channels.items() if queue and self.ranks[edge[1]].alive
        ]

    def deliver(self, src: int, dst: int) -> AppMessage | ControlMessage:
        """Hand the head of channel ``src -> dst`` to ``dst``'s protocol."""
        queue = self.channels.get((src, dst))
        if not queue:
            raise LinkViolation(f"nothing queued on {src}->{dst}")
        state = self._live(dst)
        item = queue.popleft()
        if isinstance(item, ControlMessage):
            self.feed(dst, ControlArrived(src=src, control=item.control))
        elif item.seq <= state.received.get(src, 0):
            pass  # a duplicate of something replayed after a recovery: drivers drop it
        else:
            state.arrived[(src, item.seq)] = item
            self.feed(
                dst,
                MessageArrived(
                    src=src, seq=item.seq, payload=item.payload, piggyback=item.piggyback
                ),
            )
        return item

    def step(self, chooser: Chooser | None = None) -> bool:
        """Deliver one queued item (first channel, or one drawn by ``chooser``)."""
        ready = self.deliverable()
        if not ready:
            return False
        src, dst = ready[chooser.randrange(len(ready))] if chooser else ready[0]
        self.deliver(src, dst)
        return True

    def run(
        self, chooser: Chooser | None = None, *, persist: bool = True, limit: int = 100_000
    ) -> int:
        """Deliver (and persist, if asked) until nothing moves; returns the steps taken."""
        steps = 0
        while steps < limit:
            moved = self.step(chooser)
            if not moved and persist:
                moved = self.persist_all() > 0
            if not moved:
                return steps
            steps += 1
        raise LinkViolation(f"still busy after {limit} steps: a protocol loops")

    def crash(self, rank: int) -> None:
        """``rank`` crashes: its unpersisted work is lost, live ranks get ``PeerFailed``."""
        state = self._live(rank)
        state.alive = False
        for other in self.ranks:
            if other.alive:
                self.feed(other.rank, PeerFailed(rank=rank))

    def recovery_view(self) -> RecoveryView:
        """What a driver would hand ``plan_recovery`` now."""
        return RecoveryView(
            n=self.n,
            failed=frozenset(s.rank for s in self.ranks if not s.alive),
            committed={s.rank: list(s.committed) for s in self.ranks},
            volatile={s.rank: self.volatile_record(s.rank) for s in self.ranks if s.alive},
            message_logs={s.rank: list(s.log_stable) for s in self.ranks},
            edges=self.edges,
            tentative={
                s.rank: [s.taken[i] for i in sorted(s.taken) if i in s.persisted]
                for s in self.ranks
            },
        )

    def volatile_record(self, rank: int) -> CheckpointRecord:
        """The current state of a live rank as a record (``index`` -1)."""
        state = self.ranks[rank]
        return state.record_now(index=-1, forced=False, meta=state.protocol.volatile_meta())

    def recover(self) -> RecoveryPlan:
        """Plan a recovery with the protocol class, check it, and carry it out."""
        view = self.recovery_view()
        plan = type(self.ranks[0].protocol).plan_recovery(view)
        self._commit_resolved(view, plan)
        self._check_plan(view, plan)
        self.incarnation += 1
        for rank, index in sorted(plan.restore.items()):
            self._restore(rank, index, plan.replay.get(rank, ()))
        for rank, items in sorted(plan.rearrive.items()):
            state = self._live(rank)
            for item in items:
                if item.seq <= state.received.get(item.src, 0):
                    continue  # a duplicate, as drivers drop it
                message = AppMessage(
                    src=item.src,
                    dst=rank,
                    seq=item.seq,
                    payload=item.payload,
                    piggyback=item.piggyback,
                )
                state.arrived[(item.src, item.seq)] = message
                self.feed(
                    rank,
                    MessageArrived(
                        src=item.src, seq=item.seq, payload=item.payload, piggyback=item.piggyback
                    ),
                )
        restored = frozenset(plan.restore)
        # Every rank hears it, restored ones included, as in both drivers.
        for state in self.ranks:
            self.feed(
                state.rank,
                RecoveryCompleted(
                    restored=restored,
                    incarnation=self.incarnation,
                    committed=frozenset(plan.commit.get(state.rank, ())),
                ),
            )
        self.plans.append(plan)
        return plan

    # ----------------------------------------------------------------------------------------
    # Views for assertions.

    def committed_index(self, rank: int) -> int:
        """The newest committed checkpoint index of ``rank`` (0 = the initial state)."""
        return self.ranks[rank].committed[-1].index

    def committed_cut(self, indices: Mapping[int, int]) -> dict[int, CheckpointRecord]:
        """The committed records named by ``indices`` (rank -> index)."""
        out: dict[int, CheckpointRecord] = {}
        for rank, index in indices.items():
            found = [r for r in self.ranks[rank].committed if r.index == index]
            if not found:
                raise LinkViolation(f"rank {rank} has no committed checkpoint {index}")
            out[rank] = found[-1]
        return out

    def in_transit(self, cut: Mapping[int, CheckpointRecord]) -> dict[tuple[int, int], range]:
        """Per channel, the seqs sent inside ``cut`` and received outside it."""
        return {
            (src, dst): range(cut[dst].received.get(src, 0) + 1, cut[src].sent.get(dst, 0) + 1)
            for src, dst in sorted(self.edges)
        }

    # ----------------------------------------------------------------------------------------
    # The driver part: feed one event, carry out the actions.

    def feed(self, rank: int, event: Event) -> list[Action]:
        """Feed ``event`` to ``rank``'s protocol and carry out its actions in order."""
        state = self._live(rank)
        actions = state.protocol.handle(event)
        for action in actions:
            state.actions.append(action)
            self._execute(state, action)
        return actions

    def _execute(self, state: RankState, action: Action) -> None:
        rank = state.rank
        match action:
            case Transmit(send_id=send_id, dst=dst, payload=payload, piggyback=piggyback):
                if state.pending_sends.get(send_id, (None, None))[0] != dst:
                    raise LinkViolation(f"rank {rank}: Transmit of unknown send {send_id}->{dst}")
                del state.pending_sends[send_id]
                seq = state.sent.get(dst, 0) + 1
                state.sent[dst] = seq
                self.transmitted[(rank, dst)].append(payload)
                self.channels[(rank, dst)].append(
                    AppMessage(src=rank, dst=dst, seq=seq, payload=payload, piggyback=piggyback)
                )
            case SendControl(dst=dst, control=control):
                if (rank, dst) not in self.edges:
                    raise LinkViolation(f"rank {rank}: SendControl on missing channel ->{dst}")
                self.channels[(rank, dst)].append(
                    ControlMessage(src=rank, dst=dst, control=control)
                )
            case Deliver(src=src, seq=seq):
                message = state.arrived.pop((src, seq), None)
                if message is None:
                    raise LinkViolation(f"rank {rank}: Deliver of {src}:{seq} that is not here")
                if seq != state.received.get(src, 0) + 1:
                    raise LinkViolation(f"rank {rank}: Deliver of {src}:{seq} out of order")
                state.received[src] = seq
                state.delivered.append(message)
            case TakeCheckpoint(index=index, forced=forced, meta=meta):
                if index in state.taken or any(r.index == index for r in state.committed):
                    raise LinkViolation(f"rank {rank}: checkpoint {index} taken twice")
                state.taken[index] = state.record_now(index=index, forced=forced, meta=meta)
            case AttachToCheckpoint(index=index, key=key, meta=meta):
                record = self._taken(state, index, "AttachToCheckpoint")
                state.taken[index] = replace(record, attachments={**record.attachments, key: meta})
            case Commit(index=index):
                record = self._taken(state, index, "Commit")
                if index not in state.persisted:
                    raise LinkViolation(f"rank {rank}: Commit of unpersisted checkpoint {index}")
                del state.taken[index]
                state.committed.append(record)
            case DiscardCheckpoint(index=index):
                self._taken(state, index, "DiscardCheckpoint")
                del state.taken[index]
                state.persisted.discard(index)
                state.discarded.append(index)
            case CollectGarbage(before_index=before_index):
                state.collected_before = max(state.collected_before, before_index)
            case RecordChannelMessage(snapshot_id=snapshot_id, src=src, seq=seq):
                message = state.arrived.get((src, seq))
                if message is None:
                    raise LinkViolation(f"rank {rank}: recording {src}:{seq} that is not here")
                state.recorded.setdefault(repr(snapshot_id), []).append(message)
            case SnapshotComplete(snapshot_id=snapshot_id, index=index):
                state.snapshots_complete.append((snapshot_id, index))
            case SetTimer(name=name, delay_s=delay_s):
                state.timers[name] = delay_s
            case FireAppTimer(timer_id=timer_id):
                state.fired_app_timers.append(timer_id)
            case LogMessage(entry_id=entry_id, entry=entry):
                state.log_pending[entry_id] = entry
            case ReleaseOutput(output_id=output_id):
                state.released_output = max(state.released_output, output_id)
            case _:
                raise LinkViolation(f"rank {rank}: unknown action {action!r}")

    def _taken(self, state: RankState, index: int, what: str) -> CheckpointRecord:
        record = state.taken.get(index)
        if record is None:
            raise LinkViolation(f"rank {state.rank}: {what} of checkpoint {index} not pending")
        return record

    def _live(self, rank: int) -> RankState:
        state = self.ranks[rank]
        if not state.alive:
            raise LinkViolation(f"rank {rank} is crashed; recover() first")
        return state

    def _commit_resolved(self, view: RecoveryView, plan: RecoveryPlan) -> None:
        # What a driver does before restoring: commit the tentative checkpoints the plan names.
        for rank, indices in sorted(plan.commit.items()):
            tentative = {rec.index for rec in view.tentative.get(rank, ())}
            state = self.ranks[rank]
            for index in indices:
                if index not in tentative:
                    raise LinkViolation(f"plan commits rank {rank}'s non-tentative {index}")
                state.committed.append(state.taken.pop(index))
            state.committed.sort(key=lambda rec: rec.index)

    def _check_plan(self, view: RecoveryView, plan: RecoveryPlan) -> None:
        missing = view.failed - set(plan.restore)
        if missing:
            raise LinkViolation(f"plan leaves failed ranks {sorted(missing)} out of restore")
        cut: dict[int, CheckpointRecord] = dict(view.volatile)
        for rank, index in plan.restore.items():
            if 0 < index < self.ranks[rank].collected_before:
                raise LinkViolation(f"plan restores rank {rank} to collected checkpoint {index}")
            cut[rank] = self.committed_cut({rank: index})[rank]
        if not is_consistent(cut):
            raise LinkViolation(f"plan {plan.restore} yields an inconsistent cut")
        for rank, items in plan.replay.items():
            if rank not in plan.restore:
                raise LinkViolation(f"plan replays to rank {rank}, which it does not restore")
            received = dict(cut[rank].received)
            for item in items:
                if isinstance(item, Redelivery):
                    if item.seq != received.get(item.src, 0) + 1:
                        raise LinkViolation(
                            f"plan replays {item.src}:{item.seq} to {rank} out of order"
                        )
                    if item.seq > cut[item.src].sent.get(rank, 0):
                        raise LinkViolation(
                            f"plan replays {item.src}:{item.seq} not sent in the cut"
                        )
                    received[item.src] = item.seq

    def _restore(self, rank: int, index: int, replay: Sequence[Redelivery | TimerReplay]) -> None:
        state = self.ranks[rank]
        record = self.committed_cut({rank: index})[rank]
        old = state.protocol
        state.protocol = type(old).restored(
            record=record,
            n=self.n,
            inbound=old.inbound,
            outbound=old.outbound,
            options=old.options,
            incarnation=self.incarnation,
        )
        state.alive = True
        state.incarnation = self.incarnation
        state.sent = dict(record.sent)
        state.received = dict(record.received)
        # Checkpoints after the restored one belong to the undone future (as the simulator's
        # storage and the local ledger void them): they must not be recovery candidates again.
        state.committed = [r for r in state.committed if r.index <= index]
        state.arrived.clear()
        state.pending_sends.clear()
        state.taken.clear()
        state.persisted.clear()
        state.timers.clear()
        state.log_pending.clear()
        state.delivered = [m for m in state.delivered if m.seq <= state.received.get(m.src, 0)]
        # What the previous incarnation sent after the restored checkpoint is dropped (the new
        # incarnation sends it again); what it sent before is in transit for the cut and stays.
        for dst in old.outbound:
            del self.transmitted[(rank, dst)][state.sent.get(dst, 0) :]
            queue = self.channels[(rank, dst)]
            kept = [
                m for m in queue if isinstance(m, AppMessage) and m.seq <= state.sent.get(dst, 0)
            ]
            queue.clear()
            queue.extend(kept)
        for item in replay:
            if isinstance(item, Redelivery):
                seq = item.seq
                state.received[item.src] = seq
                state.delivered.append(
                    AppMessage(src=item.src, dst=rank, seq=seq, payload=item.payload)
                )
