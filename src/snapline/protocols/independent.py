"""What uncoordinated and communication-induced checkpointing share (pure).

Theory of operation
-------------------
Each rank checkpoints without talking to the others: basic checkpoints on the driver's
schedule, plus forced checkpoints where a subclass's rule asks for one before a delivery
(``forced_checkpoint_before``). A checkpoint commits as soon as it is persisted. Subclasses
choose what application messages piggyback (``piggyback``) and the index of each checkpoint.

Sender log. The recovery line is a maximum consistent cut (``recovery_line``); its in-transit
messages must be re-sent, and only their sender has them. So every rank keeps, per outbound
channel, the messages it sent (payload by sequence number: the driver numbers a channel's
messages 1, 2, ... in ``Transmit`` order, so the protocol knows each one's seq) and stores the
whole log in every checkpoint's ``meta`` and in ``volatile_meta``. ``plan_recovery`` reads the
in-transit payloads from the log of the sender's record in the cut. Assumes FIFO channels (for
the seq numbering and ordered replay).

Garbage collection (option ``gc``, default on). On commit, a rank floods a summary of the
checkpoint (its counters) to its outbound neighbours as a control message; every rank relays
summaries it has not seen. From the summaries it knows, a rank computes the maximum consistent
cut of those committed checkpoints (``recovery_line.garbage_line``): every future recovery line
is at or after it, and a subset of the committed checkpoints gives a line at or before the true
one, so acting on partial knowledge is safe. It then collects its own checkpoints below the
line (``CollectGarbage``), drops log entries its receivers' line checkpoints already received,
and releases output produced before its own line checkpoint (output commit: nothing before it
can ever be rolled back). Summaries carry the incarnation they were made in; a rank forgets
what it knew of ranks restored by a recovery, and ignores summaries older than their restore,
so checkpoints of an abandoned execution never count. After a restore the driver replays
in-transit messages to the application without telling the protocol, so a restored rank's
counters may lag on an inbound channel until the next message on it arrives (the gap shows the
replay); checkpoints taken meanwhile are not gossiped (wrong counters could make the line
unsafe). Their piggybacks are not absorbed either, and ``RecoveryPlan.rearrive`` cannot carry
them yet: see ``communication_induced``.

Without gc the log and the stored checkpoints grow without bound and output is never
released; knowledge of ranks that cannot reach this one never arrives, which only delays
collection.

Costs per checkpoint commit: one control message per channel (flooding). Log size: messages
sent since the line, stored again in each checkpoint.
"""

from __future__ import annotations

import enum
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import assert_never

from snapline.errors import RecoveryError
from snapline.protocols.base import (
    Action,
    AppTimerDue,
    CheckpointPersisted,
    CheckpointRecord,
    CheckpointRequested,
    CheckpointWriteFailed,
    CollectGarbage,
    Commit,
    ControlArrived,
    Deliver,
    DiscardCheckpoint,
    Event,
    FireAppTimer,
    MessageArrived,
    MessageLogged,
    OutputRequested,
    PeerFailed,
    PlainData,
    Protocol,
    RecoveryCompleted,
    RecoveryPlan,
    RecoveryView,
    Redelivery,
    ReleaseOutput,
    ReplayItem,
    SendControl,
    SendRequested,
    TakeCheckpoint,
    TimerFired,
    Transmit,
    initial_record,
)
from snapline.protocols.recovery_line import garbage_line, recovery_line


class Phase(enum.Enum):
    """These protocols never block: one state."""

    RUNNING = enum.auto()


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """What the gc flood says about one committed checkpoint."""

    rank: int
    index: int
    incarnation: int
    sent: Mapping[int, int]
    received: Mapping[int, int]

    def to_plain(self) -> PlainData:
        """As a control message."""
        return {
            "kind": "committed",
            "rank": self.rank,
            "index": self.index,
            "incarnation": self.incarnation,
            "sent": sorted(self.sent.items()),
            "received": sorted(self.received.items()),
        }

    @classmethod
    def from_plain(cls, data: PlainData) -> Summary:
        """Parse a control message made by ``to_plain``."""
        return cls(
            rank=int(data["rank"]),
            index=int(data["index"]),
            incarnation=int(data["incarnation"]),
            sent={int(p): int(c) for p, c in data["sent"]},
            received={int(p): int(c) for p, c in data["received"]},
        )


