"""One rank of a job: the glue between a user's ``Process``, its ``Protocol`` and a driver.

Theory of operation
-------------------
Every driver (the simulator, the local multi-process runtime, later MPI or Ray) runs each rank
through one ``RankEngine``, so the process/protocol glue exists exactly once. The engine holds
the user's ``Process``, the rank's ``Protocol`` object, the channel counters (``sent[dst]``,
``received[src]``), the messages that arrived but were not yet delivered, the pending
application timers and outputs, and a seeded ``random.Random`` for ``ctx.random``. It *is* the
``Context`` the process sees. Everything that touches the world goes through an ``EnginePort``
that the driver implements; the engine never reads a clock or does I/O itself.

Application calls (``ctx.send``, ``ctx.output``) made inside a handler are queued and turned
into protocol events (``SendRequested``, ``OutputRequested``) only after the handler returns,
so a protocol never sees a process half-way through a handler and a checkpoint never captures
a half-finished handler. If a ``TakeCheckpoint`` is executed while some of those requests are
still queued, or while the protocol holds sends it has not transmitted yet, they are saved
with the checkpoint (``extras["requests"]``) and issued again after a restore, in order: the
state says the process sent them, so the restored rank must send them.

Arrivals are re-sequenced per channel here: a message that arrives ahead of its predecessor
waits in ``_early`` until the gap fills, so the protocol sees ``MessageArrived`` in sequence
order even on a reordering network; duplicates (``seq`` at or below what already arrived) are
dropped. ``Deliver(src, seq)`` must follow channel order; the engine asserts it.

What a checkpoint holds besides ``process.state()``: the counters (in the
``CheckpointRecord``) and ``extras`` -- plain data: the ``random`` state, the pending app
timers as remaining delays, the done flag, queued/held requests and the id counters.
Protocols keep recorded channel state themselves (``RecordChannelMessage`` is only checked
here) and store it with ``AttachToCheckpoint``.

Restoring: ``RankEngine.restored(...)`` rebuilds an engine from a ``CheckpointImage`` (index 0
is a fresh engine followed by ``start()``: the initial state is the one before ``on_start``),
then ``resume(replay, timers_only)`` re-arms timers, re-issues saved requests and delivers the
plan's replay items before anything new.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, assert_never

from snapline.errors import ConfigError, ProtocolError
from snapline.protocols.base import (
    Action,
    AppTimerDue,
    AttachToCheckpoint,
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
    RecordChannelMessage,
    RecoveryCompleted,
    Redelivery,
    ReleaseOutput,
    ReplayItem,
    SendControl,
    SendRequested,
    SetTimer,
    SnapshotComplete,
    TakeCheckpoint,
    TimerFired,
    TimerReplay,
    Transmit,
)
from snapline.protocols.base import Protocol as CheckpointProtocol
from snapline.runtime.process import Process, State

_SEND = 0
_OUTPUT = 1
#: ``_requests`` inside a handler that has not queued anything yet (never appended to).
_NOTHING_QUEUED: deque[tuple[Any, ...]] = deque(maxlen=0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointImage:
    """Everything one local checkpoint holds: the record, the app state, the engine extras.

    ``state`` is what ``process.state()`` returned at the ``TakeCheckpoint`` action; drivers
    must copy or encode it before the process runs again. ``extras`` is plain data.
    """

    record: CheckpointRecord
    state: State
    extras: Mapping[str, Any]


class JobTally:
    """Job-wide counts shared by the engines of one driver (termination detection).

    ``requested`` counts ``ctx.send`` calls and ``delivered`` counts ``on_message`` calls in
    the surviving history; the job can end only when they are equal.
    """

    __slots__ = ("delivered", "requested")

    def __init__(self) -> None:
        self.requested = 0
        self.delivered = 0


class EnginePort(Protocol):
    """The I/O a driver performs for its engines. ``rank`` is always the calling engine's."""

    def now(self) -> float:
        """Driver time in seconds (simulated or monotonic)."""
        ...

    def transmit(self, src: int, dst: int, seq: int, payload: object, piggyback: PlainData) -> None:
        """Send application message ``seq`` on channel ``src -> dst``."""
        ...

    def send_control(self, src: int, dst: int, control: PlainData) -> None:
        """Send a protocol control message (any ``dst``; FIFO with messages on a channel)."""
        ...

    def persist_checkpoint(self, rank: int, image: CheckpointImage) -> None:
        """Write a checkpoint; later call ``checkpoint_persisted`` or ``..._write_failed``."""
        ...

    def attach_to_checkpoint(self, rank: int, index: int, key: str, meta: PlainData) -> None:
        """Store ``meta`` under ``key`` with checkpoint ``index``."""
        ...

    def commit_checkpoint(self, rank: int, index: int) -> None:
        """Make persisted checkpoint ``index`` eligible for recovery."""
        ...

    def discard_checkpoint(self, rank: int, index: int) -> None:
        """Checkpoint ``index`` will never commit; drop it."""
        ...

    def collect_garbage(self, rank: int, before_index: int) -> None:
        """Committed checkpoints below ``before_index`` are no longer needed."""
        ...

    def set_protocol_timer(self, rank: int, name: str, delay_s: float) -> None:
        """Call ``protocol_timer_fired(name)`` after ``delay_s`` (re-setting replaces)."""
        ...

    def set_app_timer(self, rank: int, timer_id: int, name: str, delay_s: float) -> None:
        """Call ``app_timer_due(timer_id, name)`` after ``delay_s``."""
        ...

    def log_message(self, rank: int, entry_id: int, entry: PlainData) -> None:
        """Write a message-log entry to stable storage; later ``message_logged(entry_id)``."""
        ...

    def release_output(self, rank: int, first_id: int, items: list[object]) -> int:
        """Hand outputs ``first_id, first_id+1, ...`` to the outside world.

        Idempotent by id: an id released before (a restored checkpoint's output, released
        again by its protocol) is skipped, so the world sees each id once. Returns how many
        of ``items`` the world had not seen: only the port knows what an earlier incarnation
        of the rank released.
        """
        ...

    def delivered(self, rank: int, src: int, seq: int, payload: object) -> None:
        """Message ``(src, seq)`` is about to be handed to ``on_message`` (checkers, traces)."""
        ...

    def rank_finished(self, rank: int) -> None:
        """The process called ``ctx.finish()``."""
        ...

    def record(self, rank: int, kind: str, **fields: object) -> None:
        """Append a trace event (called only when the engine's ``trace`` flag is on)."""
        ...


