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
counters) and *reported to one collector rank* (option ``gc_collector``, default 0) along a
shortest path; ranks in between forward reports without reading them. The collector keeps the
maximum consistent cut of the committed checkpoints it knows, the garbage line
(``recovery_line.advance_garbage_line``): every future recovery line is at or after it, and a
subset of the committed checkpoints gives a line at or before the true one, so acting on partial
knowledge is safe. That is also why a subclass may summarize only some of its checkpoints
(``gc_summarizes``): leaving one out can only hold the line back, never push it past a recovery
line (BCS keeps its forced checkpoints, up to one per arriving message, out of the reports). The
line only moves forward, so it is advanced incrementally over the checkpoints known above it
(knowledge below it is dropped), at bounded frequency: on the collector's own basic commits,
once n summaries were learned since the last time, and at once when a report says output waits
for the line. The collector then sends each rank concerned, down the shortest-path tree
(``reachability.collector_routes``), its line index and, per outbound channel, how many of its
messages the receiver's line checkpoint has received (one ``gc-line`` message per tree edge
carries a whole subtree's updates). A rank collects its own checkpoints below its line index
(``CollectGarbage``), drops those log entries, and releases output produced before its line
checkpoint (output commit: nothing before it can ever be rolled back). Ranks keep the highest
values they were sent, so updates that arrive late or twice do no harm.

Reports go up on each basic commit of their rank, or at once while its output waits. Summaries
carry the incarnation they were made in; after a recovery the collector forgets what it knew
above the line of the restored ranks (the line itself is at or before every recovery line, so
it stands), ignores summaries older than their rank's restore, and sends its next update to
every rank in full; a restored rank reports its restored checkpoint again. A restored collector
starts with an empty line and relearns from the reports that follow.

Without gc the log and the stored checkpoints grow without bound and output is held until the
job ends (the driver releases it then); so does everything of a rank that cannot reach the
collector or that the collector cannot reach (it is never told a line).

Costs. Each summarized checkpoint crosses the hops from its rank to the collector once (one
hop on a complete topology); each line update crosses the tree edges down to its rank, so a
round costs O(n x depth) small control messages, not the n x E summaries of flooding every
summary to every rank (that kept bcs on 100 ranks of a complete graph from finishing in 500
CPU-s, and fdas and 1,000-rank jobs with it). Collection (at the collector only): the
checkpoints known above the line and the ranks they reach. Lag: one report and one update
travel per collection, so collection and output commit trail a basic checkpoint by about one
checkpoint interval plus two trips across the tree. Log size: messages sent since the line,
stored again in each checkpoint.
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
    initial_record,
)
from snapline.protocols.reachability import routes_to_collector
from snapline.protocols.recovery_line import (
    advance_garbage_line,
    check_candidates,
    recovery_line,
)


class Phase(enum.Enum):
    """These protocols never block: one state."""

    RUNNING = enum.auto()


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """What a gc report says about one committed checkpoint."""

    rank: int
    index: int
    incarnation: int
    sent: Mapping[int, int]
    received: Mapping[int, int]

    def to_plain(self) -> PlainData:
        """As one entry of a ``gc-report`` control message."""
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


