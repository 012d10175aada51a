"""What uncoordinated and communication-induced checkpointing share (pure).

Theory of operation
-------------------
Each rank checkpoints without talking to the others: basic checkpoints on the driver's
schedule, plus forced checkpoints where a subclass's rule asks for one before a delivery
(``forced_checkpoint_before``). A checkpoint commits as soon as it is persisted. Subclasses
choose what application messages piggyback (``piggyback``) and the index of each checkpoint.

Sender log. The recovery line is a maximum consistent cut (``recovery_line``); its in-transit
messages must be re-sent, and only their sender has them. So every rank keeps, per outbound
channel, the messages it sent (payload and piggyback by sequence number: the driver numbers a
channel's messages 1, 2, ... in ``Transmit`` order, so the protocol knows each one's seq) and
stores the whole log in every checkpoint's ``meta`` and in ``volatile_meta``. ``plan_recovery``
reads the in-transit messages from the log of the sender's record in the cut and has the driver
feed them to the restored receiver *through its protocol* (``RecoveryPlan.rearrive``, with the
piggyback they were sent with): to the receiver they are new arrivals like any other, so its
counters stay exact and a communication-induced protocol absorbs their piggybacks and takes the
forced checkpoints they call for. Assumes FIFO channels (for the seq numbering and ordered
re-sending).

Garbage collection (option ``gc``, default on). Committed checkpoints are summarized (their
counters) and flooded to all ranks, in batches: on each commit of its own basic checkpoint a
rank sends one ``committed`` control message per outbound channel carrying the summaries it
learned since the previous one (its own included), except to ranks known to have them (the
summary's own rank, the ranks it came from, the ranks its own rank sent messages to: those are
its neighbours and get it from it directly) and those already below its garbage line. From the
summaries it knows, a rank keeps the maximum consistent cut of those committed checkpoints, its
garbage line (``recovery_line.advance_garbage_line``): every future recovery line is at or
after it, and a subset of the committed checkpoints gives a line at or before the true one, so
acting on partial knowledge is safe. That is also why a subclass may summarize only some of its
checkpoints (``gc_summarizes``): leaving one out can only hold the line back, never push it
past a recovery line. Communication-induced protocols use it to keep their forced checkpoints,
up to one per arriving message, out of the flood, summarizing only checkpoints that form
consistent cuts together (BCS: the first at or above each multiple of a stride). The line only
moves forward, so it is advanced incrementally over the checkpoints known above it (knowledge
below it is dropped), at bounded frequency: on each basic commit of its own, once n summaries
were learned since the last time, and at once while output waits for the line. It then collects
its own checkpoints below the line (``CollectGarbage``), drops log entries its receivers' line
checkpoints already received, and releases output produced before its own line checkpoint
(output commit: nothing before it can ever be rolled back). Summaries carry the incarnation
they were made in; a rank forgets what it knew above the line of ranks restored by a recovery
(the line itself is at or before every recovery line, so it stands), and ignores summaries
older than their restore, so checkpoints of an abandoned execution never count.

Without gc the log and the stored checkpoints grow without bound and output is held until
the job ends (the driver releases it then); knowledge of ranks that cannot reach this one
never arrives, which only delays collection.

Costs. Control messages: at most one per outbound channel per own basic checkpoint. Each
summary (a few ints per degree) crosses the channels from its rank once and is relayed only to
ranks its rank does not send to: about n copies on a dense topology, up to E on a sparse one,
for each summarized checkpoint. Flooding every checkpoint (forced ones included) over every
channel, n x E summaries per round, kept bcs on 100 ranks of a complete graph from finishing
in 500 CPU seconds.
Knowledge travels one hop per basic checkpoint, so collection and output commit lag by up to
the diameter times the checkpoint interval. Collection: the work of advancing the line is the
checkpoints known above it and the ranks they reach, not all n ranks. Log size: messages sent
since the line, stored again in each checkpoint.
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
    SendControl,
    SendRequested,
    TakeCheckpoint,
    TimerFired,
    Transmit,
)
from snapline.protocols.recovery_line import advance_garbage_line, recovery_line


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
        """As one entry of a ``committed`` control message."""
        return [
            self.rank,
            self.index,
            self.incarnation,
            sorted(self.sent.items()),
            sorted(self.received.items()),
        ]

    @classmethod
    def from_plain(cls, data: PlainData) -> Summary:
        """Parse an entry made by ``to_plain`` (``ValueError`` if it is not one)."""
        if not isinstance(data, list | tuple) or len(data) != 5:
            raise ValueError(
                f"a summary is [rank, index, incarnation, sent, received], not {data!r}"
            )
        rank, index, incarnation, sent, received = data
        return cls(
            rank=int(rank),
            index=int(index),
            incarnation=int(incarnation),
            sent={int(p): int(c) for p, c in sent},
            received={int(p): int(c) for p, c in received},
        )

    def record(self) -> CheckpointRecord:
        """The checkpoint as ``recovery_line`` sees it (counters only)."""
        return CheckpointRecord(
            rank=self.rank, index=self.index, forced=False, sent=self.sent, received=self.received
        )


SenderLog = dict[int, tuple[int, list[object], list[PlainData]]]
"""Per outbound channel: (seq of the first logged message, payloads, piggybacks from there on)."""


def _log_to_plain(log: SenderLog) -> PlainData:
    return {
        str(dst): [first, list(payloads), list(piggybacks)]
        for dst, (first, payloads, piggybacks) in log.items()
    }


def _log_from_plain(data: PlainData) -> SenderLog:
    log: SenderLog = {}
    for dst, entry in data.items():
        first, payloads, piggybacks = entry
        if len(piggybacks) != len(payloads):
            raise ValueError(
                f"sender log to rank {dst}: {len(payloads)} payloads, {len(piggybacks)} piggybacks"
            )
        log[int(dst)] = (int(first), list(payloads), list(piggybacks))
    return log


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
        #: Per outbound channel: (seq of the first logged message, payloads and piggybacks
        #: from there on).
        self.log: SenderLog = {}
        #: Taken, not yet persisted: index -> the counters it holds (for the gc summary), or
        #: None where the checkpoint is not summarized (``gc_summarizes``).
        self.pending: dict[int, tuple[dict[int, int], dict[int, int]] | None] = {}
        #: gc knowledge: rank -> its garbage-line checkpoint as far as this rank knows (a rank
        #: missing here stands at checkpoint 0). Only moves forward.
        self.line: dict[int, CheckpointRecord] = {}
        #: gc knowledge: rank -> committed checkpoints known above its ``line`` entry, by index.
        self.known: dict[int, dict[int, Summary]] = {}
        #: ``known[rank]`` as records, oldest first (rebuilt only for ranks that learned more).
        self._records: dict[int, list[CheckpointRecord]] = {}
        #: Summaries learned since the last collection (it runs at bounded frequency).
        self.unsettled = 0
        #: Summaries to relay with the next own commit: each as sent, and the rank it came from.
        #: Keyed by (rank, index); the set holds the ranks known to have it already: the ones
        #: it came from (first or again) and its own rank.
        self.outbox: dict[tuple[int, int], tuple[Summary, PlainData, set[int]]] = {}
        #: Basic (not forced) checkpoints taken and not yet persisted: their commit relays.
        self.basic_pending: set[int] = set()
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
                "gc_summarized": 0,
                "gc_summaries_sent": 0,
                "gc_collections": 0,
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

    def gc_summarizes(self, index: int, previous: int, *, forced: bool) -> bool:
        """Whether checkpoint ``index`` (taken after ``previous``) enters the gc knowledge.

        Any subset of the committed checkpoints gives a garbage line at or before the true
        one, so leaving checkpoints out is always safe; it only slows collection where the
        left-out ones were needed for a consistent cut. Default: every checkpoint.
        """
        return True

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
                self.basic_pending.discard(index)
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
                    # Its checkpoints above the line may be abandoned ones; the line itself is
                    # at or before every recovery line, so it still stands (module docstring).
                    self.known.pop(rank, None)
                    self._records.pop(rank, None)
                self.outbox = {
                    key: item for key, item in self.outbox.items() if not self._abandoned(item[0])
                }
                return []
            case TimerFired() | MessageLogged():
                raise self.error(self.phase, event, "this protocol sets no timers and logs nothing")
            case _:
                assert_never(event)

    def _send(self, send_id: int, dst: int, payload: object) -> list[Action]:
        seq = self.sent.get(dst, 0) + 1
        self.sent[dst] = seq
        first, payloads, piggybacks = self.log.setdefault(dst, (seq, [], []))
        assert first + len(payloads) == seq, "the log must be gapless"
        piggyback = self.piggyback(dst)
        payloads.append(payload)
        piggybacks.append(piggyback)
        self.stats["logged_messages"] += 1
        self.after_send(dst)
        return [Transmit(send_id=send_id, dst=dst, payload=payload, piggyback=piggyback)]

    def _arrived(self, event: MessageArrived) -> list[Action]:
        if event.seq != self.received.get(event.src, 0) + 1:
            raise self.error(self.phase, event, "message arrived out of channel order")
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
        previous, self.last_index = self.last_index, index
        summarized = self.gc_enabled and self.gc_summarizes(index, previous, forced=forced)
        self.pending[index] = (dict(self.sent), dict(self.received)) if summarized else None
        if not forced:
            self.basic_pending.add(index)
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
        basic = index in self.basic_pending
        self.basic_pending.discard(index)
        actions: list[Action] = [Commit(index=index)]
        if not self.gc_enabled:
            return actions
        if counters is not None:
            self.stats["gc_summarized"] += 1
            summary = Summary(
                rank=self.rank,
                index=index,
                incarnation=self.incarnation,
                sent=counters[0],
                received=counters[1],
            )
            self._learn(summary, summary.to_plain(), came_from=None)
        # Relay and collect on basic commits only: forced ones (communication-induced) can come
        # once per arriving message, and would make the flood as dense as the messages.
        if not basic:
            return actions
        actions.extend(self._relay())
        if self.unsettled:
            actions.extend(self._collect())
        return actions

    def _control(self, event: ControlArrived, src: int, control: PlainData) -> list[Action]:
        if not isinstance(control, dict) or control.get("kind") != "committed":
            raise self.error(self.phase, event, "unknown control message")
        if not self.gc_enabled:
            return []
        entries = control.get("summaries")
        try:
            if not isinstance(entries, list | tuple):
                raise ValueError("no summaries list")
            for entry in entries:
                # Most entries are old news (a summary arrives over every inbound channel):
                # look at the header first, parse the counters only of new ones.
                if not isinstance(entry, list | tuple) or len(entry) != 5:
                    raise ValueError(f"a summary is [rank, index, incarnation, ...]: {entry!r}")
                rank, index = int(entry[0]), int(entry[1])
                if self._is_news(rank, index, int(entry[2])):
                    self._learn(Summary.from_plain(entry), entry, came_from=src)
                elif (queued := self.outbox.get((rank, index))) is not None:
                    queued[2].add(src)  # src has it: do not send it there
        except (TypeError, ValueError) as exc:
            raise self.error(self.phase, event, f"malformed gc summaries: {exc}") from exc
        # Collect at bounded frequency: every n summaries learned (and on each own commit), or
        # at once while output waits for the line (output commit should not lag).
        waiting = any(i is not None for _, i in self.outputs)
        if self.unsettled >= self.n or (self.unsettled and waiting):
            return self._collect()
        return []

    # ----------------------------------------------------------------------------------------
    # Garbage collection and output commit.

    def _abandoned(self, summary: Summary) -> bool:
        """A checkpoint of an execution a recovery abandoned."""
        return summary.incarnation < self.restored_in.get(summary.rank, 0)

    def _is_news(self, rank: int, index: int, incarnation: int) -> bool:
        """Whether a summary with this header would add to the knowledge."""
        if incarnation < self.restored_in.get(rank, 0) or index <= self.floor(rank):
            return False
        known = self.known.get(rank)
        return known is None or index not in known

    def _learn(self, summary: Summary, plain: PlainData, *, came_from: int | None) -> bool:
        """Add a summary (``plain`` as received) to the knowledge and the outbox, if new."""
        if not self._is_news(summary.rank, summary.index, summary.incarnation):
            return False
        self.known.setdefault(summary.rank, {})[summary.index] = summary
        self._records.pop(summary.rank, None)
        self.unsettled += 1
        self.stats["gc_summaries"] += 1
        holders = {summary.rank} if came_from is None else {summary.rank, came_from}
        self.outbox[(summary.rank, summary.index)] = (summary, plain, holders)
        return True

    def _relay(self) -> list[Action]:
        """One control message per outbound channel with the summaries learned since the last.

        A summary is not sent to a rank known to have it (its own, and every rank it came
        from), nor once it is below the line (the line's own checkpoint is still sent: a rank
        that knows less may need it), nor relayed to a rank its own rank sent messages to:
        that rank is an outbound neighbour of the summary's rank, which sends it its own
        summaries directly. On a dense topology that leaves each summary crossing about one
        channel per rank instead of every channel.
        """
        outbox = [
            (summary, plain, holders)
            for summary, plain, holders in self.outbox.values()
            if summary.index >= self.floor(summary.rank)
        ]
        self.outbox = {}
        actions: list[Action] = []
        # Most destinations get the same batch (often just this rank's own summaries): one
        # control object per distinct batch, so the driver encodes and copies it once.
        batches: dict[tuple[int, ...], PlainData] = {}
        for dst in sorted(self.outbound):
            chosen = tuple(
                i
                for i, (summary, _, holders) in enumerate(outbox)
                if dst not in holders
                and (summary.rank == self.rank or summary.sent.get(dst, 0) == 0)
            )
            if not chosen:
                continue
            control = batches.get(chosen)
            if control is None:
                entries = [outbox[i][1] for i in chosen]
                control = batches[chosen] = {"kind": "committed", "summaries": entries}
            actions.append(SendControl(dst=dst, control=control))
            self.stats["control_messages"] += 1
            self.stats["gc_summaries_sent"] += len(chosen)
        return actions

    def floor(self, rank: int) -> int:
        """The index of ``rank``'s garbage-line checkpoint as far as this rank knows."""
        record = self.line.get(rank)
        return record.index if record is not None else 0

    def _collect(self) -> list[Action]:
        """Advance the garbage line over what was learned; collect, trim, release output."""
        self.unsettled = 0
        self.stats["gc_collections"] += 1
        newer: dict[int, list[CheckpointRecord]] = {}
        for rank, known in self.known.items():
            records = self._records.get(rank)
            if records is None:
                records = [known[i].record() for i in sorted(known)]
                self._records[rank] = records
            newer[rank] = records
        moved = advance_garbage_line(self.line, newer)
        for rank, record in moved.items():
            self.line[rank] = record
            # Knowledge at or below the line is never needed again.
            known = self.known[rank]
            for index in [i for i in known if i <= record.index]:
                del known[index]
            if known:
                self._records[rank] = [r for r in newer[rank] if r.index > record.index]
            else:
                del self.known[rank]
                self._records.pop(rank, None)
        actions: list[Action] = []
        own = self.floor(self.rank)
        if own > self.collected_before:
            self.collected_before = own
            actions.append(CollectGarbage(before_index=own))
        for dst, (first, payloads, piggybacks) in list(self.log.items()):
            receiver = self.line.get(dst)
            upto = receiver.received.get(self.rank, 0) if receiver is not None else 0
            drop = min(max(0, upto - first + 1), len(payloads))
            if drop:
                self.log[dst] = (first + drop, payloads[drop:], piggybacks[drop:])
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
        meta = record.meta if isinstance(record.meta, dict) else {}
        proto.log = _log_from_plain(meta.get("log", {}))
        proto.restore_meta(meta)
        return proto

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        """Restore the maximum consistent cut; re-send its in-transit messages from sender logs.

        They go to the restored receivers as ``rearrive`` items (through the protocol, each
        with its original piggyback), channel by channel in sequence order.
        """
        line = recovery_line(view)
        rearrive: dict[int, list[Redelivery]] = {}
        for (src, dst), seqs in sorted(line.in_transit.items()):
            if dst not in line.restore:
                continue  # a running receiver still gets them from the channel
            payloads, piggybacks = _logged(line.cut[src], dst, seqs, cls.name)
            rearrive.setdefault(dst, []).extend(
                Redelivery(src=src, seq=seq, payload=p, piggyback=pb)
                for seq, p, pb in zip(seqs, payloads, piggybacks, strict=True)
            )
        return RecoveryPlan(restore=dict(line.restore), rearrive=rearrive)


