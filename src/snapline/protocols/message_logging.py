"""Pessimistic, receiver-based message logging: only failed ranks roll back.

Theory of operation
-------------------
Assumptions: FIFO channels; piecewise-deterministic processes (a handler's effects depend only
on the state and the event it handles). The only nondeterminism a rank sees is *which event it
handles next*: an arriving message or a due app timer. Each such event is a *determinant*.

Logging before delivery. On ``MessageArrived`` the rank writes ``{"kind": "msg", src, seq,
payload}`` with ``LogMessage`` and holds the message; on ``AppTimerDue`` it writes ``{"kind":
"timer", name}`` and holds the timer. Entries are numbered ``k = 0, 1, 2, ...`` within a *life*
(the incarnation the rank was last started or restored in). Once the entry and all earlier ones
are stable (``MessageLogged``) the event is handed over (``Deliver`` / ``FireAppTimer``), so
events are handled exactly in log order and nothing is ever handled before it is stable. A
rank's *history* is the concatenation, life by life, of each life's contiguous stable prefix
``k = 0..``: a restored life starts by replaying the whole history before it, so every life's
entries extend the history at its end.

Checkpoints are local and independent (``CheckpointRequested`` -> ``TakeCheckpoint``, committed
as soon as persisted, older ones collected). The meta records the history position ``(life,
delivered)`` -- entries of the life handled so far -- so the log prefix before it is never needed
again (``log_truncate_before``), plus the sender-side retransmission buffer.

Retransmission buffer. A message the receiver has not logged exists only at its sender, so each
sender keeps every message it transmitted until the receiver acknowledges having logged it. The
receiver piggybacks ``{"ack": k}`` ("I logged your messages up to seq k") on each application
message back to the sender and, after ``ack_every`` unacknowledged deliveries (option, default 8),
sends it as a control message -- both only if the reverse channel exists: on a channel without
one the buffer is not trimmed (memory grows with the traffic on that channel).

Recovery (``plan_recovery``). Each failed rank restores its newest committed checkpoint and
replays, as ``Redelivery`` / ``TimerReplay`` items, its history after that checkpoint's
position; app timers fire only through the log during replay (``replay_timers_only``).
Survivors do not roll back: nothing is restored for them. The restored rank re-executes
deterministically, so it re-sends what it sent before (same seqs, counters come from the
checkpoint); receivers already have those and drop them by seq. Messages sent *to* a failed rank
that it never logged come from their sender's retransmission buffer (a survivor's volatile meta,
or a failed sender's restored checkpoint meta) as ``rearrive`` items: fed through the protocol,
they are logged before delivery like any arrival. With several failed ranks, messages between
them that the receiver logged come from its log; unlogged ones from the sender's restored buffer
(if it sent them before its checkpoint) or from its re-execution (if after). Survivors also get,
as ``rearrive``, what a failed sender's checkpoint buffer holds beyond what they handled
(messages sent before that checkpoint and lost in flight with the old incarnation; copies they
already hold are dropped by seq).

No orphans: every event a rank handled is stable in its log, so re-execution reaches the state
it had before the crash, having sent the same messages; every message another rank received from
it is re-sent identically. Output commit: an output depends only on handled events, all of them
already logged, so ``ReleaseOutput`` is immediate.

Costs: one synchronous stable write per received message and per timer before it is handled
(latency), one int piggybacked per message on channels with a reverse channel, sender buffers of
unacknowledged messages (stored with checkpoints), no coordination and no rollback of survivors.
Drivers must keep an app timer pending until ``FireAppTimer`` runs it (a checkpoint taken in
between keeps it) and never let a crashed rank's late log writes land after its recovery was
planned. Known gap: if a handler re-arms a timer between its ``AppTimerDue`` and its
``FireAppTimer``, the engine skips the stale firing but ``TimerReplay`` (which names only the
timer) would run it; exact replay then needs replay-stable timer ids in the determinant.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import assert_never

from snapline.errors import ConfigError, RecoveryError
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
    LogMessage,
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
    TimerReplay,
    Transmit,
    initial_record,
)

#: Entry ids and checkpoint indices of life L start at ``L << LIFE_SHIFT``: a restored rank
#: never reuses an id its previous life wrote.
LIFE_SHIFT = 32
#: Default number of deliveries from a sender after which an ack goes back as a control message.
ACK_EVERY_DEFAULT = 8


class Phase(enum.Enum):
    """A logging rank has one phase: it logs, delivers and checkpoints independently."""

    RUNNING = "running"


@dataclass(slots=True)
class _Held:
    """A determinant written to the log and not yet handed to the application."""

    entry_id: int
    src: int | None  # None: an app timer
    seq: int
    timer_id: int
    logged: bool = False


def history(log: Sequence[PlainData]) -> list[dict[str, PlainData]]:
    """A rank's history from its stable log: per life, the contiguous prefix ``k = 0..``.

    Entries past a gap in a life (written, but an earlier one never became stable before the
    crash) were never handled and are ignored; the message they hold comes back from its sender.
    """
    by_life: dict[int, dict[int, dict[str, PlainData]]] = {}
    for entry in log:
        if not isinstance(entry, dict) or entry.get("kind") not in ("msg", "timer"):
            raise RecoveryError(f"not a message-logging entry: {entry!r}; is the log mixed up?")
        life = by_life.setdefault(int(entry["life"]), {})
        life[int(entry["k"])] = entry
    out: list[dict[str, PlainData]] = []
    for life_number in sorted(by_life):
        entries = by_life[life_number]
        k = 0
        while k in entries:
            out.append(entries[k])
            k += 1
    return out


def history_position(meta: PlainData, log: Sequence[PlainData]) -> int:
    """How many history entries a checkpoint with this meta has handled (0 for the initial)."""
    if meta is None:
        return 0
    life, delivered = int(meta["life"]), int(meta["delivered"])
    history(log)  # validates every entry before they are sorted by life
    earlier = history([e for e in log if int(e["life"]) < life])
    mine = history([e for e in log if int(e["life"]) == life])
    if delivered > len(mine):
        raise RecoveryError(
            f"checkpoint of life {life} handled {delivered} entries but the log holds only "
            f"{len(mine)}: the message log is incomplete"
        )
    return len(earlier) + delivered


def truncatable_log_prefix(log: Sequence[PlainData], newest_committed: CheckpointRecord) -> int:
    """History entries before the newest committed checkpoint: never needed again."""
    return history_position(newest_committed.meta, log)


def _buffer_from_meta(meta: PlainData) -> dict[int, dict[int, object]]:
    buffer: dict[int, dict[int, object]] = {}
    if meta is None:
        return buffer
    for dst, seq, payload in meta["retransmit"]:
        buffer.setdefault(int(dst), {})[int(seq)] = payload
    return buffer


class PessimisticMessageLogging(Protocol):
    """One rank of receiver-based pessimistic message logging (see the module docstring)."""

    name = "message-logging"
    needs_fifo = True
    #: Sends are buffered and stamped with an ack: the send hook.
    message_hooks = frozenset({"sends"})

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
        ack_every = self.options.get("ack_every", ACK_EVERY_DEFAULT)
        if not isinstance(ack_every, int) or isinstance(ack_every, bool) or ack_every < 1:
            raise ConfigError(
                f"message-logging option ack_every must be an int >= 1, got {ack_every!r}"
            )
        self.ack_every = ack_every
        self.phase = Phase.RUNNING
        self.life = 0
        #: Next entry number ``k`` in this life; entries below ``delivered`` have been handled.
        self.next_k = 0
        self.delivered = 0
        self.held: list[_Held] = []
        self.held_by_id: dict[int, _Held] = {}
        #: Messages transmitted per destination (mirrors the driver's seq counters).
        self.sent: dict[int, int] = {}
        #: Highest seq handled (hence logged) per source: the ack this rank gives.
        self.handled_from: dict[int, int] = {}
        #: Highest seq that arrived per source (held or handled): later copies are duplicates.
        self.arrived_from: dict[int, int] = {}
        #: Ack last sent back per source, to decide when a control ack is due.
        self.acked_to: dict[int, int] = {}
        #: Retransmission buffer: dst -> seq -> payload, until dst acks having logged it.
        self.retransmit: dict[int, dict[int, object]] = {}
        self.next_index = 1
        self.pending_checkpoints: set[int] = set()
        self.newest_committed = 0
        self.stats.update(
            {
                "messages_logged": 0,
                "timers_logged": 0,
                "messages_held": 0,
                "piggyback_ints": 0,
                "retransmit_buffered": 0,
                "retransmit_buffer_max": 0,
                "outputs_released": 0,
                "duplicates_dropped": 0,
            }
        )

    # ----------------------------------------------------------------------------------------
    # Events.

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; return the actions to carry out, in order."""
        match event:
            case SendRequested(send_id=send_id, dst=dst, payload=payload):
                return self._send(send_id, dst, payload)
            case MessageArrived(src=src, seq=seq, payload=payload, piggyback=piggyback):
                self._take_ack(src, piggyback)
                if seq <= self.arrived_from.get(src, 0):
                    # Already held or handled (e.g. rearrived after a recovery, then the
                    # network copy came in): logging it twice would deliver it twice.
                    self.stats["duplicates_dropped"] += 1
                    return []
                self.arrived_from[src] = seq
                self.stats["messages_logged"] += 1
                self.stats["messages_held"] += 1
                entry = {"kind": "msg", "src": src, "seq": seq, "payload": copy.deepcopy(payload)}
                return [self._hold(entry, src=src, seq=seq, timer_id=0)]
            case AppTimerDue(timer_id=timer_id, name=name):
                self.stats["timers_logged"] += 1
                return [
                    self._hold({"kind": "timer", "name": name}, src=None, seq=0, timer_id=timer_id)
                ]
            case MessageLogged(entry_id=entry_id):
                held = self.held_by_id.get(entry_id)
                if held is None or held.logged:
                    raise self.error(self.phase, event, "no log write of this entry is pending")
                held.logged = True
                return self._release_logged()
            case ControlArrived(src=src, control=control):
                if not isinstance(control, dict) or "ack" not in control:
                    raise self.error(self.phase, event, "unknown control message")
                self._take_ack(src, control)
                return []
            case CheckpointRequested():
                return [self._take_checkpoint()]
            case CheckpointPersisted(index=index):
                return self._persisted(index, event)
            case CheckpointWriteFailed(index=index):
                if index not in self.pending_checkpoints:
                    raise self.error(self.phase, event, "no checkpoint with this index is pending")
                self.pending_checkpoints.discard(index)
                return [DiscardCheckpoint(index=index)]
            case OutputRequested(output_id=output_id):
                # Everything this rank handled is already stable (logged before delivery), so
                # the state that produced the output is recoverable now.
                self.stats["outputs_released"] += 1
                return [ReleaseOutput(output_id=output_id)]
            case PeerFailed() | RecoveryCompleted():
                # Survivors never roll back: their history and buffers stay valid.
                return []
            case TimerFired():
                raise self.error(self.phase, event, "message logging sets no protocol timers")
            case _:
                assert_never(event)

    def _send(self, send_id: int, dst: int, payload: object) -> list[Action]:
        piggyback = self.stamp_send(dst, payload)
        return [Transmit(send_id=send_id, dst=dst, payload=payload, piggyback=piggyback)]

    def stamp_send(self, dst: int, payload: object) -> PlainData:
        """Buffer the message for retransmission; piggyback an ack (the send hook)."""
        if dst not in self.outbound:
            raise self.error(self.phase, ("send", dst), f"no channel {self.rank}->{dst}")
        seq = self.sent.get(dst, 0) + 1
        self.sent[dst] = seq
        self.retransmit.setdefault(dst, {})[seq] = copy.deepcopy(payload)
        self._count_buffer()
        piggyback: PlainData = None
        if dst in self.inbound:
            piggyback = {"ack": self.handled_from.get(dst, 0)}
            self.acked_to[dst] = self.handled_from.get(dst, 0)
            self.stats["piggyback_ints"] += 1
        return piggyback

    def _hold(
        self, entry: dict[str, PlainData], *, src: int | None, seq: int, timer_id: int
    ) -> LogMessage:
        k = self.next_k
        self.next_k += 1
        entry_id = (self.life << LIFE_SHIFT) + k
        held = _Held(entry_id=entry_id, src=src, seq=seq, timer_id=timer_id)
        self.held.append(held)
        self.held_by_id[entry_id] = held
        return LogMessage(entry_id=entry_id, entry={**entry, "life": self.life, "k": k})

    def _release_logged(self) -> list[Action]:
        """Hand over held events from the front while stable: log order is delivery order."""
        actions: list[Action] = []
        while self.held and self.held[0].logged:
            held = self.held.pop(0)
            del self.held_by_id[held.entry_id]
            self.delivered += 1
            if held.src is None:
                actions.append(FireAppTimer(timer_id=held.timer_id))
                continue
            assert held.seq > self.handled_from.get(held.src, 0), "FIFO violated in the log"
            self.handled_from[held.src] = held.seq
            actions.append(Deliver(src=held.src, seq=held.seq))
            unacked = held.seq - self.acked_to.get(held.src, 0)
            if held.src in self.outbound and unacked >= self.ack_every:
                self.acked_to[held.src] = held.seq
                self.stats["control_messages"] += 1
                actions.append(SendControl(dst=held.src, control={"ack": held.seq}))
        return actions

    def _take_ack(self, src: int, data: PlainData) -> None:
        if not isinstance(data, dict) or "ack" not in data:
            return
        acked = int(data["ack"])
        buffer = self.retransmit.get(src)
        if buffer:
            for seq in [s for s in buffer if s <= acked]:
                del buffer[seq]
            self._count_buffer()

    def _count_buffer(self) -> None:
        size = sum(len(b) for b in self.retransmit.values())
        self.stats["retransmit_buffered"] = size
        self.stats["retransmit_buffer_max"] = max(self.stats["retransmit_buffer_max"], size)

    def _take_checkpoint(self) -> TakeCheckpoint:
        index = self.next_index
        self.next_index += 1
        self.pending_checkpoints.add(index)
        self.stats["checkpoints_basic"] += 1
        return TakeCheckpoint(index=index, forced=False, meta=self.volatile_meta())

    def _persisted(self, index: int, event: Event) -> list[Action]:
        if index not in self.pending_checkpoints:
            raise self.error(self.phase, event, "no checkpoint with this index is pending")
        self.pending_checkpoints.discard(index)
        if index < self.newest_committed:
            # A newer one already committed; recovery only ever uses the newest.
            return [DiscardCheckpoint(index=index)]
        self.newest_committed = index
        return [Commit(index=index), CollectGarbage(before_index=index)]

    # ----------------------------------------------------------------------------------------
    # Checkpoint meta and restoring.

    def volatile_meta(self) -> PlainData:
        """History position, retransmission buffer and acks, as a checkpoint now would store."""
        return {
            "life": self.life,
            "delivered": self.delivered,
            "log_truncate_before": [self.life, self.delivered],
            "retransmit": [
                [dst, seq, copy.deepcopy(payload)]
                for dst in sorted(self.retransmit)
                for seq, payload in sorted(self.retransmit[dst].items())
            ],
            "handled_from": [[src, seq] for src, seq in sorted(self.handled_from.items())],
        }

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
    ) -> PessimisticMessageLogging:
        """A new life from a committed checkpoint; the driver then replays the history after it.

        The replay does not pass through this object: entry numbers restart at 0 in the new life
        (``incarnation``), which ``history`` places after everything replayed.
        """
        if incarnation < 1:
            raise ConfigError(f"a restored rank needs an incarnation >= 1, got {incarnation}")
        proto = cls(rank=record.rank, n=n, inbound=inbound, outbound=outbound, options=options)
        proto.life = incarnation
        proto.sent = {int(d): int(c) for d, c in record.sent.items()}
        # A lower bound until new arrivals raise it (replay bypasses the protocol): acks stay safe.
        proto.handled_from = {int(s): int(c) for s, c in record.received.items()}
        proto.acked_to = dict(proto.handled_from)
        proto.arrived_from = dict(proto.handled_from)
        proto.retransmit = _buffer_from_meta(record.meta)
        proto._count_buffer()
        proto.next_index = max(record.index + 1, incarnation << LIFE_SHIFT)
        proto.newest_committed = record.index
        return proto

    # ----------------------------------------------------------------------------------------
    # Recovery planning (pure).

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        """Restore only failed ranks; replay their logs, then rearrive unlogged messages."""
        restore_records: dict[int, CheckpointRecord] = {}
        for rank in sorted(view.failed):
            committed = view.committed.get(rank) or [initial_record(rank)]
            restore_records[rank] = committed[-1]
        replay: dict[int, list[ReplayItem]] = {}
        handled: dict[int, dict[int, int]] = {}
        for rank, record in restore_records.items():
            log = view.message_logs.get(rank, [])
            position = history_position(record.meta, log)
            received = {int(s): int(c) for s, c in record.received.items()}
            items: list[ReplayItem] = []
            for entry in history(log)[position:]:
                if entry["kind"] == "timer":
                    items.append(TimerReplay(name=str(entry["name"])))
                    continue
                src, seq = int(entry["src"]), int(entry["seq"])
                # Strictly increasing, no gaps per channel: the log holds deliveries in order.
                assert seq == received.get(src, 0) + 1, (
                    f"rank {rank}'s log has {src}:{seq} after {received.get(src, 0)}"
                )
                received[src] = seq
                items.append(Redelivery(src=src, seq=seq, payload=entry["payload"]))
            replay[rank] = items
            handled[rank] = received
        rearrive: dict[int, list[Redelivery]] = {}
        for rank in restore_records:
            rearrive[rank] = cls._rearrivals(view, rank, handled[rank], restore_records)
        for rank, volatile in sorted(view.volatile.items()):
            # A survivor may lack messages a failed rank sent before its checkpoint (in flight
            # when it crashed, dropped with its incarnation): re-execution starts after them.
            received = {int(s): int(c) for s, c in volatile.received.items()}
            rearrive[rank] = cls._rearrivals(
                view, rank, received, restore_records, senders=restore_records
            )
        return RecoveryPlan(
            restore={rank: record.index for rank, record in restore_records.items()},
            replay=replay,
            replay_timers_only=frozenset(restore_records),
            rearrive={rank: items for rank, items in rearrive.items() if items},
        )

    @classmethod
    def _rearrivals(
        cls,
        view: RecoveryView,
        rank: int,
        handled: Mapping[int, int],
        restore_records: Mapping[int, CheckpointRecord],
        senders: Iterable[int] | None = None,
    ) -> list[Redelivery]:
        """Messages sent to ``rank`` beyond what it handled, from the senders' buffers."""
        out: list[Redelivery] = []
        for src in sorted(range(view.n) if senders is None else senders):
            if src == rank:
                continue
            sender = restore_records.get(src) or view.volatile.get(src)
            if sender is None:
                raise RecoveryError(f"rank {src} is neither failed nor has a volatile record")
            sent = int(sender.sent.get(rank, 0))
            first = handled.get(src, 0) + 1
            if sent < first:
                continue  # a failed sender re-sends the rest when it re-executes
            buffer = _buffer_from_meta(sender.meta).get(rank, {})
            for seq in range(first, sent + 1):
                if seq not in buffer:
                    raise RecoveryError(
                        f"message {src}->{rank} seq {seq} was never logged by {rank} and is "
                        f"not in {src}'s retransmission buffer: the message is lost"
                    )
                out.append(Redelivery(src=src, seq=seq, payload=buffer[seq]))
        return out