def _log_to_plain(log: SenderLog, cache: dict[int, tuple[int, int, PlainData]]) -> PlainData:
    """The log as stored in checkpoint meta, copying only the channels that changed.

    ``cache`` maps a channel to the entry last made for it and the (first, length) it was made
    at: a log only grows at its end and shrinks at its start, so an unchanged pair is an
    unchanged channel and its entry is shared (stored metas are never modified). Copying every
    channel at every checkpoint made the cost of a checkpoint grow with the whole log, which
    for fdas, with up to one forced checkpoint per message, was a large part of a run.
    """
    plain: dict[str, PlainData] = {}
    for dst, (first, payloads, piggybacks) in log.items():
        cached = cache.get(dst)
        if cached is None or cached[0] != first or cached[1] != len(payloads):
            cached = (first, len(payloads), [first, list(payloads), list(piggybacks)])
            cache[dst] = cached
        plain[str(dst)] = cached[2]
    return plain


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

    #: Sends are logged and stamped, arrivals read (and may force a checkpoint): both hooks.
    message_hooks = frozenset({"sends", "arrivals"})
    #: An application timer changes nothing the protocol tracks (``AppTimerDue`` ->
    #: ``[FireAppTimer]`` in every phase), so the engine fires it without the event and
    #: action objects: one per transfer of a timer-driven app such as the bank.
    passes_through = frozenset({"timers"})

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
        #: The log's channels as last stored in meta (``_log_to_plain``).
        self._plain_log: dict[int, tuple[int, int, PlainData]] = {}
        #: Taken, not yet persisted: index -> the counters it holds (for the gc summary), or
        #: None where the checkpoint is not summarized (``gc_summarizes``).
        self.pending: dict[int, tuple[dict[int, int], dict[int, int]] | None] = {}
        #: The rank that keeps the gc knowledge and computes the garbage line, and the routes
        #: to and from it.
        self.collector, self.routes = routes_to_collector(n=n, options=self.options)
        #: Own summaries (as plain entries) not yet reported to the collector.
        self.reports: list[PlainData] = []
        #: The restored checkpoint's summary, reported again once the recovery completes.
        self.restored_summary: Summary | None = None
        # -- At the collector only. --
        #: rank -> its garbage-line checkpoint as far as the collector knows (a rank missing
        #: here stands at checkpoint 0). Only moves forward.
        self.line: dict[int, CheckpointRecord] = {}
        #: rank -> committed checkpoints known above its ``line`` entry, by index.
        self.known: dict[int, dict[int, Summary]] = {}
        #: ``known[rank]`` as records, oldest first (rebuilt only for ranks that learned more).
        self._records: dict[int, list[CheckpointRecord]] = {}
        #: Summaries learned since the last collection (it runs at bounded frequency).
        self.unsettled = 0
        #: The next line update goes to every rank, not only to those whose line moved.
        self.update_all = False
        #: rank -> incarnation it was last restored in (older summaries are of a dead timeline).
        self.restored_in: dict[int, int] = {}
        #: Summaries of an incarnation this rank has not reached yet, held until it has.
        self.early: list[Summary] = []
        # -- At every rank. --
        #: Basic (not forced) checkpoints taken and not yet persisted: reports go on their commit.
        self.basic_pending: set[int] = set()
        #: This rank's line index: its checkpoints below it are collected.
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
                "gc_reports_forwarded": 0,
                "gc_updates_sent": 0,
                "gc_collections": 0,
            }
        )

    # ----------------------------------------------------------------------------------------
    # What subclasses decide.

    @abstractmethod
    def piggyback(self, dst: int) -> PlainData:
        """The data to piggyback on an application message to ``dst``."""

    @abstractmethod
    def forced_checkpoint_before(self, src: int, piggyback: PlainData) -> int | None:
        """The index of a forced checkpoint to take before delivering, or None."""

    @abstractmethod
    def absorb(self, src: int, piggyback: PlainData) -> None:
        """Update dependency data with the delivered message's piggyback (called right after
        ``forced_checkpoint_before`` for the same message)."""

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
                return self._recovered(restored, incarnation)
            case TimerFired() | MessageLogged():
                raise self.error(self.phase, event, "this protocol sets no timers and logs nothing")
            case _:
                assert_never(event)

    def _send(self, send_id: int, dst: int, payload: object) -> list[Action]:
        piggyback = self.stamp_send(dst, payload)
        return [Transmit(send_id=send_id, dst=dst, payload=payload, piggyback=piggyback)]

    def stamp_send(self, dst: int, payload: object) -> PlainData:
        """Log the message and return its piggyback (the send hook and ``_send``)."""
        seq = self.sent.get(dst, 0) + 1
        self.sent[dst] = seq
        channel = self.log.get(dst)
        if channel is None:  # not ``setdefault``: it would build the default on every send
            channel = self.log[dst] = (seq, [], [])
        first, payloads, piggybacks = channel
        assert first + len(payloads) == seq, "the log must be gapless"
        piggyback = self.piggyback(dst)
        payloads.append(payload)
        piggybacks.append(piggyback)
        self.stats["logged_messages"] += 1
        self.after_send(dst)
        return piggyback

    def _arrived(self, event: MessageArrived) -> list[Action]:
        src, seq = event.src, event.seq
        return [
            *self.admit_arrival(src, seq, event.payload, event.piggyback),
            Deliver(src=src, seq=seq),
        ]

    def admit_arrival(
        self, src: int, seq: int, payload: object, piggyback: PlainData
    ) -> Sequence[Action]:
        """Take an arrival (the arrival hook and ``_arrived``): the forced checkpoint to take
        before delivering it, if any."""
        if seq != self.received.get(src, 0) + 1:
            raise self.error(
                self.phase, ("arrival", src, seq), "message arrived out of channel order"
            )
        forced = self.forced_checkpoint_before(src, piggyback)
        take: Sequence[Action] = ()
        if forced is not None:
            self.stats["checkpoints_forced"] += 1
            take = (self._take(forced, forced=True),)
        self.absorb(src, piggyback)
        self.received[src] = seq
        return take

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
        return {"log": _log_to_plain(self.log, self._plain_log), **self.protocol_meta()}

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
            if self.is_collector:
                self._learn(summary)
            else:
                self.reports.append(summary.to_plain())
        # Report and collect on basic commits, or at once while output waits for the line:
        # forced commits (communication-induced) can come once per arriving message.
        waiting = self._output_waits()
        if not (basic or waiting):
            return actions
        if self.is_collector:
            if self.unsettled:
                actions.extend(self._collect())
        elif self.reports:
            actions.extend(self._report(waiting))
        return actions

    def _control(self, event: ControlArrived, src: int, control: PlainData) -> list[Action]:
        kind = control.get("kind") if isinstance(control, dict) else None
        if kind not in ("gc-report", "gc-line"):
            raise self.error(self.phase, event, "unknown control message")
        if not self.gc_enabled:
            return []
        assert isinstance(control, dict)
        try:
            if kind == "gc-report":
                return self._reported(control)
            return self._line_updates(control)
        except (TypeError, ValueError) as exc:
            raise self.error(self.phase, event, f"malformed {kind}: {exc}") from exc

    # ----------------------------------------------------------------------------------------
    # Garbage collection and output commit.

    @property
    def is_collector(self) -> bool:
        """Whether this rank keeps the gc knowledge."""
        return self.rank == self.collector

    def _output_waits(self) -> bool:
        """Output waits for a checkpoint that is already taken to fall below the line."""
        return any(i is not None for _, i in self.outputs)

    def _report(self, waiting: bool) -> list[Action]:
        """Send this rank's unreported summaries one hop toward the collector."""
        entries, self.reports = self.reports, []
        hop = self._hop_up()
        if hop is None:
            return []  # cannot reach the collector: nothing of this rank is ever collected
        self.stats["gc_summaries_sent"] += len(entries)
        self.stats["control_messages"] += 1
        control = {"kind": "gc-report", "summaries": entries, "waiting": waiting}
        return [SendControl(dst=hop, control=control)]

    def _hop_up(self) -> int | None:
        if self.routes is None:
            return self.collector if self.collector in self.outbound else None
        return self.routes.up.get(self.rank)

    def _reported(self, control: dict[str, PlainData]) -> list[Action]:
        """A report on its way to the collector: forward it, or learn from it."""
        entries = control.get("summaries")
        if not isinstance(entries, list | tuple):
            raise ValueError("no summaries list")
        if not self.is_collector:
            hop = self._hop_up()
            if hop is None:
                return []
            self.stats["gc_reports_forwarded"] += 1
            self.stats["control_messages"] += 1
            return [SendControl(dst=hop, control=control)]
        for entry in entries:
            # Look at the header first, parse the counters only of news.
            if not isinstance(entry, list | tuple) or len(entry) != 5:
                raise ValueError(f"a summary is [rank, index, incarnation, ...]: {entry!r}")
            incarnation = int(entry[2])
            if incarnation > self.incarnation:
                # Made after a recovery this rank has not heard of yet (the news of it comes
                # on another link): learning it now would mix the abandoned timeline with the
                # new one. Hold it until the recovery completes here.
                self.early.append(Summary.from_plain(entry))
            elif self._is_news(int(entry[0]), int(entry[1]), incarnation):
                self._learn(Summary.from_plain(entry))
        # Collect at bounded frequency: every n summaries learned (and on each own basic
        # commit), or at once while output waits for the line (output commit should not lag).
        waiting = bool(control.get("waiting")) or self._output_waits()
        if self.unsettled >= self.n or (self.unsettled and waiting):
            return self._collect()
        return []

    def _is_news(self, rank: int, index: int, incarnation: int) -> bool:
        """Whether a summary with this header would add to the collector's knowledge."""
        if incarnation < self.restored_in.get(rank, 0) or index <= self.floor(rank):
            return False
        known = self.known.get(rank)
        return known is None or index not in known

    def _learn(self, summary: Summary) -> None:
        """Add a summary to the collector's knowledge, if it is news."""
        if not 0 <= summary.rank < self.n:
            raise ValueError(f"a summary of rank {summary.rank} in a job of {self.n}")
        if not self._is_news(summary.rank, summary.index, summary.incarnation):
            return
        # Check each record once, here, against its neighbours (rather than every known record
        # on every advance of the line): ``known[rank]`` stays in index order, and reports of
        # one rank arrive in order (one FIFO path), so a new one is normally the top.
        rank = summary.rank
        known = self.known.get(rank, {})
        top = next(reversed(known), None)
        try:
            if top is None or summary.index > top:
                below = known[top].record() if top is not None else self._line_record(rank)
                check_candidates(rank, [below, summary.record()])
                known[summary.index] = summary
            else:
                known = dict(sorted({**known, summary.index: summary}.items()))
                check_candidates(
                    rank, [self._line_record(rank), *(s.record() for s in known.values())]
                )
        except RecoveryError as exc:
            raise ValueError(str(exc)) from None
        self.known[rank] = known
        self._records.pop(rank, None)
        self.unsettled += 1
        self.stats["gc_summaries"] += 1

    def _line_record(self, rank: int) -> CheckpointRecord:
        return self.line.get(rank) or initial_record(rank)

    def floor(self, rank: int) -> int:
        """The index of ``rank``'s garbage-line checkpoint as far as this rank knows.

        The collector knows every rank's; other ranks know their own only (0 for the rest).
        """
        record = self.line.get(rank)
        known = record.index if record is not None else 0
        return max(known, self.collected_before) if rank == self.rank else known

    def _collect(self) -> list[Action]:
        """At the collector: advance the garbage line over what was learned; tell the ranks."""
        self.unsettled = 0
        self.stats["gc_collections"] += 1
        newer: dict[int, list[CheckpointRecord]] = {}
        for rank, known in self.known.items():
            records = self._records.get(rank)
            if records is None:
                records = [summary.record() for summary in known.values()]
                self._records[rank] = records
            newer[rank] = records
        moved = advance_garbage_line(self.line, newer, checked=True)
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
        # Each rank concerned learns its line index (-1: unchanged) and, per outbound channel,
        # how many of its messages the receiver's line checkpoint holds (its log trim).
        changed = range(self.n) if self.update_all else sorted(moved)
        self.update_all = False
        indices: dict[int, int] = {}
        trims: dict[int, dict[int, int]] = {}
        for rank in changed:
            line_record = self.line.get(rank)
            if line_record is None:
                continue
            indices[rank] = line_record.index
            for sender, count in line_record.received.items():
                if count and sender != rank:
                    trims.setdefault(sender, {})[rank] = count
        own: tuple[int, dict[int, int]] | None = None
        entries: list[PlainData] = []
        for rank in sorted(indices.keys() | trims.keys()):
            index, trim = indices.get(rank, -1), trims.get(rank, {})
            if rank == self.rank:
                own = (index, trim)
            else:
                entries.append([rank, index, sorted(trim.items())])
        actions = self._send_updates(entries)
        if own is not None:
            actions.extend(self._apply_update(*own))
        return actions

    def _line_updates(self, control: dict[str, PlainData]) -> list[Action]:
        """Line updates on their way down the tree: apply this rank's, forward the others."""
        entries = control.get("updates")
        if not isinstance(entries, list | tuple):
            raise ValueError("no updates list")
        own: tuple[int, dict[int, int]] | None = None
        onward: list[PlainData] = []
        for entry in entries:
            if not isinstance(entry, list | tuple) or len(entry) != 3:
                raise ValueError(f"an update is [rank, line index, trims], not {entry!r}")
            if int(entry[0]) == self.rank:
                own = (int(entry[1]), {int(d): int(c) for d, c in entry[2]})
            else:
                onward.append(entry)
        actions = self._send_updates(onward)
        if own is not None:
            actions.extend(self._apply_update(*own))
        return actions

    def _send_updates(self, entries: list[PlainData]) -> list[Action]:
        """One ``gc-line`` message per next hop down the tree, with the updates behind it."""
        batches: dict[int, list[PlainData]] = {}
        for entry in entries:
            assert isinstance(entry, list)
            dst = int(entry[0])
            if self.routes is None:
                hop: int | None = dst if dst in self.outbound else None
            else:
                hop = self.routes.next_hop_down(self.rank, dst)
            if hop is not None:
                batches.setdefault(hop, []).append(entry)
        actions: list[Action] = []
        for hop, batch in sorted(batches.items()):
            actions.append(SendControl(dst=hop, control={"kind": "gc-line", "updates": batch}))
            self.stats["control_messages"] += 1
            self.stats["gc_updates_sent"] += len(batch)
        return actions

    def _apply_update(self, index: int, trims: Mapping[int, int]) -> list[Action]:
        """This rank's line moved to ``index`` (-1: unchanged); its receivers hold ``trims``."""
        actions: list[Action] = []
        if index > self.collected_before:
            self.collected_before = index
            actions.append(CollectGarbage(before_index=index))
        for dst, upto in trims.items():
            entry = self.log.get(dst)
            if entry is None:
                continue
            first, payloads, piggybacks = entry
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

    def _recovered(self, restored: frozenset[int], incarnation: int) -> list[Action]:
        self.incarnation = incarnation
        for rank in restored:
            self.restored_in[rank] = incarnation
            # Its checkpoints above the line may be abandoned ones; the line itself is at or
            # before every recovery line, so it still stands (module docstring).
            self.known.pop(rank, None)
            self._records.pop(rank, None)
        # A restored rank starts with no line: the next update tells every rank where it is.
        self.update_all = True
        early = [s for s in self.early if s.incarnation <= incarnation]
        self.early = [s for s in self.early if s.incarnation > incarnation]
        for held in early:
            self._learn(held)
        summary, self.restored_summary = self.restored_summary, None
        if summary is None or not self.gc_enabled:
            return self._collect() if self.unsettled else []
        # Its restored checkpoint is committed in the timeline that goes on: report it again.
        summary = Summary(
            rank=summary.rank,
            index=summary.index,
            incarnation=incarnation,
            sent=summary.sent,
            received=summary.received,
        )
        if self.is_collector:
            self._learn(summary)
            return self._collect()
        self.reports.append(summary.to_plain())
        return self._report(self._output_waits())

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
        proto.restored_summary = Summary(
            rank=record.rank,
            index=record.index,
            incarnation=incarnation,
            sent=dict(record.sent),
            received=dict(record.received),
        )
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
