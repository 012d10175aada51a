"""The contract between checkpointing protocols and the drivers that run them.

Theory of operation
-------------------
A protocol is a pure state machine, one object per rank. A driver (the simulator, the local
multi-process runtime, later MPI or Ray) owns time, I/O and randomness; it turns what happens
into *events* (past-tense facts) and feeds them to ``Protocol.handle``, which returns *actions*
(imperative commands) the driver carries out in order. Nothing in ``snapline.protocols`` may
import I/O, threads, clocks or global randomness (a test enforces it).

Data that crosses processes -- piggybacks, control messages, checkpoint metadata -- is *plain
data*: None, bool, int, float, str, bytes, and lists, tuples and str-keyed dicts of those.
Drivers encode it with msgpack, count its bytes, and store it with checkpoints.

Channels. The driver gives every application message on channel ``src -> dst`` a sequence
number (1, 2, 3, ...) and delivers each message at most once, in FIFO order, at the channel
level. Drivers count, per rank, the messages sent on each outbound channel and delivered from
each inbound channel; those counters are saved with every checkpoint (``CheckpointRecord``), so
consistency of a cut is a property of counters: a cut is consistent iff for every channel
``received[dst][src] <= sent[src][dst]``. Messages ``received+1 .. sent`` on a channel are in
transit for that cut and must be re-delivered by recovery.

The life of a message::

    app ctx.send(dst, p) -> SendRequested(send_id, dst, p)
        protocol -> Transmit(send_id, dst, p, piggyback)   (now or later: blocking protocols hold)
    driver assigns seq, sends; at dst: MessageArrived(src, seq, p, piggyback)
        protocol -> [TakeCheckpoint(forced=True)], [RecordChannelMessage], Deliver(src, seq)
        (Deliver may come later: pessimistic logging waits for MessageLogged)

The life of a checkpoint::

    CheckpointRequested (basic: the driver's interval) or a protocol's own decision
        protocol -> TakeCheckpoint(index, forced, meta)
    driver captures process.state() *at this point in the action list* together with its
        counters and pending timers, writes it, and later feeds CheckpointPersisted(index)
    protocol -> Commit(index) / DiscardCheckpoint(index) / SnapshotComplete(...)

A checkpoint becomes part of stable storage -- eligible for recovery -- only when the protocol
says ``Commit(index)``. Protocols without a commit phase commit as soon as it is persisted.
``AttachToCheckpoint`` adds plain data to a checkpoint after it was taken (Chandy-Lamport's
recorded channel state, which is known only when the markers are in).

Recovery. When ranks fail, the driver gathers a ``RecoveryView`` (the committed checkpoint
records of every rank, the volatile record of each surviving rank, and the stable message logs)
and calls the protocol class's pure ``plan_recovery``. The ``RecoveryPlan`` names the checkpoint
each rank restores (``None`` = restart from the initial state; ranks left out keep running) and
the messages to deliver to each restored rank, in order, before any new message. The driver
then rebuilds each restored rank's protocol object with ``Protocol.restored(...)`` and tells
every live rank, restored ones included, ``RecoveryCompleted``. Messages in flight from a
previous incarnation of a restored rank are dropped by the driver (every recovery starts a new
incarnation), unless that rank re-executes exactly (``replay_timers_only``): it sends the same
messages again. Duplicates are dropped by sequence number.

Output commit. ``ctx.output(x)`` becomes ``OutputRequested(output_id)``; output ids count the
rank's outputs in its surviving history (they are saved with checkpoints). The driver releases
the output when the protocol says ``ReleaseOutput(output_id)``: only once no recovery can roll
the rank back to before that output -- not merely once a checkpoint after it exists -- since a
re-execution after a rollback need not produce the same output under the same id (it may
receive in another order). Releasing is idempotent by id: drivers hand each id to the world
once and skip ids already released, so a protocol may release again what a restored
checkpoint covers. What a protocol still holds when the job ends is released then: nothing can
roll the job back any more.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

from snapline.errors import ConfigError, ProtocolError

PlainData: TypeAlias = Any
"""None, bool, int, float, str, bytes, and lists/tuples/str-keyed dicts of those."""


# --------------------------------------------------------------------------------------------
# Events: past-tense facts the driver reports to one rank's protocol object.


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRequested:
    """The application called ``ctx.send(dst, payload)``; ``send_id`` is unique per rank."""

    send_id: int
    dst: int
    payload: object


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageArrived:
    """An application message arrived (in channel order) and awaits delivery."""

    src: int
    seq: int
    payload: object
    piggyback: PlainData


@dataclass(frozen=True, slots=True, kw_only=True)
class ControlArrived:
    """A protocol control message (marker, request, vote, ...) arrived from ``src``."""

    src: int
    control: PlainData


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointRequested:
    """The driver's checkpoint schedule fired on this rank (a basic checkpoint is due)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointPersisted:
    """The checkpoint taken with ``TakeCheckpoint(index)`` is durably written."""

    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointWriteFailed:
    """Writing checkpoint ``index`` failed (disk full, I/O error); it will never persist."""

    index: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerFired:
    """A protocol timer set with ``SetTimer(name)`` expired."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AppTimerDue:
    """An application timer is due; the protocol answers ``FireAppTimer(timer_id)``."""

    timer_id: int
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageLogged:
    """The entry written with ``LogMessage(entry_id)`` is on stable storage."""

    entry_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputRequested:
    """The application called ``ctx.output(...)``; ``output_id`` is unique per rank."""

    output_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerFailed:
    """The driver detected that ``rank`` crashed (before recovery starts)."""

    rank: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryCompleted:
    """A recovery finished; ``restored`` ranks were rolled back. Sent to every live rank.

    ``committed`` lists this rank's checkpoints that the recovery committed on the protocol's
    behalf (``RecoveryPlan.commit``: in-doubt checkpoints whose round the planner found
    decided); the driver made those commits durable before sending this event.
    """

    restored: frozenset[int]
    incarnation: int
    committed: frozenset[int] = frozenset()


Event: TypeAlias = (
    SendRequested
    | MessageArrived
    | ControlArrived
    | CheckpointRequested
    | CheckpointPersisted
    | CheckpointWriteFailed
    | TimerFired
    | AppTimerDue
    | MessageLogged
    | OutputRequested
    | PeerFailed
    | RecoveryCompleted
)


# --------------------------------------------------------------------------------------------
# Actions: imperative commands the protocol gives its driver.


@dataclass(frozen=True, slots=True, kw_only=True)
class Transmit:
    """Send the application message of ``send_id`` with this piggyback."""

    send_id: int
    dst: int
    payload: object
    piggyback: PlainData = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SendControl:
    """Send a protocol control message to ``dst`` (FIFO with application messages)."""

    dst: int
    control: PlainData


@dataclass(frozen=True, slots=True, kw_only=True)
class Deliver:
    """Hand the arrived message ``(src, seq)`` to the application's ``on_message``."""

    src: int
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TakeCheckpoint:
    """Capture the process state now and write it as this rank's checkpoint ``index``.

    ``meta`` is the protocol's own data stored with the checkpoint and returned in its
    ``CheckpointRecord`` (dependency vectors, sender logs, ...).
    """

    index: int
    forced: bool = False
    meta: PlainData = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachToCheckpoint:
    """Store ``meta`` under ``key`` with checkpoint ``index`` (before it commits).

    Drivers make the attachment durable before carrying out the protocol's next action: a
    protocol may tell other ranks about it right after.
    """

    index: int
    key: str
    meta: PlainData