def _log_to_plain(log: Mapping[int, tuple[int, list[object]]]) -> PlainData:
    return {str(dst): [first, list(payloads)] for dst, (first, payloads) in log.items()}


def _log_from_plain(data: PlainData) -> dict[int, tuple[int, list[object]]]:
    return {int(dst): (int(first), list(payloads)) for dst, (first, payloads) in data.items()}


class IndependentCheckpointing(Protocol):
    """Base of ``Uncoordinated``, ``BCS`` and ``FDAS``: see the module docstring."""

    def __init__(
        self,
        *,
        rank: int,
        n: int,
        inbound: frozenset[int],
        outbound: frozenset[int],
        options: Mapping[str, PlainData] | None = None,
    ) -> None:
        super().__init__(rank=rank, n=n, inbound=inbound, outbound=outbound, options=options)
        self.gc_enabled = bool(self.options.get("gc", True))
        self.phase = Phase.RUNNING
        self.incarnation = 0
        #: Index of the newest checkpoint taken (0 = the initial state).
        self.last_index = 0
        self.sent: dict[int, int] = {}
        self.received: dict[int, int] = {}
        #: Inbound channels whose ``received`` may lag the driver's: after a restore the driver
        #: replays in-transit messages straight to the application, unseen by the protocol.
        self.uncertain: set[int] = set()
        #: Per outbound channel: (seq of the first logged message, payloads from there on).
        self.log: dict[int, tuple[int, list[object]]] = {}
        #: Taken, not yet persisted: index -> the counters it holds (for the gc summary), or
        #: None where they may be wrong (``uncertain``): such a checkpoint is never gossiped.
        self.pending: dict[int, tuple[dict[int, int], dict[int, int]] | None] = {}
        #: gc knowledge: rank -> committed checkpoints known, by index.
        self.known: dict[int, dict[int, Summary]] = {}
        #: rank -> incarnation it was last restored in (older summaries are of a dead timeline).
        self.restored_in: dict[int, int] = {}
        self.collected_before = 0
        #: Outputs waiting for their state to become unrollbackable: (output_id, index or None).
        self.outputs: list[tuple[int, int | None]] = []
        self.stats.update(
            {
                "piggyback_ints": 0,
                "logged_messages": 0,
                "log_trimmed": 0,
                "gc_summaries": 0,
            }
        )

    # ----------------------------------------------------------------------------------------
    # What subclasses decide.

    @abstractmethod
    def piggyback(self, dst: int) -> PlainData:
        """The data to piggyback on an application message to ``dst``."""

    @abstractmethod
    def forced_checkpoint_before(self, event: MessageArrived) -> int | None:
        """The index of a forced checkpoint to take before delivering, or None."""

    @abstractmethod
    def absorb(self, event: MessageArrived) -> None:
        """Update dependency data with the delivered message's piggyback."""

    @abstractmethod
    def basic_index(self) -> int:
        """The index of the next basic checkpoint."""

    def after_checkpoint(self, index: int) -> None:
        """A checkpoint ``index`` was just taken (reset per-interval data)."""

    def after_send(self, dst: int) -> None:
        """An application message to ``dst`` was just transmitted."""

    def protocol_meta(self) -> dict[str, PlainData]:
        """Subclass data stored with each checkpoint (restored by ``restore_meta``)."""
        return {}

    def restore_meta(self, meta: Mapping[str, PlainData]) -> None:
        """Put back what ``protocol_meta`` stored."""

    # ----------------------------------------------------------------------------------------
    # Events.

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; return the actions to carry out, in order."""
        match event:
            case SendRequested(send_id=send_id, dst=dst, payload=payload):
                return self._send(send_id, dst, payload)
            case MessageArrived():
                return self._arrived(event)
            case CheckpointRequested():
                self.stats["checkpoints_basic"] += 1
                return [self._take(self.basic_index(), forced=False)]
            case CheckpointPersisted(index=index):
                return self._persisted(event, index)
            case CheckpointWriteFailed(index=index):
                if index not in self.pending:
                    raise self.error(self.phase, event, "no such checkpoint is being written")
                del self.pending[index]
                # Output it was to cover waits for the next checkpoint instead.
                self.outputs = [(o, None if i == index else i) for o, i in self.outputs]
                return [DiscardCheckpoint(index=index)]
            case ControlArrived(src=src, control=control):
                return self._control(event, src, control)
            case AppTimerDue(timer_id=timer_id):
                return [FireAppTimer(timer_id=timer_id)]
            case OutputRequested(output_id=output_id):
                self.outputs.append((output_id, None))
                return self._release_output()
            case PeerFailed():
                return []
            case RecoveryCompleted(restored=restored, incarnation=incarnation):
                self.incarnation = incarnation
                for rank in restored:
                    self.restored_in[rank] = incarnation
                    self.known.pop(rank, None)
                return []
            case TimerFired() | MessageLogged():
                raise self.error(self.phase, event, "this protocol sets no timers and logs nothing")
            case _:
                assert_never(event)

    def _send(self, send_id: int, dst: int, payload: object) -> list[Action]:
        seq = self.sent.get(dst, 0) + 1
        self.sent[dst] = seq
        first, payloads = self.log.setdefault(dst, (seq, []))
        assert first + len(payloads) == seq, "the log must be gapless"
        payloads.append(payload)
        self.stats["logged_messages"] += 1
        piggyback = self.piggyback(dst)
        self.after_send(dst)
        return [Transmit(send_id=send_id, dst=dst, payload=payload, piggyback=piggyback)]

    def _arrived(self, event: MessageArrived) -> list[Action]:
        expected = self.received.get(event.src, 0) + 1
        # A gap is legal only after a restore: the driver replayed the messages in between.
        if event.seq < expected or (event.seq > expected and event.src not in self.uncertain):
            raise self.error(self.phase, event, "message arrived out of channel order")
        self.uncertain.discard(event.src)
        # Count the replayed gap now: a forced checkpoint below must record it.
        self.received[event.src] = event.seq - 1
        actions: list[Action] = []
        forced = self.forced_checkpoint_before(event)
        if forced is not None:
            self.stats["checkpoints_forced"] += 1
            actions.append(self._take(forced, forced=True))
        self.absorb(event)
        self.received[event.src] = event.seq
        actions.append(Deliver(src=event.src, seq=event.seq))
        return actions

    def _take(self, index: int, *, forced: bool) -> TakeCheckpoint:
        assert index > self.last_index, "checkpoint indices must increase"
        self.last_index = index
        self.pending[index] = None if self.uncertain else (dict(self.sent), dict(self.received))
        self.outputs = [(o, index if i is None else i) for o, i in self.outputs]
        meta = self._meta()
        self.after_checkpoint(index)
        return TakeCheckpoint(index=index, forced=forced, meta=meta)

    def _meta(self) -> PlainData:
        return {"log": _log_to_plain(self.log), **self.protocol_meta()}

    def volatile_meta(self) -> PlainData:
        """The sender log and dependency data as of now."""
        return self._meta()

    def _persisted(self, event: CheckpointPersisted, index: int) -> list[Action]:
        if index not in self.pending:
            raise self.error(self.phase, event, "no such checkpoint is being written")
        counters = self.pending.pop(index)
        actions: list[Action] = [Commit(index=index)]
        if self.gc_enabled and counters is not None:
            summary = Summary(
                rank=self.rank,
                index=index,
                incarnation=self.incarnation,
                sent=counters[0],
                received=counters[1],
            )
            actions.extend(self._learn(summary, came_from=None))
        return actions

    def _control(self, event: ControlArrived, src: int, control: PlainData) -> list[Action]:
        if not isinstance(control, dict) or control.get("kind") != "committed":
            raise self.error(self.phase, event, "unknown control message")
        if not self.gc_enabled:
            return []
        return self._learn(Summary.from_plain(control), came_from=src)

    # ----------------------------------------------------------------------------------------
    # Garbage collection and output commit.

    def _learn(self, summary: Summary, *, came_from: int | None) -> list[Action]:
        if summary.incarnation < self.restored_in.get(summary.rank, 0):
            return []  # a checkpoint of an execution a recovery abandoned
        known = self.known.setdefault(summary.rank, {})
        if summary.index in known or summary.index < self.floor(summary.rank):
            return []
        known[summary.index] = summary
        self.stats["gc_summaries"] += 1
        actions: list[Action] = []
        for dst in sorted(self.outbound - {came_from} if came_from is not None else self.outbound):
            actions.append(SendControl(dst=dst, control=summary.to_plain()))
            self.stats["control_messages"] += 1
        actions.extend(self._collect())
        return actions

    def floor(self, rank: int) -> int:
        """The oldest index of ``rank`` still kept in the gc knowledge."""
        known = self.known.get(rank)
        return min(known) if known else 0

    def _collect(self) -> list[Action]:
        committed: dict[int, list[CheckpointRecord]] = {}
        for rank in range(self.n):
            records = [initial_record(rank)]
            records.extend(
                CheckpointRecord(
                    rank=rank, index=s.index, forced=False, sent=s.sent, received=s.received
                )
                for _, s in sorted(self.known.get(rank, {}).items())
            )
            committed[rank] = records
        line = garbage_line(committed)
        # Knowledge older than the line is never needed again.
        for rank, before in line.before_index.items():
            known = self.known.get(rank)
            if known:
                for index in [i for i in known if i < before]:
                    del known[index]
        actions: list[Action] = []
        own = line.before_index[self.rank]
        if own > self.collected_before:
            self.collected_before = own
            actions.append(CollectGarbage(before_index=own))
        for dst, (first, payloads) in list(self.log.items()):
            upto = line.received.get((self.rank, dst), 0)
            drop = min(max(0, upto - first + 1), len(payloads))
            if drop:
                self.log[dst] = (first + drop, payloads[drop:])
                self.stats["log_trimmed"] += drop
        actions.extend(self._release_output())
        return actions

    def _release_output(self) -> list[Action]:
        releasable = [o for o, i in self.outputs if i is not None and i <= self.collected_before]
        if not releasable:
            return []
        self.outputs = [(o, i) for o, i in self.outputs if o not in releasable]
        return [ReleaseOutput(output_id=max(releasable))]

    # ----------------------------------------------------------------------------------------
    # Recovery.

    @classmethod
    def restored(
        cls,
        *,
        record: CheckpointRecord,
        n: int,
        inbound: frozenset[int],
        outbound: frozenset[int],
        options: Mapping[str, PlainData] | None = None,
        incarnation: int,
    ) -> IndependentCheckpointing:
        """This rank as of checkpoint ``record``, in a new incarnation."""
        proto = cls(rank=record.rank, n=n, inbound=inbound, outbound=outbound, options=options)
        proto.incarnation = incarnation
        # Knowledge of other ranks made before this recovery may describe an abandoned
        # execution of a rank restored with this one: start over from fresh summaries.
        proto.restored_in = dict.fromkeys(range(n), incarnation)
        proto.last_index = record.index
        proto.sent = dict(record.sent)
        proto.received = dict(record.received)
        proto.uncertain = set(inbound)
        meta = record.meta if isinstance(record.meta, dict) else {}
        proto.log = _log_from_plain(meta.get("log", {}))
        proto.restore_meta(meta)
        return proto

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        """Restore the maximum consistent cut; re-send its in-transit messages from sender logs."""
        line = recovery_line(view)
        replay: dict[int, list[ReplayItem]] = {}
        for (src, dst), seqs in sorted(line.in_transit.items()):
            if dst not in line.restore:
                continue  # a running receiver still gets them from the channel
            payloads = _logged(line.cut[src], dst, seqs, cls.name)
            replay.setdefault(dst, []).extend(
                Redelivery(src=src, seq=seq, payload=p)
                for seq, p in zip(seqs, payloads, strict=True)
            )
        return RecoveryPlan(restore=dict(line.restore), replay=replay)


def _logged(record: CheckpointRecord, dst: int, seqs: range, protocol: str) -> Sequence[object]:
    meta = record.meta if isinstance(record.meta, dict) else {}
    log = _log_from_plain(meta.get("log", {}))
    first, payloads = log.get(dst, (record.sent.get(dst, 0) + 1, []))
    if seqs.start < first or seqs.stop > first + len(payloads):
        raise RecoveryError(
            f"{protocol}: rank {record.rank}'s sender log (checkpoint {record.index}) holds "
            f"messages {first}..{first + len(payloads) - 1} to rank {dst}, but recovery needs "
            f"{seqs.start}..{seqs.stop - 1}; the log was collected too early or the checkpoint "
            "meta is damaged"
        )
    return payloads[seqs.start - first : seqs.stop - first]