class RankEngine:
    """Runs one rank: implements ``Context`` for the process and executes protocol actions."""

    __slots__ = (
        "_arrived",
        "_arrived_upto",
        "_defer_timers",
        "_due",
        "_early",
        "_fast_arrivals",
        "_fast_outputs",
        "_fast_sends",
        "_fast_timers",
        "_held_since",
        "_hook_arrivals",
        "_hook_sends",
        "_in_replay",
        "_last_delivered",
        "_outputs",
        "_pending",
        "_purged",
        "_requests",
        "_resume_requests",
        "_resume_timers",
        "_stats",
        "_tally",
        "_timer_id",
        "_timers",
        "_unsent",
        "done",
        "inbound",
        "inbound_set",
        "incarnation",
        "messages_delivered",
        "messages_sent",
        "n",
        "outbound",
        "outbound_set",
        "output_id",
        "port",
        "process",
        "protocol",
        "random",
        "rank",
        "received",
        "requested_sends",
        "send_id",
        "sent",
        "trace",
    )

    def __init__(
        self,
        *,
        rank: int,
        n: int,
        inbound: Iterable[int],
        outbound: Iterable[int],
        process: Process,
        protocol: CheckpointProtocol,
        port: EnginePort,
        rng: random.Random,
        tally: JobTally | None = None,
        trace: bool = False,
        incarnation: int = 0,
    ) -> None:
        self.rank = rank
        self.n = n
        self.inbound: tuple[int, ...] = tuple(sorted(inbound))
        self.outbound: tuple[int, ...] = tuple(sorted(outbound))
        self.inbound_set = frozenset(self.inbound)
        self.outbound_set = frozenset(self.outbound)
        self.process = process
        self.protocol = protocol
        # The per-message events the protocol passes straight through skip ``handle``
        # (see ``Protocol.passes_through``).
        fast = declared_pass_through(type(protocol))
        self._fast_sends = "sends" in fast
        self._fast_arrivals = "arrivals" in fast
        self._fast_timers = "timers" in fast
        self._fast_outputs = "outputs" in fast
        # Per-message events the protocol stamps or reads through a hook instead of ``handle``
        # (see ``Protocol.message_hooks``).
        hooks = declared_message_hooks(type(protocol))
        self._hook_sends = "sends" in hooks
        self._hook_arrivals = "arrivals" in hooks
        self.port = port
        self.random = rng
        self.trace = trace
        self.incarnation = incarnation
        self._tally = tally if tally is not None else JobTally()
        self.sent: dict[int, int] = dict.fromkeys(self.outbound, 0)
        self.received: dict[int, int] = dict.fromkeys(self.inbound, 0)
        self._arrived_upto: dict[int, int] = dict.fromkeys(self.inbound, 0)
        self._arrived: dict[tuple[int, int], object] = {}
        self._early: dict[int, dict[int, tuple[object, PlainData]]] = {}
        self._last_delivered: dict[int, tuple[int, object]] = {}
        self._purged: set[int] = set()
        self._unsent: dict[int, tuple[int, object]] = {}
        #: When each send the protocol held (did not transmit at once) was requested: the
        #: blocking time a protocol imposes is the sum of the holds.
        self._held_since: dict[int, float] = {}
        self._outputs: dict[int, object] = {}
        self._timers: dict[str, tuple[int, float]] = {}
        self._due: dict[int, str] = {}
        self._requests: deque[tuple[Any, ...]] | None = None
        self._pending: list[deque[tuple[Any, ...]]] = []
        self._resume_timers: list[tuple[str, float]] = []
        self._resume_requests: list[tuple[Any, ...]] = []
        self._defer_timers = False
        self._in_replay = False
        self._timer_id = 0
        self.send_id = 0
        self.output_id = 0
        self.requested_sends = 0
        self.done = False
        self.messages_sent = 0
        self.messages_delivered = 0
        self._stats: dict[str, int] = {
            "checkpoints_basic": 0,
            "checkpoints_forced": 0,
            "control_messages": 0,
            "replayed": 0,
            "outputs_released": 0,
            "blocking_us": 0,
        }

    @property
    def stats(self) -> dict[str, int]:
        """Counts kept by the engine itself, whatever the protocol reports."""
        return {
            "messages_sent": self.messages_sent,
            "messages_delivered": self.messages_delivered,
            **self._stats,
        }

    @property
    def app_timers_pending(self) -> int:
        """Application timers set and not yet run (one held by the protocol counts too).

        A job is not over while a finished rank still has one: ``ctx.finish()`` ends a rank's
        own work, not the timers it set.
        """
        return len(self._timers)

    # ----------------------------------------------------------------------------------------
    # Context: what the process calls.

    def send(self, dst: int, payload: object) -> None:
        """Queue an application message to ``dst`` (handled when the handler returns)."""
        if dst not in self.outbound_set:
            raise ConfigError(
                f"rank {self.rank} has no channel to rank {dst}; send only to ctx.outbound "
                f"{list(self.outbound)}"
            )
        requests = self._requests
        if requests is None:
            raise ConfigError("ctx.send may be called only inside a Process handler")
        if requests is _NOTHING_QUEUED:
            requests = self._requests = deque()
        self.requested_sends += 1
        self._tally.requested += 1
        requests.append((_SEND, dst, payload))

    def set_timer(self, name: str, delay_s: float) -> None:
        """Arm (or re-arm) the application timer ``name``."""
        if delay_s < 0:
            raise ConfigError(f"timer {name!r}: delay_s must be >= 0, got {delay_s}")
        self._timer_id += 1
        timer_id = self._timer_id
        self._timers[name] = (timer_id, self.port.now() + delay_s)
        if not self._defer_timers:
            self.port.set_app_timer(self.rank, timer_id, name, delay_s)

    def output(self, item: object) -> None:
        """Queue an output for release once the protocol says it is recoverable."""
        requests = self._requests
        if requests is None:
            raise ConfigError("ctx.output may be called only inside a Process handler")
        if requests is _NOTHING_QUEUED:
            requests = self._requests = deque()
        requests.append((_OUTPUT, item))

    def finish(self) -> None:
        """Mark this rank as having no more work of its own."""
        if not self.done:
            self.done = True
            if self.trace:
                self.port.record(self.rank, "finish")
            self.port.rank_finished(self.rank)

    # ----------------------------------------------------------------------------------------
    # Driver entry points.

    def start(self, *, defer_timers: bool = False) -> None:
        """Run ``on_start`` (a fresh job, or a restart from the initial state).

        With ``defer_timers`` the timers it sets are armed only by the following ``resume``
        (exact replay: timers fire through ``TimerReplay`` items until the replay ends).
        """
        self._defer_timers = defer_timers
        self._call_app(self.process.on_start)

    def message_arrived(self, src: int, seq: int, payload: object, piggyback: PlainData) -> bool:
        """An application message arrived; returns False if it was a duplicate and dropped."""
        upto = self._arrived_upto.get(src)
        if upto is None:
            raise ProtocolError(
                protocol=self.protocol.name,
                rank=self.rank,
                state="engine",
                event=(src, seq),
                why=f"message from rank {src}, which has no channel to this rank",
            )
        if seq <= upto:
            return False
        if seq != upto + 1:
            early = self._early.setdefault(src, {})
            if seq in early:
                return False
            early[seq] = (payload, piggyback)
            return True
        self._arrived_upto[src] = seq
        self._admit(src, seq, payload, piggyback)
        if self._early:
            self._release_early(src)
        return True

    def _admit(self, src: int, seq: int, payload: object, piggyback: PlainData) -> None:
        """Hand the next message of channel ``src`` to the protocol (or straight through)."""
        if self._fast_arrivals or self._hook_arrivals:
            if self._hook_arrivals:
                before = self.protocol.admit_arrival(src, seq, payload, piggyback)
                if before:
                    # As on the full path, the message has arrived while they are carried out.
                    self._arrived[(src, seq)] = payload
                    for action in before:
                        self._execute(action)
                    del self._arrived[(src, seq)]
            if seq != self.received[src] + 1:
                raise self._out_of_order(src, seq)
            self._deliver_payload(src, seq, payload)
            return
        self._arrived[(src, seq)] = payload
        execute = self._execute
        for action in self.protocol.handle(
            MessageArrived(src=src, seq=seq, payload=payload, piggyback=piggyback)
        ):
            execute(action)

    def _release_early(self, src: int) -> None:
        early_waiting = self._early.get(src)
        while early_waiting:
            nxt = self._arrived_upto[src] + 1
            item = early_waiting.pop(nxt, None)
            if item is None:
                break
            self._arrived_upto[src] = nxt
            self._admit(src, nxt, item[0], item[1])
        if not early_waiting:
            self._early.pop(src, None)

    def control_arrived(self, src: int, control: PlainData) -> None:
        """A protocol control message arrived from ``src``."""
        self._feed(ControlArrived(src=src, control=control))

    def checkpoint_requested(self) -> None:
        """The driver's basic checkpoint schedule fired."""
        self._feed(CheckpointRequested())

    def checkpoint_persisted(self, index: int) -> None:
        """Checkpoint ``index`` is durably written."""
        if self.trace:
            self.port.record(self.rank, "persisted", index=index)
        self._feed(CheckpointPersisted(index=index))

    def checkpoint_write_failed(self, index: int, reason: str) -> None:
        """Checkpoint ``index`` could not be written."""
        self._feed(CheckpointWriteFailed(index=index, reason=reason))

    def protocol_timer_fired(self, name: str) -> None:
        """A protocol timer expired."""
        self._feed(TimerFired(name=name))

    def app_timer_due(self, timer_id: int, name: str) -> None:
        """An application timer expired; stale (replaced) timers are ignored."""
        current = self._timers.get(name)
        if current is None or current[0] != timer_id:
            return
        if self._fast_timers:
            # What AppTimerDue -> FireAppTimer would do, without the two objects.
            del self._timers[name]
            self._call_app(self.process.on_timer, name)
            return
        self._due[timer_id] = name
        execute = self._execute
        for action in self.protocol.handle(AppTimerDue(timer_id=timer_id, name=name)):
            execute(action)

    def message_logged(self, entry_id: int) -> None:
        """A ``LogMessage`` entry is on stable storage."""
        self._feed(MessageLogged(entry_id=entry_id))

    def peer_failed(self, rank: int) -> None:
        """The driver detected that ``rank`` crashed."""
        self._feed(PeerFailed(rank=rank))

    def recovery_completed(
        self,
        restored: frozenset[int],
        incarnation: int,
        committed: frozenset[int] = frozenset(),
    ) -> None:
        """A recovery finished; ``restored`` ranks were rolled back; ``committed``: this
        rank's checkpoints the recovery committed (already durable)."""
        self._feed(
            RecoveryCompleted(restored=restored, incarnation=incarnation, committed=committed)
        )

    def volatile_record(self) -> CheckpointRecord:
        """This rank's current counters and protocol data as a record (``index`` -1)."""
        return CheckpointRecord(
            rank=self.rank,
            index=-1,
            forced=False,
            sent=dict(self.sent),
            received=dict(self.received),
            meta=self.protocol.volatile_meta(),
        )

    def forget_messages_from(self, src: int, keep_upto: int) -> None:
        """Rank ``src`` rolled back to having sent ``keep_upto`` messages here: drop the rest.

        Arrived-but-undelivered messages and early arrivals above ``keep_upto`` were sent by
        an incarnation of ``src`` that no longer exists; the restored ``src`` sends them anew.
        """
        if keep_upto < self.received.get(src, 0):
            raise ProtocolError(
                protocol=self.protocol.name,
                rank=self.rank,
                state="engine",
                event=(src, keep_upto),
                why=f"rank {src} rolled back behind messages this rank already delivered "
                f"(orphan): delivered {self.received[src]}, sender keeps {keep_upto}",
            )
        if self._arrived_upto[src] > keep_upto:
            for seq in range(keep_upto + 1, self._arrived_upto[src] + 1):
                if self._arrived.pop((src, seq), _MISSING) is not _MISSING:
                    self._purged.add(src)
            self._arrived_upto[src] = keep_upto
        early = self._early.get(src)
        if early:
            for seq in [s for s in early if s > keep_upto]:
                del early[seq]

    def pending_outputs(self) -> list[object]:
        """Outputs requested but not released yet, oldest first."""
        return list(self._outputs.values())

    def held_outputs(self) -> list[tuple[int, object]]:
        """Outputs requested but not released yet, as ``(output_id, item)``, oldest first."""
        return list(self._outputs.items())

    def release_held_outputs(self) -> None:
        """The job ended and nothing can roll it back any more: release every held output."""
        self._release_outputs(self.output_id)

    def in_transit_unsent(self) -> list[tuple[int, object]]:
        """Sends the application made that are not transmitted yet, as ``(dst, payload)``."""
        queued = [(r[1], r[2]) for q in self._pending for r in q if r[0] == _SEND]
        return [*self._unsent.values(), *queued]

    def undelivered_arrivals(self) -> int:
        """Messages that arrived but were not handed to the process (held or early)."""
        return len(self._arrived) + sum(len(e) for e in self._early.values())

    # ----------------------------------------------------------------------------------------
    # Restore.

    @classmethod
    def restored(
        cls,
        *,
        image: CheckpointImage,
        n: int,
        inbound: Iterable[int],
        outbound: Iterable[int],
        process: Process,
        protocol: CheckpointProtocol,
        port: EnginePort,
        tally: JobTally | None = None,
        trace: bool = False,
        incarnation: int = 0,
    ) -> RankEngine:
        """An engine in the state of ``image``; call ``resume`` next."""
        record = image.record
        extras = image.extras
        rng = random.Random()
        rng.setstate(_random_state(extras["random"]))
        engine = cls(
            rank=record.rank,
            n=n,
            inbound=inbound,
            outbound=outbound,
            process=process,
            protocol=protocol,
            port=port,
            rng=rng,
            tally=tally,
            trace=trace,
            incarnation=incarnation,
        )
        process.restore(image.state)
        for dst, count in record.sent.items():
            engine.sent[dst] = count
        for src, count in record.received.items():
            engine.received[src] = count
            engine._arrived_upto[src] = count
        engine.done = bool(extras["done"])
        engine.send_id = int(extras["send_id"])
        engine.output_id = int(extras["output_id"])
        engine.requested_sends = int(extras["requested_sends"])
        engine._timer_id = int(extras["timer_id"])
        for oid, item in extras.get("held_outputs", ()):
            engine._outputs[int(oid)] = item
        engine._saved_for_resume(extras)
        return engine

    def _saved_for_resume(self, extras: Mapping[str, Any]) -> None:
        # Stash the timers and requests of the image until resume() re-arms and re-issues them.
        self._resume_timers = [(str(k), float(v)) for k, v in extras["timers"]]
        self._resume_requests = [tuple(r) for r in extras["requests"]]

    def resume(self, replay: Sequence[ReplayItem] = (), *, timers_only: bool = False) -> None:
        """Continue a restored engine: re-arm timers, re-issue requests, replay, then go on."""
        timers, self._resume_timers = self._resume_timers, []
        requests, self._resume_requests = self._resume_requests, []
        # Timers set by a deferred start() are armed below, with the ones replay leaves.
        deferred = self._defer_timers or timers_only
        self._defer_timers = timers_only
        now = self.port.now()
        for name, remaining_s in timers:
            self._timer_id += 1
            self._timers[name] = (self._timer_id, now + remaining_s)
            if not timers_only:
                self.port.set_app_timer(self.rank, self._timer_id, name, remaining_s)
        if requests:
            queue: deque[tuple[Any, ...]] = deque(
                (_SEND, int(r[1]), r[2]) if r[0] == "send" else (_OUTPUT, r[1]) for r in requests
            )
            self._drain(queue)
        self._in_replay = True
        try:
            for item in replay:
                match item:
                    case Redelivery(src=src, seq=seq, payload=payload):
                        self._redeliver(src, seq, payload)
                    case TimerReplay(name=name):
                        timer = self._timers.pop(name, None)
                        if timer is not None:
                            self._due.pop(timer[0], None)
                        self._call_app(self.process.on_timer, name)
                    case _:
                        assert_never(item)
        finally:
            self._in_replay = False
        if deferred:
            self._defer_timers = False
            for name, (timer_id, due_s) in list(self._timers.items()):
                self.port.set_app_timer(self.rank, timer_id, name, max(0.0, due_s - now))

    def _redeliver(self, src: int, seq: int, payload: object) -> None:
        got = self.received.get(src)
        if got is None:
            raise ProtocolError(
                protocol=self.protocol.name,
                rank=self.rank,
                state="replay",
                event=(src, seq),
                why=f"replay names rank {src}, which has no channel to this rank",
            )
        if seq <= got:
            return
        if seq != got + 1:
            raise ProtocolError(
                protocol=self.protocol.name,
                rank=self.rank,
                state="replay",
                event=(src, seq),
                why=f"replay skips messages: delivered {got} from rank {src}, replay gives {seq}",
            )
        self._arrived.pop((src, seq), None)
        if self._arrived_upto[src] < seq:
            self._arrived_upto[src] = seq
        self._stats["replayed"] += 1
        if self.trace:
            self.port.record(self.rank, "replay", src=src, seq=seq)
        self._deliver_payload(src, seq, payload)

    # ----------------------------------------------------------------------------------------
    # Internals.

    def _call_app(self, handler: Callable[..., None], *args: object) -> None:
        # The handler's queue is made by its first send/output: most handlers queue nothing.
        outer = self._requests
        self._requests = _NOTHING_QUEUED
        try:
            handler(self, *args)
        finally:
            requests = self._requests
            self._requests = outer
        if requests:
            self._drain(requests)

    def _drain(self, requests: deque[tuple[Any, ...]]) -> None:
        self._pending.append(requests)
        protocol = self.protocol
        execute = self._execute
        fast_sends = self._fast_sends
        hook_sends = self._hook_sends
        try:
            while requests:
                request = requests.popleft()
                if request[0] == _SEND:
                    self.send_id += 1
                    if fast_sends:
                        # What SendRequested -> Transmit would do: nothing is ever held.
                        self._transmit(request[1], request[2], None)
                        continue
                    if hook_sends:
                        # What SendRequested -> Transmit(piggyback) would do, stamped.
                        dst, payload = request[1], request[2]
                        self._transmit(dst, payload, protocol.stamp_send(dst, payload))
                        continue
                    send_id = self.send_id
                    self._unsent[send_id] = (request[1], request[2])
                    for action in protocol.handle(
                        SendRequested(send_id=send_id, dst=request[1], payload=request[2])
                    ):
                        execute(action)
                    if send_id in self._unsent:
                        self._held_since[send_id] = self.port.now()
                else:
                    self.output_id += 1
                    self._outputs[self.output_id] = request[1]
                    if self._fast_outputs:
                        self._release_outputs(self.output_id)
                    else:
                        self._feed(OutputRequested(output_id=self.output_id))
        finally:
            self._pending.pop()

    def _feed(self, event: Event) -> None:
        for action in self.protocol.handle(event):
            self._execute(action)

    def _execute(self, action: Action) -> None:
        port = self.port
        match action:
            case Transmit(send_id=send_id, dst=dst, payload=payload, piggyback=piggyback):
                if self._unsent.pop(send_id, None) is None:
                    raise self._bad(action, f"Transmit of unknown or already sent id {send_id}")
                if self._held_since:
                    since = self._held_since.pop(send_id, None)
                    if since is not None:
                        self._stats["blocking_us"] += round((port.now() - since) * 1e6)
                self._transmit(dst, payload, piggyback)
            case Deliver(src=src, seq=seq):
                payload = self._arrived.pop((src, seq), _MISSING)
                if payload is _MISSING:
                    if src in self._purged and seq > self._arrived_upto.get(src, 0):
                        return  # dropped by a recovery: the sender rolled back past it
                    raise self._bad(action, f"Deliver of message ({src}, {seq}) not arrived")
                if seq != self.received[src] + 1:
                    raise self._out_of_order(src, seq, action)
                self._deliver_payload(src, seq, payload)
            case FireAppTimer(timer_id=timer_id):
                due_name = self._due.pop(timer_id, None)
                if due_name is None:
                    raise self._bad(action, f"FireAppTimer for timer {timer_id} that is not due")
                current = self._timers.get(due_name)
                if current is not None and current[0] == timer_id:
                    del self._timers[due_name]
                    self._call_app(self.process.on_timer, due_name)
            case TakeCheckpoint(index=index, forced=forced, meta=meta):
                self._take_checkpoint(index, forced, meta)
            case SendControl(dst=dst, control=control):
                if not (0 <= dst < self.n) or dst == self.rank:
                    raise self._bad(action, f"control message to invalid rank {dst}")
                self._stats["control_messages"] += 1
                port.send_control(self.rank, dst, control)
            case SetTimer(name=name, delay_s=delay_s):
                port.set_protocol_timer(self.rank, name, delay_s)
            case AttachToCheckpoint(index=index, key=key, meta=meta):
                port.attach_to_checkpoint(self.rank, index, key, meta)
            case Commit(index=index):
                if self.trace:
                    port.record(self.rank, "commit", index=index)
                port.commit_checkpoint(self.rank, index)
            case DiscardCheckpoint(index=index):
                if self.trace:
                    port.record(self.rank, "discard", index=index)
                port.discard_checkpoint(self.rank, index)
            case CollectGarbage(before_index=before_index):
                port.collect_garbage(self.rank, before_index)
            case RecordChannelMessage(src=src, seq=seq):
                # The protocol keeps (and attaches) the channel state itself; the engine only
                # checks that the message it names is one this rank has seen.
                if (src, seq) not in self._arrived:
                    last = self._last_delivered.get(src)
                    if last is None or last[0] != seq:
                        raise self._bad(action, f"cannot record unknown message ({src}, {seq})")
            case SnapshotComplete(index=index):
                if self.trace:
                    port.record(self.rank, "snapshot_complete", index=index)
            case LogMessage(entry_id=entry_id, entry=entry):
                port.log_message(self.rank, entry_id, entry)
            case ReleaseOutput(output_id=output_id):
                self._release_outputs(output_id)
            case _:
                assert_never(action)

    def _release_outputs(self, output_id: int) -> None:
        # Outputs are kept in id order (contiguous): release the prefix up to output_id.
        items: list[object] = []
        first_id = 0
        for oid in list(self._outputs):
            if oid > output_id:
                break
            if not items:
                first_id = oid
            items.append(self._outputs.pop(oid))
        if items:
            if self.trace:
                self.port.record(self.rank, "output", count=len(items))
            # Not len(items): after a rollback, held outputs of the restored checkpoint may
            # have been released by the incarnation that failed. Each output counts once.
            self._stats["outputs_released"] += self.port.release_output(self.rank, first_id, items)

    def _out_of_order(self, src: int, seq: int, action: object = None) -> ProtocolError:
        # On the fast path (no action) received and arrived counts move together, so a gap
        # there is an engine bug, not a protocol's.
        return self._bad(
            action if action is not None else ("deliver", src, seq),
            f"Deliver out of channel order: delivered {self.received[src]} from rank {src}, "
            f"asked for {seq}",
        )

    def _transmit(self, dst: int, payload: object, piggyback: PlainData) -> None:
        seq = self.sent[dst] + 1
        self.sent[dst] = seq
        self.messages_sent += 1
        self.port.transmit(self.rank, dst, seq, payload, piggyback)

    def _deliver_payload(self, src: int, seq: int, payload: object) -> None:
        self.received[src] = seq
        self._last_delivered[src] = (seq, payload)
        self.messages_delivered += 1
        self._tally.delivered += 1
        self.port.delivered(self.rank, src, seq, payload)
        self._call_app(self.process.on_message, src, payload)

    def _take_checkpoint(self, index: int, forced: bool, meta: PlainData) -> None:
        self._stats["checkpoints_forced" if forced else "checkpoints_basic"] += 1
        record = CheckpointRecord(
            rank=self.rank,
            index=index,
            forced=forced,
            sent=dict(self.sent),
            received=dict(self.received),
            meta=meta,
        )
        now = self.port.now()
        held = [["send", dst, payload] for dst, payload in self._unsent.values()]
        # Requests still queued behind the current one, innermost handler first: that is the
        # order in which they would have been issued.
        queued = [
            ["send", r[1], r[2]] if r[0] == _SEND else ["output", r[1]]
            for q in reversed(self._pending)
            for r in q
        ]
        extras = {
            "random": self.random.getstate(),
            "timers": [[name, max(0.0, due - now)] for name, (_, due) in self._timers.items()],
            "done": self.done,
            "requests": held + queued,
            # Outputs requested before the checkpoint that the protocol has not released yet
            # (ids are contiguous up to output_id): a rollback to it must not lose them.
            "held_outputs": [[oid, item] for oid, item in self._outputs.items()],
            "send_id": self.send_id,
            "output_id": self.output_id,
            "requested_sends": self.requested_sends,
            "timer_id": self._timer_id,
        }
        if self.trace:
            self.port.record(self.rank, "checkpoint", index=index, forced=forced)
        image = CheckpointImage(record=record, state=self.process.state(), extras=extras)
        self.port.persist_checkpoint(self.rank, image)

    def _bad(self, action: object, why: str) -> ProtocolError:
        return ProtocolError(
            protocol=self.protocol.name, rank=self.rank, state="engine", event=action, why=why
        )