@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    """Checkpoint ``index`` is now part of stable storage and may be used by recovery.

    Drivers make the commit durable before carrying out the protocol's next action (a
    protocol's following messages may announce it to other ranks).
    """

    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscardCheckpoint:
    """Checkpoint ``index`` will never commit (two-phase abort); its data may be deleted."""

    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectGarbage:
    """Committed checkpoints with index below ``before_index`` can never be needed again."""

    before_index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordChannelMessage:
    """Record the arrived message ``(src, seq)`` as channel state of snapshot ``snapshot_id``."""

    snapshot_id: PlainData
    src: int
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotComplete:
    """This rank's part of global snapshot ``snapshot_id`` is complete (markers all in)."""

    snapshot_id: PlainData
    index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTimer:
    """Fire ``TimerFired(name)`` after ``delay_s`` seconds (driver time)."""

    name: str
    delay_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class FireAppTimer:
    """Run the application's ``on_timer`` for ``timer_id`` now."""

    timer_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LogMessage:
    """Write a message-log entry to stable storage; answer with ``MessageLogged(entry_id)``."""

    entry_id: int
    entry: PlainData


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseOutput:
    """The output of ``output_id`` (and every earlier one) may be released to the world."""

    output_id: int


Action: TypeAlias = (
    Transmit
    | SendControl
    | Deliver
    | TakeCheckpoint
    | AttachToCheckpoint
    | Commit
    | DiscardCheckpoint
    | CollectGarbage
    | RecordChannelMessage
    | SnapshotComplete
    | SetTimer
    | FireAppTimer
    | LogMessage
    | ReleaseOutput
)