def _logged(
    record: CheckpointRecord, dst: int, seqs: range, protocol: str
) -> tuple[Sequence[object], Sequence[PlainData]]:
    """Payloads and piggybacks of messages ``seqs`` to ``dst`` in ``record``'s sender log."""
    meta = record.meta if isinstance(record.meta, dict) else {}
    try:
        log = _log_from_plain(meta.get("log", {}))
    except (TypeError, ValueError) as exc:
        raise RecoveryError(
            f"{protocol}: rank {record.rank}'s sender log (checkpoint {record.index}) is not "
            f"[first, payloads, piggybacks] per channel ({exc}); the checkpoint meta is damaged "
            "or was written by an older snapline"
        ) from None
    first, payloads, piggybacks = log.get(dst, (record.sent.get(dst, 0) + 1, [], []))
    if seqs.start < first or seqs.stop > first + len(payloads):
        raise RecoveryError(
            f"{protocol}: rank {record.rank}'s sender log (checkpoint {record.index}) holds "
            f"messages {first}..{first + len(payloads) - 1} to rank {dst}, but recovery needs "
            f"{seqs.start}..{seqs.stop - 1}; the log was collected too early or the checkpoint "
            "meta is damaged"
        )
    window = slice(seqs.start - first, seqs.stop - first)
    return payloads[window], piggybacks[window]