_MISSING: Any = object()


def _declared(
    cls: type[CheckpointProtocol], attribute: str, known: frozenset[str]
) -> frozenset[str]:
    """What the class that supplies ``handle`` declares in ``attribute`` (a set of events).

    The declaration counts only when that class makes it itself: a subclass that overrides
    ``handle`` (to hold or count messages, say) without declaring again keeps the full event
    contract.
    """
    for klass in cls.__mro__:
        if "handle" in vars(klass):
            declared = frozenset(vars(klass).get(attribute, frozenset()))
            unknown = declared - known
            if unknown:
                raise ConfigError(
                    f"{cls.__name__}.{attribute} names unknown events {sorted(unknown)}; "
                    f"known: {sorted(known)}"
                )
            return declared
    return frozenset()


def declared_pass_through(cls: type[CheckpointProtocol]) -> frozenset[str]:
    """The per-message events ``cls`` may take the engine's fast path for (``passes_through``)."""
    return _declared(cls, "passes_through", _PASS_THROUGH_EVENTS)


def declared_message_hooks(cls: type[CheckpointProtocol]) -> frozenset[str]:
    """The per-message events ``cls`` takes through hooks (``Protocol.message_hooks``); an
    event may not both pass through and go through a hook."""
    declared = _declared(cls, "message_hooks", _HOOK_EVENTS)
    both = declared & declared_pass_through(cls)
    if both:
        raise ConfigError(
            f"{cls.__name__}.message_hooks names events it also passes through: {sorted(both)}"
        )
    return declared


_PASS_THROUGH_EVENTS = frozenset({"sends", "arrivals", "timers", "outputs"})
_HOOK_EVENTS = frozenset({"sends", "arrivals"})


def _random_state(saved: Any) -> tuple[Any, ...]:
    # random.getstate() is (version, tuple of ints, gauss_next); after a round trip through
    # plain data (msgpack) the inner tuple may come back as a list.
    version, internal, gauss_next = saved
    return (int(version), tuple(int(x) for x in internal), gauss_next)