# --------------------------------------------------------------------------------------------
# Recovery: records of stored checkpoints, the view a planner sees, and the plan it returns.


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointRecord:
    """What the driver stored with one local checkpoint, minus the application state.

    ``index`` 0 is the initial state (every rank has it implicitly, before ``on_start``).
    ``sent[dst]`` / ``received[src]`` are the channel counters at the moment it was taken.
    ``meta`` is ``TakeCheckpoint.meta``; ``attachments`` hold ``AttachToCheckpoint`` data.
    """

    rank: int
    index: int
    forced: bool
    sent: Mapping[int, int]
    received: Mapping[int, int]
    meta: PlainData = None
    attachments: Mapping[str, PlainData] = field(default_factory=dict)


def initial_record(rank: int) -> CheckpointRecord:
    """The implicit checkpoint 0: the state before ``on_start``, all counters zero."""
    return CheckpointRecord(rank=rank, index=0, forced=False, sent={}, received={})


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryView:
    """Everything a recovery planner may look at.

    ``committed[r]`` lists rank r's committed checkpoints, oldest first (index 0 included).
    ``volatile[r]`` is the current state of a surviving rank as a record (``index`` = -1,
    ``meta`` = ``Protocol.volatile_meta()``); failed ranks are absent from it.
    ``message_logs[r]`` are rank r's stable ``LogMessage`` entries in write order.
    ``tentative[r]`` lists rank r's checkpoints that are persisted but neither committed nor
    discarded (and not voided by a restore), oldest first: a protocol whose commit decision
    can be cut short by a failure (two-phase) resolves them here.
    """

    n: int
    failed: frozenset[int]
    committed: Mapping[int, Sequence[CheckpointRecord]]
    volatile: Mapping[int, CheckpointRecord]
    tentative: Mapping[int, Sequence[CheckpointRecord]] = field(default_factory=dict)
    message_logs: Mapping[int, Sequence[PlainData]] = field(default_factory=dict)
    edges: frozenset[tuple[int, int]] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class Redelivery:
    """Message ``(src, seq)`` with ``payload`` for a rank, after a recovery.

    As a replay item it goes straight to the restored rank's application; as a ``rearrive``
    item it arrives through the protocol, with the ``piggyback`` it was first sent with.
    """

    src: int
    seq: int
    payload: object
    piggyback: PlainData = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerReplay:
    """Run the restored rank's ``on_timer(name)`` at this point of its replay."""

    name: str


ReplayItem: TypeAlias = Redelivery | TimerReplay


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryPlan:
    """The outcome of ``plan_recovery``.

    ``restore[r]`` is the checkpoint index rank r restores (0 = initial state); ranks not in
    ``restore`` keep running untouched. Failed ranks must all be in ``restore``.
    ``replay[r]`` is delivered to restored rank r in order before any new message; during
    replay the driver fires app timers only through ``TimerReplay`` items if
    ``replay_timers_only[r]`` is true (exact replay for message logging).
    A rank in ``replay_timers_only`` re-executes *exactly*: it sends again, with the same seqs
    and payloads, everything its previous incarnation sent. So other ranks keep what they got
    from it (delivered, held or early; no orphan even if they received more than the restored
    record's ``sent``) and drop re-sent copies by seq; consistency of such a plan is checked
    after the replay, on live counters, not on the restored record.
    ``commit[r]`` names tentative checkpoints of rank r (from ``RecoveryView.tentative``) the
    driver commits, durably, before it restores anything: ``restore`` may name them, and rank
    r, if it is not restored, learns it from ``RecoveryCompleted.committed``.
    """

    restore: Mapping[int, int]
    commit: Mapping[int, Sequence[int]] = field(default_factory=dict)
    replay: Mapping[int, Sequence[ReplayItem]] = field(default_factory=dict)
    replay_timers_only: frozenset[int] = frozenset()
    #: ``rearrive[r]``: messages the driver feeds rank r (restored or surviving) *through its
    #: protocol*, as ``MessageArrived(src, seq, payload, piggyback)`` in this order, after the
    #: replays and before any new arrival. Unlike replay items (history re-executed, handed
    #: straight to the application) these are new to the rank, so a logging protocol logs them
    #: before delivering them (message logging: sender-buffered messages the receiver never
    #: logged), and a communication-induced one absorbs their piggybacks and takes the forced
    #: checkpoints they call for (in-transit messages re-sent from sender logs). Drivers dedupe
    #: them by seq like any arrival.
    rearrive: Mapping[int, Sequence[Redelivery]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# The protocol base class.


class Protocol(ABC):
    """One rank's protocol state machine.

    Call order, as every driver follows it:

    1. ``__init__`` (fresh job) or ``restored(...)`` (after a rollback) -- never both.
    2. ``handle(event)`` any number of times; carry out the returned actions in order before
       feeding the next event to this rank.
    3. ``volatile_meta()`` whenever the driver builds a ``RecoveryView``.

    ``plan_recovery`` is a pure class-level function over stored records.
    """

    #: The protocol's name on the command line and in reports (``chandy-lamport``).
    name: ClassVar[str]
    #: Whether the protocol needs FIFO channels.
    needs_fifo: ClassVar[bool] = True
    #: Which ranks the driver's basic checkpoint schedule (``CheckpointRequested``) fires on:
    #: ``"all"`` -- every rank, each on its own schedule (independent checkpoints) -- or
    #: ``"one"`` -- rank 0 only, once per interval (a coordinated protocol that starts one
    #: global checkpoint per request; firing it on all n ranks would start n of them).
    checkpoint_requests: ClassVar[str] = "all"
    #: The per-message events this protocol's ``handle`` passes straight through, keeping no
    #: state and counting nothing for them; the engine then carries those out without
    #: building the event and action objects (its fast path). Members:
    #: ``"sends"`` -- ``SendRequested`` -> ``[Transmit(same send_id, dst, payload)]``, no
    #: piggyback; ``"arrivals"`` -- ``MessageArrived`` -> ``[Deliver(src, seq)]``;
    #: ``"timers"`` -- ``AppTimerDue`` -> ``[FireAppTimer(timer_id)]``; ``"outputs"`` --
    #: ``OutputRequested`` -> ``[ReleaseOutput(output_id)]``. Every other event still goes
    #: through ``handle``. The declaration counts only on the class that defines ``handle``:
    #: a subclass that overrides ``handle`` must declare it again to keep it.
    passes_through: ClassVar[frozenset[str]] = frozenset()
    #: The per-message events this protocol takes through a *hook* instead of ``handle``,
    #: because all it does with them is stamp or read them; the engine then builds no event
    #: or action object for the message. Members: ``"sends"`` -- ``stamp_send(dst, payload)``
    #: updates the protocol and returns the piggyback, and the engine transmits at once, as
    #: ``SendRequested`` -> ``[Transmit(send_id, dst, payload, piggyback)]``; ``"arrivals"``
    #: -- ``admit_arrival(src, seq, payload, piggyback)`` updates the protocol and returns
    #: the actions to carry out before the delivery, as ``MessageArrived`` -> ``[*actions,
    #: Deliver(src, seq)]``. ``handle`` must still take those events to the same effect (the
    #: in-memory link and unit tests use it; the simulator checks that runs with and without
    #: the hooks are identical). Declared, like ``passes_through``, on the class that defines
    #: ``handle``; an event may not be in both.
    message_hooks: ClassVar[frozenset[str]] = frozenset()
    #: What the protocol promises about the pattern of checkpoints and messages it produces,
    #: which the simulator verifies on every run: ``"no-useless-checkpoint"`` -- no checkpoint
    #: lies on a Z-cycle; ``"rdt"`` -- rollback-dependency trackability: every Z-path between
    #: checkpoints is doubled by a causal path (so no Z-cycle either); None -- no promise.
    checkpoint_pattern: ClassVar[str | None] = None

    def __init__(
        self,
        *,
        rank: int,
        n: int,
        inbound: frozenset[int],
        outbound: frozenset[int],
        options: Mapping[str, PlainData] | None = None,
    ) -> None:
        if not 0 <= rank < n:
            raise ConfigError(f"rank {rank} is outside 0..{n - 1}")
        self.rank = rank
        self.n = n
        self.inbound = inbound
        self.outbound = outbound
        self.options: Mapping[str, PlainData] = dict(options or {})
        #: Counters for reports: names are stable across protocols where they mean the same.
        self.stats: dict[str, int] = {
            "checkpoints_basic": 0,
            "checkpoints_forced": 0,
            "control_messages": 0,
        }

    @abstractmethod
    def handle(self, event: Event) -> list[Action]:
        """Feed one event; return the actions to carry out, in order."""

    @classmethod
    @abstractmethod
    def restored(
        cls,
        *,
        record: CheckpointRecord,
        n: int,
        inbound: frozenset[int],
        outbound: frozenset[int],
        options: Mapping[str, PlainData] | None = None,
        incarnation: int,
    ) -> Protocol:
        """Rebuild this rank's protocol object from the checkpoint it rolled back to."""

    def volatile_meta(self) -> PlainData:
        """The protocol's current data, as it would be stored with a checkpoint taken now."""
        return None

    def stamp_send(self, dst: int, payload: object) -> PlainData:
        """Hook for ``"sends"`` (``message_hooks``): take the send; return its piggyback."""
        raise NotImplementedError(f"{type(self).__name__} declares no send hook")

    def admit_arrival(
        self, src: int, seq: int, payload: object, piggyback: PlainData
    ) -> Sequence[Action]:
        """Hook for ``"arrivals"`` (``message_hooks``): take the arrival; return the actions
        to carry out before the engine delivers it (usually none)."""
        raise NotImplementedError(f"{type(self).__name__} declares no arrival hook")

    @classmethod
    @abstractmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        """Decide which ranks roll back to which checkpoints and what they replay."""

    def error(self, state: enum.Enum | str, event: object, why: str) -> ProtocolError:
        """Build the ``ProtocolError`` for an event this state cannot take."""
        state_name = state.name if isinstance(state, enum.Enum) else state
        return ProtocolError(
            protocol=self.name, rank=self.rank, state=state_name, event=event, why=why
        )


def is_consistent(records: Mapping[int, CheckpointRecord]) -> bool:
    """True iff no channel has more messages received than sent in this cut (no orphan)."""
    for dst, rec in records.items():
        for src, got in rec.received.items():
            sender = records.get(src)
            if sender is not None and got > sender.sent.get(dst, 0):
                return False
    return True
