"""One rank of a local job, as its own OS process: ``python -m snapline.runtime.local.worker``.

Theory of operation
-------------------
The worker reads its boot data (job config, rank, the job secret) from stdin, opens its store
(``<store>/rank-N``, or its storage levels: ``levels.py``) and ledger, listens for channels,
and connects to the supervisor's control socket. From then on it runs one single-threaded event
loop (``selectors``) that multiplexes the channel sockets, the control link, timers
(application, protocol, the basic checkpoint schedule, heartbeats) and completions posted by
the stable-storage thread. Application code and protocol code therefore run on one thread, one
event at a time, exactly as in the simulator -- both go through the same ``RankEngine``; this
module is only the ``EnginePort`` and the loop.

The supervisor drives the life cycle with control messages:

``init`` / ``restore`` -> build the engine (fresh, or from a committed checkpoint) -> ``ready``
``connect`` -> open every outbound channel (resending unacknowledged messages; retried with
    backoff while the loop runs on, until done or a ``freeze``) -> ``connected``
``resume`` -> start the app or replay the recovery plan, then run freely
``freeze`` -> a peer failed: tell the protocol, read what dead peers left in our sockets, make
    pending stable writes durable, stop running the engine, answer with the volatile record
``probe`` -> counters for termination detection; ``stop`` -> release the rest, report result.

Heartbeats go to the supervisor from the loop itself, so a hung loop (an endless handler, a
SIGSTOP) stops them and is detected. If the supervisor disappears the control link closes and
the worker exits: a job never leaves orphans behind.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from snapline.errors import EncodeError, SnaplineError
from snapline.protocols import protocol_class
from snapline.protocols.base import (
    CheckpointRecord,
    PlainData,
    Redelivery,
    initial_record,
)
from snapline.protocols.base import Protocol as CheckpointProtocol
from snapline.runtime.engine import CheckpointImage, RankEngine
from snapline.runtime.local.channels import APP, CONTROL, Transport, TransportStats
from snapline.runtime.local.config import (
    JobConfig,
    app_factory,
    app_seed,
    error_signature,
    raised_in_user_code,
    user_traceback,
)
from snapline.runtime.local.control import check_from_supervisor
from snapline.runtime.local.endpoints import connect as connect_endpoint
from snapline.runtime.local.endpoints import unix_address
from snapline.runtime.local.ledger import ledger_path, read_ledger
from snapline.runtime.local.levels import flushed_record, load_checkpoint
from snapline.runtime.local.plain import (
    record_to_plain,
    replay_from_plain,
    requests_basic_checkpoints,
)
from snapline.runtime.local.resize import start_factory
from snapline.runtime.local.stable import (
    CollectJob,
    Completion,
    LedgerJob,
    OutputJob,
    SaveJob,
    StableWriter,
    wait_beating,
)
from snapline.runtime.local.tracefile import open_for_append, rank_trace_path
from snapline.runtime.local.wire import FrameReader, WireError, connect_handshake, frame, pack
from snapline.topology import Topology

_FRAMES_PER_TURN = 4096
_FRAMES_PER_CHANNEL = 256
_DURABLE_TIMEOUT_S = 60.0
#: ``json.dumps(event, default=repr)`` without building an encoder per call (a third of the
#: cost of a trace event: a traced rank writes one per message sent and delivered).
_encode_trace_event = json.JSONEncoder(default=repr).encode
#: How much lower the store's writer threads run than the rank's loop (store/priority.py).
BACKGROUND_NICE = 10
#: Connect-phase retries: the first after this long, then twice as long each time, up to
#: ``_CONNECT_RETRY_MAX_S`` (a peer being replaced listens within a second or two).
_CONNECT_RETRY_FIRST_S = 0.01
_CONNECT_RETRY_MAX_S = 0.5


#: ``RANK:EVENT[:ROUND]``: the worker of RANK stops itself with SIGSTOP right after logging
#: EVENT (of recovery round ROUND, if given) -- a fault-injection point for tests that must hit
#: an exact step of a recovery, which a signal from outside can only race for.
STOP_AFTER_ENV = "SNAPLINE_FAULT_STOP_AFTER"


def _stop_after_event(rank: int) -> tuple[str, int | None] | None:
    parts = os.environ.get(STOP_AFTER_ENV, "").split(":")
    if len(parts) not in (2, 3) or parts[0] != str(rank) or not parts[1]:
        return None
    return parts[1], int(parts[2]) if len(parts) == 3 else None


@dataclass(slots=True)
class _ConnectPhase:
    """The supervisor asked this rank to open every outbound channel (``connect``)."""

    round: object
    started_s: float
    next_try_s: float
    delay_s: float = _CONNECT_RETRY_FIRST_S
    #: Failed attempts per peer so far.
    failures: dict[int, int] = field(default_factory=dict)


class ChannelTransport(Protocol):
    """What the worker's loop needs of an engine's channels (``channels.Transport`` on Unix or
    TCP sockets; ``snapline.runtime.mpi.transport.MpiTransport`` on MPI point-to-point).

    Frames handed over by ``next_frame`` are ``[APP, epoch, seq, payload, piggyback]`` or
    ``[CONTROL, epoch, control]``. A transport without file descriptors (MPI) is polled:
    the loop sleeps at most ``poll_interval_s()`` and then calls ``pump()``.
    """

    @property
    def inn(self) -> Mapping[int, object]:
        """The inbound channels, by source rank."""
        ...

    @property
    def out(self) -> Mapping[int, object]:
        """The outbound channels, by destination rank."""
        ...

    @property
    def stats(self) -> TransportStats:
        """Counters for reports."""
        ...

    @property
    def address(self) -> str:
        """Where peers reach this rank (after ``listen``; empty where there is no such thing)."""
        ...

    def listen(self) -> None: ...
    def set_peers(self, peers: dict[int, str]) -> None: ...
    def close(self) -> None: ...
    def poll_interval_s(self) -> float: ...
    def pump(self) -> None: ...
    def on_event(self, tag: tuple[str, int], mask: int) -> None: ...
    def adopt_accepted(self) -> None: ...
    def connect(self, dst: int) -> str | None: ...
    def disconnected_outbound(self) -> list[int]: ...
    def send_app(self, dst: int, seq: int, payload: object, piggyback: object) -> None: ...
    def send_control(self, dst: int, control: object) -> None: ...
    def flush(self) -> None: ...
    def flush_blocking(self, timeout_s: float) -> bool: ...
    def has_frames(self) -> bool: ...
    def next_frame(self, src: int) -> list[Any] | None: ...
    def restart_outbound(self, sent_cut: dict[int, int]) -> None: ...
    def begin_recovery(
        self, *, epoch: int, self_restored: bool, rolled_back: dict[int, int]
    ) -> None: ...
    def set_expected(
        self, received: dict[int, int], *, all_sources: bool, only: dict[int, int]
    ) -> None: ...
    def drain_dead(self, dead: set[int]) -> None: ...


TransportFactory = Callable[..., ChannelTransport]
"""Builds a rank's transport from ``Transport``'s keyword arguments."""


class Worker:
    """The event loop and ``EnginePort`` of one rank (see the module docstring)."""

    def __init__(self, boot: dict[str, Any], *, transport: TransportFactory | None = None) -> None:
        self.config = JobConfig.from_json(boot["config"])
        self.rank = int(boot["rank"])
        self.n = self.config.n
        self.secret: bytes = boot["secret"]
        self.socket_dir = Path(boot["socket_dir"])
        #: Where to reach the supervisor, and to listen for peers (engines whose ranks run on
        #: other hosts give TCP addresses, see ``endpoints``); default: the socket directory.
        self.control_address = str(
            boot.get("control_address") or unix_address(self.socket_dir / "control.sock")
        )
        listen_address: str | None = boot.get("listen_address")
        #: The host (node address) this rank runs on, where the engine knows it (for ``ps``).
        self.node: str | None = boot.get("node")
        self.store_dir = Path(self.config.store)
        self.t0 = float(boot["t0"])
        #: The recovery epoch this process was started in (0: the job's first start).
        self.boot_epoch = int(boot.get("epoch", 0))
        self.pid = os.getpid()
        self._stop_after = _stop_after_event(self.rank)
        topology = Topology.from_edges(self.n, [(int(s), int(d)) for s, d in self.config.edges])
        self.edges = topology.edges
        self.inbound = topology.inbound(self.rank)
        self.outbound = topology.outbound(self.rank)
        self.protocol_cls: type[CheckpointProtocol] = protocol_class(self.config.protocol)
        # A resized job's ranks start from the resize's start states, not from scratch.
        self.factory = start_factory(
            app_factory(self.config.app, self.config.app_options), self.store_dir, self.config
        )
        self.protocol_options: dict[str, PlainData] = {
            "edges": sorted([list(e) for e in self.edges]),
            **self.config.protocol_options,
        }
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", 0))
        logs = self.store_dir / "logs"
        logs.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A previous incarnation killed in mid-write may have left a torn line: cut it, so
        # that this incarnation's first lines (its restore event) are not lost with it.
        self._log_fd = open_for_append(logs / f"rank-{self.rank}.jsonl")
        self._trace_fd = (
            open_for_append(rank_trace_path(self.store_dir, self.rank)) if self.config.trace else -1
        )
        self._trace_buf: list[str] = []
        make_transport: TransportFactory = Transport if transport is None else transport
        self.transport = make_transport(
            rank=self.rank,
            inbound=self.inbound,
            outbound=self.outbound,
            socket_dir=self.socket_dir,
            secret=self.secret,
            selector=self.sel,
            wake=self._wake,
            log=self.log,
            **({"listen_address": listen_address} if listen_address else {}),
        )
        from snapline.runtime.local.levels import rank_store  # late: the store is heavier
        from snapline.store.priority import set_background_nice

        # The loop serves markers and messages; the store's writer threads yield the CPU to
        # it (with many ranks per core, a snapshot's saves otherwise delay its markers). That
        # holds for protocols whose loop waits for one save before the next forced checkpoint
        # too: measured, bcs and fdas ran as fast or faster with their saves lowered.
        set_background_nice(BACKGROUND_NICE)
        self.store = rank_store(self.config, self.rank, self._flushed)
        self._completions: deque[Completion] = deque()
        self._completions_lock = threading.Lock()
        self.writer = StableWriter(ledger_path(self.store_dir, self.rank), self.rank, self._post)
        #: The last output id released (by this process or an earlier incarnation of the rank).
        self._released_upto = self.writer.released
        self.engine: RankEngine | None = None
        self.generation = 0
        self.frozen = True
        self.stopping = False
        #: The supervisor said ``exit`` (a normal end, not a lost supervisor or a bad frame).
        self.exit_requested = False
        self.incarnation = 0
        self._resume_plan: dict[str, Any] | None = None
        self._timers: list[tuple[float, int, str, Any, int]] = []
        self._timer_seq = 0
        self._proto_timers: dict[str, int] = {}
        self._app_timers: dict[str, int] = {}
        self._requests_basic = requests_basic_checkpoints(self.config.protocol, self.rank)
        self._next_checkpoint_s = float("inf")
        #: Checkpoints whose saves went to the stable thread and are not persisted (or failed).
        self._saving: set[int] = set()
        #: Those of them the protocol discarded meanwhile: their completions are not its news.
        self._discarded_saving: set[int] = set()
        #: A basic checkpoint fell due while a save was in flight: take it once none is.
        self._basic_deferred = False
        self._hb_due_s = 0.0
        self._last_committed = 0
        self._activity = 0
        self._pending_save: Any = None
        self._control: socket.socket | None = None
        self._control_reader = FrameReader()
        self._control_out = bytearray()
        self._control_writing = False
        self._connecting: _ConnectPhase | None = None

    # ------------------------------------------------------------------------------ utilities

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _post(self, completions: list[Completion]) -> None:
        with self._completions_lock:
            self._completions.extend(completions)
        self._wake()

    def log(self, event: str, **fields: object) -> None:
        """Append one structured log line (JSON) to ``<store>/logs/rank-N.jsonl``."""
        line = {"ts": time.time(), "rank": self.rank, "pid": self.pid, "event": event, **fields}
        with contextlib.suppress(OSError):
            os.write(self._log_fd, (json.dumps(line, default=repr) + "\n").encode())
        stop = self._stop_after
        if stop is not None and event == stop[0] and stop[1] in (None, fields.get("round")):
            # Fault injection (tests, chaos): freeze right after this step, as SIGSTOP from
            # outside would, so a fault can land at an exact point of the recovery protocol.
            os.kill(self.pid, signal.SIGSTOP)

    def _t(self) -> float:
        return round(time.monotonic() - self.t0, 6)

    def _trace(self, kind: str, **fields: object) -> None:
        if self._trace_fd >= 0:
            event = {"t": self._t(), "rank": self.rank, "kind": kind, **fields}
            self._trace_buf.append(_encode_trace_event(event))

    def _flush_trace(self) -> None:
        if self._trace_buf:
            data = ("\n".join(self._trace_buf) + "\n").encode()
            self._trace_buf.clear()
            with contextlib.suppress(OSError):
                os.write(self._trace_fd, data)

    def _send_control_link(self, msg: dict[str, Any]) -> None:
        self._control_out += frame(msg)
        self._flush_control()

    def _flush_control(self) -> None:
        sock = self._control
        if sock is None:
            return
        if self._control_out:
            try:
                sent = sock.send(self._control_out)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.stopping = True
                return
            del self._control_out[:sent]
        # A large reply (a ``frozen`` volatile record, a ``result``) outgrows the socket
        # buffer: wait for write readiness so the rest goes out as soon as the supervisor
        # reads, not a heartbeat interval per buffer later.
        want = bool(self._control_out)
        if want != self._control_writing:
            self._control_writing = want
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            with contextlib.suppress(KeyError, ValueError):
                self.sel.modify(sock, events, ("control", 0))

    def _heartbeat(self) -> None:
        self._hb_due_s = time.monotonic() + self.config.heartbeat_interval_s
        self._send_control_link({"op": "hb", "rank": self.rank, **self._counters()})

    def _await_durable(self, why: str) -> None:
        """Wait until every queued stable write is durable, heartbeating meanwhile.

        The loop is blocked here on purpose (the supervisor must not read a ledger that is
        still being written), but it is not hung: an fsync on a busy disk can take longer than
        the heartbeat timeout, and silence would make the supervisor kill a healthy rank.
        """
        self._wait_beating(self.writer.barrier().wait, why)

    def _append_durable(self, record: dict[str, PlainData], why: str) -> None:
        """Append a ledger record and return once it is durable, heartbeating meanwhile."""
        synced = self.writer.append_now(record)
        self._wait_beating(lambda t: not futures.wait([synced], timeout=t).not_done, why)
        synced.result()  # an fsync error surfaces here, as it would have inline

    def _wait_beating(self, is_done: Callable[[float], bool], why: str) -> None:
        def beat() -> None:
            self._heartbeat()
            self._flush_control()

        try:
            wait_beating(
                is_done,
                interval_s=self.config.heartbeat_interval_s,
                timeout_s=_DURABLE_TIMEOUT_S,
                beat=beat,
                why=why,
            )
        except SnaplineError as exc:
            raise SnaplineError(f"rank {self.rank}: {exc}") from None

    # ------------------------------------------------------------------------------ EnginePort

    def now(self) -> float:
        """Monotonic seconds (comparable across the job's processes on one machine)."""
        return time.monotonic()

    def transmit(self, src: int, dst: int, seq: int, payload: object, piggyback: PlainData) -> None:
        """Queue an application message on channel ``src -> dst``."""
        self.transport.send_app(dst, seq, payload, piggyback)
        if self._trace_fd >= 0:
            pb = 0 if piggyback is None else len(pack(piggyback))
            self._trace("send", dst=dst, seq=seq, piggyback_bytes=pb)

    def send_control(self, src: int, dst: int, control: PlainData) -> None:
        """Queue a protocol control message to ``dst``."""
        if dst not in self.transport.out:
            self.log("control_without_channel", dst=dst)
            return
        self.transport.send_control(dst, control)
        self._trace("control_send", dst=dst, what=_what(control))

    def persist_checkpoint(self, rank: int, image: CheckpointImage) -> None:
        """Capture the state now (``save_async``) and let the stable thread finish the write."""
        record = image.record
        self._saving.add(record.index)  # until its ``persisted`` or ``write_failed`` completion
        # Messages this checkpoint counts as sent must be in the kernel before it can persist.
        self.transport.flush_blocking(timeout_s=1.0)
        # save_async first waits for the previous save; with forced checkpoints in a row on a
        # busy disk that can outlast the heartbeat timeout, so wait here, heartbeating.
        previous = self._pending_save
        if previous is not None and not previous.done():
            self._wait_for_save(previous)
        try:
            pending = self.store.save_async(
                image.state,
                step=record.index,
                meta={"rank": rank, "index": record.index, "forced": record.forced},
                overwrite=True,
                allow_pickle=self.config.allow_pickle,
            )
        except EncodeError:
            # The state itself cannot be encoded: every later checkpoint would fail the same
            # way, so the job could never commit one. Fail now, naming the value (see main).
            raise
        except SnaplineError as exc:
            self.log("checkpoint_capture_failed", index=record.index, why=str(exc))
            self._post([("write_failed", self.generation, record.index, str(exc))])
            return
        self._pending_save = pending
        ledger_record = {
            "k": "ckpt",
            **record_to_plain(record),
            "extras": dict(image.extras),
        }
        self.writer.put(
            SaveJob(
                generation=self.generation,
                index=record.index,
                pending=pending,
                record=ledger_record,
            )
        )

    def _wait_for_save(self, pending: Any) -> None:
        """Block until ``pending`` (a ``PendingSave``) has ended, heartbeating meanwhile.

        Blocks on the save itself, so the loop goes on the moment it ends: polling every 2 ms
        added up to 2 ms to each forced checkpoint taken while the previous one was still
        being written (FDAS takes them back to back). A failed save is not this wait's
        business: the stable thread reports it (``write_failed``) when it takes the save.
        """
        while not pending.done():
            if time.monotonic() >= self._hb_due_s:
                self._heartbeat()
                self._flush_control()
            with contextlib.suppress(Exception):
                pending.result(timeout_s=max(0.001, self._hb_due_s - time.monotonic()))

    # Commit markers, discards and the gc horizon are written durably *now*, on the loop: the
    # protocol's next actions (a gossip of the commit, a marker, released output) may tell
    # other ranks about them, and a recovery must never see less than they were told.

    def attach_to_checkpoint(self, rank: int, index: int, key: str, meta: PlainData) -> None:
        """Record an attachment to checkpoint ``index`` in the ledger.

        Not waited for: an attachment counts only for a committed checkpoint, and the commit
        marker comes after it in the same ledger file, whose fsync makes both durable. (Waiting
        here was 11-13 ms of a Chandy-Lamport snapshot's latency with 16 ranks on 2 cores.)
        """
        self.writer.append_later({"k": "attach", "index": index, "key": key, "meta": meta})

    def commit_checkpoint(self, rank: int, index: int) -> None:
        """Write the commit marker of checkpoint ``index`` (durably)."""
        self._last_committed = max(self._last_committed, index)
        self._append_durable({"k": "commit", "index": index}, "commit marker")

    def discard_checkpoint(self, rank: int, index: int) -> None:
        """Mark checkpoint ``index`` as never to commit."""
        if index in self._saving:
            # Discarded before its write finished (two-phase aborts a round on PeerFailed): the
            # protocol forgot it, and its ``persisted`` would now be a ProtocolError ("not
            # pending") that kills the rank after the recovery. Like the simulator's storage,
            # which drops a discarded write, do not report it.
            self._discarded_saving.add(index)
        self._append_durable({"k": "discard", "index": index}, "discard marker")

    def collect_garbage(self, rank: int, before_index: int) -> None:
        """Record the horizon; the stable thread then deletes the states below it."""
        self._append_durable({"k": "gc", "before": before_index}, "gc horizon")
        self.writer.put(CollectJob(before=before_index, store=self.store))

    def set_protocol_timer(self, rank: int, name: str, delay_s: float) -> None:
        """Arm (or re-arm) protocol timer ``name``."""
        self._timer_seq += 1
        self._proto_timers[name] = self._timer_seq
        heapq.heappush(
            self._timers,
            (time.monotonic() + delay_s, self._timer_seq, "p", name, self.generation),
        )

    def set_app_timer(self, rank: int, timer_id: int, name: str, delay_s: float) -> None:
        """Arm application timer ``timer_id`` (the engine ignores replaced ones)."""
        self._timer_seq += 1
        self._app_timers[name] = timer_id
        heapq.heappush(
            self._timers,
            (time.monotonic() + delay_s, self._timer_seq, "a", (timer_id, name), self.generation),
        )

    def log_message(self, rank: int, entry_id: int, entry: PlainData) -> None:
        """Append a message-log entry; ``message_logged`` follows once it is durable."""
        self.writer.put(
            LedgerJob(
                generation=self.generation, record={"k": "log", "entry": entry}, entry_id=entry_id
            )
        )

    def release_output(self, rank: int, first_id: int, items: list[object]) -> int:
        """Release outputs (numbered: an id released before is skipped by the writer).

        Returns how many are new. The writer decides on its thread, later; the loop keeps its
        own horizon (the ledger's at start, then every id handed over), which is the same.
        """
        self.writer.put(OutputJob(first_id=first_id, items=list(items)))
        last = first_id + len(items) - 1
        fresh = max(0, last - max(self._released_upto, first_id - 1))
        self._released_upto = max(self._released_upto, last)
        return fresh

    def delivered(self, rank: int, src: int, seq: int, payload: object) -> None:
        """Trace the delivery."""
        self._activity += 1
        if self._trace_fd >= 0:
            self._trace("deliver", src=src, seq=seq)

    def rank_finished(self, rank: int) -> None:
        """The process called ``ctx.finish()``."""
        self.log("finished")

    def record(self, rank: int, kind: str, **fields: object) -> None:
        """A trace event from the engine."""
        self._trace(kind, **fields)

    # ------------------------------------------------------------------------------ life cycle

    def _new_protocol(
        self, record: CheckpointRecord | None, incarnation: int
    ) -> CheckpointProtocol:
        if record is None:
            return self.protocol_cls(
                rank=self.rank,
                n=self.n,
                inbound=self.inbound,
                outbound=self.outbound,
                options=self.protocol_options,
            )
        return self.protocol_cls.restored(
            record=record,
            n=self.n,
            inbound=self.inbound,
            outbound=self.outbound,
            options=self.protocol_options,
            incarnation=incarnation,
        )

    def _reset_timers(self) -> None:
        self.generation += 1
        self._timers.clear()
        self._proto_timers.clear()
        self._app_timers.clear()
        with self._completions_lock:
            self._completions.clear()
        self._saving.clear()
        self._discarded_saving.clear()
        self._basic_deferred = False

    def _build_fresh(self) -> None:
        import random

        self._reset_timers()
        process = self.factory(self.rank, self.n)
        self.engine = RankEngine(
            rank=self.rank,
            n=self.n,
            inbound=self.inbound,
            outbound=self.outbound,
            process=process,
            protocol=self._new_protocol(None, 0),
            port=self,
            rng=random.Random(app_seed(self.config.seed, self.rank)),
            trace=self.config.trace,
            incarnation=0,
        )

    def _flushed(self, index: int, checkpoint_id: str) -> None:
        # From the store's flusher thread: the remote level now holds checkpoint ``index``.
        self.writer.put(
            LedgerJob(generation=self.generation, record=flushed_record(index, checkpoint_id))
        )

    def _build_restored(self, index: int, incarnation: int) -> None:
        self._reset_timers()
        # Void the ledger's records of later checkpoints (an undone future) before anything new.
        self.writer.put(
            LedgerJob(generation=self.generation, record={"k": "restore", "index": index})
        )
        process = self.factory(self.rank, self.n)
        if index == 0:
            import random

            self.engine = RankEngine(
                rank=self.rank,
                n=self.n,
                inbound=self.inbound,
                outbound=self.outbound,
                process=process,
                protocol=self._new_protocol(initial_record(self.rank), incarnation),
                port=self,
                rng=random.Random(app_seed(self.config.seed, self.rank)),
                trace=self.config.trace,
                incarnation=incarnation,
            )
        else:
            view = read_ledger(ledger_path(self.store_dir, self.rank), self.rank)
            record = view.persisted[index]
            state = load_checkpoint(
                self.store, view, index, allow_pickle=self.config.allow_pickle, log=self.log
            )
            image = CheckpointImage(record=record, state=state, extras=view.extras[index])
            self.engine = RankEngine.restored(
                image=image,
                n=self.n,
                inbound=self.inbound,
                outbound=self.outbound,
                process=process,
                protocol=self._new_protocol(record, incarnation),
                port=self,
                trace=self.config.trace,
                incarnation=incarnation,
            )
        self._last_committed = index
        assert self.engine is not None
        self._trace("restore", index=index, received=dict(self.engine.received))

    def _on_control(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "init":
            self._build_fresh()
            self._resume_plan = {"start": True, "restored": False}
            self._send_control_link({"op": "ready", "rank": self.rank})
        elif op == "restore":
            index = int(msg["index"])
            self.incarnation = int(msg["epoch"])
            # In-doubt checkpoints the plan resolved as committed (the restored one may be
            # among them): committed durably before the restore voids anything later.
            self._commit_resolved(msg)
            self._build_restored(index, self.incarnation)
            self._resume_plan = {
                "start": index == 0,
                "restored": True,
                "replay": msg.get("replay", []),
                "timers_only": bool(msg.get("timers_only", False)),
            }
            # Rolled back: the outbound streams start anew from the restored counters (the
            # ``connect`` that follows opens them and resends what is still valid).
            assert self.engine is not None
            self.transport.restart_outbound(dict(self.engine.sent))
            self._connecting = None
            self._await_durable("restore")
            self._send_control_link({"op": "ready", "rank": self.rank, "round": msg.get("round")})
            self.log("restored", index=index, round=msg.get("round"))
        elif op == "connect":
            peers = msg.get("peers")
            if peers:
                self.transport.set_peers({int(r): str(a) for r, a in peers.items()})
            now = time.monotonic()
            self._connecting = _ConnectPhase(round=msg.get("round"), started_s=now, next_try_s=now)
            self._connect_step()
        elif op == "resume":
            self._resume(msg)
        elif op == "freeze":
            # A failure during recovery (a peer died while we connected to it): the supervisor
            # plans again, and a new ``connect`` follows.
            self._connecting = None
            self._freeze(msg)
        elif op == "probe":
            self._send_control_link(
                {"op": "probe_reply", "seq": msg.get("seq"), **self._counters()}
            )
        elif op == "stop":
            self._stop()
        elif op == "exit":
            self.exit_requested = True
            self.stopping = True
        else:
            self.log("unknown_control", op=op)

    def _connect_step(self) -> None:
        """One attempt of the connect phase; ``connected`` goes out once every channel is open.

        The loop keeps running between attempts (heartbeats, control messages), so a peer that
        died while we connected to it is a failure for the supervisor to recover from (it
        answers with ``freeze``), never a reason for this rank to give up. Retries back off
        exponentially up to a cap, and only the first failure per peer is logged.
        """
        phase = self._connecting
        if phase is None or time.monotonic() < phase.next_try_s:
            return
        for dst in self.transport.disconnected_outbound():
            why = self.transport.connect(dst)
            if why is not None:
                phase.failures[dst] = phase.failures.get(dst, 0) + 1
                if phase.failures[dst] == 1:
                    self.log("connect_failed", dst=dst, why=why, round=phase.round)
            if time.monotonic() >= self._hb_due_s:  # a handshake can take a while
                self._heartbeat()
        if self.transport.disconnected_outbound():
            phase.next_try_s = time.monotonic() + phase.delay_s
            phase.delay_s = min(2 * phase.delay_s, _CONNECT_RETRY_MAX_S)
            return
        self._connecting = None
        if phase.failures:
            waited_s = round(time.monotonic() - phase.started_s, 3)
            self.log("connected", retries=phase.failures, waited_s=waited_s, round=phase.round)
        self._send_control_link({"op": "connected", "rank": self.rank, "round": phase.round})

    def _resume(self, msg: dict[str, Any]) -> None:
        engine = self.engine
        plan = self._resume_plan
        assert engine is not None
        epoch = int(msg.get("epoch", 0))
        recovery = bool(msg.get("recovery", False))
        restored = frozenset(int(r) for r in msg.get("restored", []))
        self_restored = plan is not None and bool(plan.get("restored"))
        # A survivor may have delivered more from a rolled-back sender than its checkpoint
        # sent (message logging replays the rest exactly): keep what was delivered.
        cuts = {
            int(k): max(int(v), engine.received.get(int(k), 0))
            for k, v in (msg.get("cuts") or {}).items()
        }
        self.transport.begin_recovery(epoch=epoch, self_restored=self_restored, rolled_back=cuts)
        if plan is not None:
            self._resume_plan = None
            if plan.get("start"):
                engine.start(defer_timers=bool(plan.get("timers_only")))
            if self_restored:
                engine.resume(
                    replay_from_plain(plan.get("replay", [])),
                    timers_only=bool(plan.get("timers_only")),
                )
        else:
            # Arrivals from a rolled-back sender above its cut are void -- unless it re-executes
            # exactly (message logging): then they may already be held by the protocol (logged,
            # awaiting delivery) and the re-sent copies are dropped as duplicates.
            exact = {int(r) for r in msg.get("exact") or ()}
            for src, cut in cuts.items():
                if src in engine.inbound_set and src not in exact:
                    engine.forget_messages_from(src, cut)
        for item in replay_from_plain(msg.get("rearrive") or []):
            if isinstance(item, Redelivery):
                engine.message_arrived(item.src, item.seq, item.payload, item.piggyback)
        self.transport.set_expected(dict(engine.received), all_sources=self_restored, only=cuts)
        if recovery:
            if not self_restored:
                self._commit_resolved(msg)
            committed = frozenset(int(i) for i in msg.get("commit") or ())
            engine.recovery_completed(restored, epoch, committed)
        # Counters right after restore and replay, before anything new: the supervisor checks
        # that the recovered state is a consistent cut.
        self._send_control_link(
            {
                "op": "resumed",
                "round": msg.get("round"),
                "sent": dict(engine.sent),
                "received": dict(engine.received),
            }
        )
        self.frozen = False
        now = time.monotonic()
        if self._requests_basic:
            self._next_checkpoint_s = now + self.config.interval_s
        self.log("resumed", epoch=epoch, restored=sorted(restored))

    def _commit_resolved(self, msg: dict[str, Any]) -> None:
        """Write the commit markers of the checkpoints the recovery plan committed here."""
        for index in msg.get("commit") or ():
            self.commit_checkpoint(self.rank, int(index))

    def _freeze(self, msg: dict[str, Any]) -> None:
        engine = self.engine
        failed = [int(r) for r in msg.get("failed", [])]
        newly = [int(r) for r in msg.get("newly_failed", failed)]
        # Only a running engine hears of failures. A rank frozen already -- a peer died while
        # this recovery ran, so the supervisor aborts the round and freezes everyone again -- is
        # not told of the new failure, on purpose: its engine must not act after its ``frozen``
        # reply (the plan is made from that volatile record and from the ledgers as they were
        # then; a discard marker or a control message now would change what the planner read),
        # and nothing is lost: no protocol's ``PeerFailed`` depends on which rank failed, the
        # frozen engine has seen no event since its first one, and once recovering a second is
        # a no-op (two-phase's included; test_two_phase checks it). The plan comes from the
        # supervisor's ``failed``, not from what the protocols were told.
        if engine is not None and not self.frozen:
            for rank in newly:
                if rank != self.rank:
                    engine.peer_failed(rank)
            self.transport.flush()
        self.frozen = True
        self.transport.drain_dead(set(failed))
        self._await_durable("freeze")
        volatile = record_to_plain(engine.volatile_record()) if engine is not None else None
        self._send_control_link(
            {"op": "frozen", "rank": self.rank, "round": msg.get("round"), "volatile": volatile}
        )

    def _counters(self) -> dict[str, Any]:
        engine = self.engine
        if engine is None:
            return {"ready": False}
        return {
            "ready": True,
            "frozen": self.frozen,
            "done": engine.done,
            "requested": engine.requested_sends,
            "delivered": sum(engine.received.values()),
            "sent": sum(engine.sent.values()),
            "undelivered": engine.undelivered_arrivals(),
            "unsent": len(engine.in_transit_unsent()),
            # The engine's count, not ``_app_timers``: that forgets a timer the moment it
            # fires, while the protocol may still hold the firing (message logging logs it
            # first), and the termination probe then saw "no timers" too early.
            "timers": engine.app_timers_pending,
            "activity": self._activity,
            "committed": self._last_committed,
            "gaps": self.transport.stats.gaps,
            # Per channel, for the supervisor's report on a job that is stuck.
            "sent_to": dict(engine.sent),
            "received_from": dict(engine.received),
        }

    def _stop(self) -> None:
        engine = self.engine
        # Outputs the protocol still holds are released by the supervisor once every rank has
        # reported: until then a failure can still roll this rank back (and under 'none'
        # re-execute it from the start, producing its outputs in another order).
        held = [[oid, item] for oid, item in engine.held_outputs()] if engine is not None else []
        self._await_durable("stop")
        self._flush_trace()
        result = engine.process.result() if engine is not None else None
        stats: dict[str, Any] = {}
        if engine is not None:
            stats = {**engine.protocol.stats, **engine.stats}
        stats.update(
            {
                "sent_per_channel": dict(engine.sent) if engine is not None else {},
                "duplicates_dropped": self.transport.stats.duplicates_dropped,
                "stale_dropped": self.transport.stats.stale_dropped,
                "gaps": self.transport.stats.gaps,
                "rejected_connections": self.transport.stats.rejected_connections,
                "resent": self.transport.stats.resent,
            }
        )
        self._send_control_link(
            {
                "op": "result",
                "rank": self.rank,
                "result": result,
                "stats": stats,
                "held_outputs": held,
            }
        )

    # ------------------------------------------------------------------------------ event loop

    def run(self) -> None:
        """Connect, then run the loop until told to stop or the supervisor goes away."""
        self.log("booting", round=self.boot_epoch)
        self.transport.listen()
        control = connect_endpoint(self.control_address)
        connect_handshake(control, self.secret, "control", rank=self.rank, pid=self.pid)
        control.setblocking(False)
        self._control = control
        self.sel.register(control, selectors.EVENT_READ, ("control", 0))
        hello: dict[str, Any] = {"op": "hello", "rank": self.rank, "pid": self.pid}
        if self.transport.address:
            hello["address"] = self.transport.address
        if self.node:
            hello["node"] = self.node
        self._send_control_link(hello)
        self.log("started")
        try:
            while not self.stopping:
                self._turn()
        finally:
            self._flush_control_blocking()
            self._flush_trace()
            self.transport.close()
            self.writer.close()

    def _flush_control_blocking(self) -> None:
        sock = self._control
        if sock is not None and self._control_out:
            with contextlib.suppress(OSError):
                sock.setblocking(True)
                sock.settimeout(2.0)
                sock.sendall(self._control_out)
                self._control_out.clear()

    def _turn(self) -> None:
        now = time.monotonic()
        deadline = self._hb_due_s
        if self._connecting is not None:
            deadline = min(deadline, self._connecting.next_try_s)
        if not self.frozen:
            if self._timers:
                deadline = min(deadline, self._timers[0][0])
            deadline = min(deadline, self._next_checkpoint_s)
            if self.transport.has_frames() or self._completions:
                deadline = now
        deadline = min(deadline, now + self.transport.poll_interval_s())
        for key, mask in self.sel.select(max(0.0, deadline - now)):
            kind, peer = key.data
            if kind == "wake":
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
            elif kind == "control":
                if mask & selectors.EVENT_WRITE:
                    self._flush_control()
                if mask & selectors.EVENT_READ:
                    self._read_control()
            else:
                self.transport.on_event((kind, peer), mask)
        self.transport.pump()
        self.transport.adopt_accepted()
        self._connect_step()
        if not self.frozen and self.engine is not None:
            self._run_completions()
            self._fire_timers()
            self._deliver_frames()
        self.transport.flush()
        self._flush_control()
        self._flush_trace()
        now = time.monotonic()
        if now >= self._hb_due_s:
            self._heartbeat()

    def _read_control(self) -> None:
        sock = self._control
        assert sock is not None
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # The supervisor is gone: never outlive it.
            self.log("supervisor_gone")
            self.stopping = True
            self._control = None
            return
        try:
            messages = [check_from_supervisor(m) for m in self._control_reader.feed(data)]
        except WireError as exc:
            # Undecodable or wrongly shaped: the link is unusable from here on. Exit; the
            # supervisor sees the link close and recovers this rank like a crash.
            self.log("bad_control_frame", why=str(exc))
            self.stopping = True
            return
        for msg in messages:
            self._on_control(msg)

    def _run_completions(self) -> None:
        engine = self.engine
        assert engine is not None
        while True:
            with self._completions_lock:
                if not self._completions:
                    return
                item = self._completions.popleft()
            kind = item[0]
            if kind == "released":
                continue
            if kind == "gc_failed":
                self.log("gc_failed", step=item[1], why=item[2])
                continue
            if item[1] != self.generation:
                continue  # written for an engine that a restore replaced
            if kind in ("persisted", "write_failed"):
                index = int(item[2])
                self._saving.discard(index)
                if self._basic_deferred and not self._saving:
                    self._basic_deferred = False
                    self._next_checkpoint_s = time.monotonic()
                if index in self._discarded_saving:
                    self._discarded_saving.discard(index)
                    continue
            if kind == "persisted":
                engine.checkpoint_persisted(int(item[2]))
            elif kind == "write_failed":
                engine.checkpoint_write_failed(int(item[2]), str(item[3]))
            elif kind == "logged":
                engine.message_logged(int(item[2]))

    def _fire_timers(self) -> None:
        engine = self.engine
        assert engine is not None
        now = time.monotonic()
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, token, kind, key, gen = heapq.heappop(timers)
            if gen != self.generation:
                continue
            if kind == "p":
                if self._proto_timers.get(key) == token:
                    del self._proto_timers[key]
                    engine.protocol_timer_fired(key)
            else:
                timer_id, name = key
                if self._app_timers.get(name) == timer_id:
                    del self._app_timers[name]
                engine.app_timer_due(timer_id, name)
        if now >= self._next_checkpoint_s:
            if self._saving:
                # The disk is behind (large states, a busy device): requesting more would
                # queue checkpoints without bound, and message logs and commit markers queue
                # behind them, so the rank would stop delivering. Take the next one when the
                # pending save is durable.
                self._next_checkpoint_s = float("inf")
                self._basic_deferred = True
            else:
                self._next_checkpoint_s = now + self.config.interval_s
                engine.checkpoint_requested()

    def _deliver_frames(self) -> None:
        engine = self.engine
        assert engine is not None
        transport = self.transport
        budget = _FRAMES_PER_TURN
        while budget > 0 and transport.has_frames():
            for src in transport.inn:
                for _ in range(_FRAMES_PER_CHANNEL):
                    f = transport.next_frame(src)
                    if f is None:
                        break
                    budget -= 1
                    if f[0] == APP:
                        engine.message_arrived(src, int(f[2]), f[3], f[4])
                    elif f[0] == CONTROL:
                        self._trace("control_recv", src=src, what=_what(f[2]))
                        engine.control_arrived(src, f[2])


def _what(control: PlainData) -> str:
    if isinstance(control, dict):
        for key in ("type", "kind", "what", "op"):
            if key in control:
                return str(control[key])
    if isinstance(control, list | tuple) and control and isinstance(control[0], str):
        return control[0]
    return type(control).__name__


def main() -> None:
    """Entry point: boot data (msgpack) on stdin, then run until stopped."""
    from snapline.runtime.local.wire import unpack

    boot = unpack(sys.stdin.buffer.read())
    sys.stdin.close()
    run_worker(Worker(boot))


def run_worker(worker: Worker) -> None:
    """Run ``worker``; on an exception tell the supervisor why, then exit with status 3."""
    try:
        worker.run()
    except Exception as exc:
        worker.log("fatal", error=repr(exc), traceback=traceback.format_exc())
        with contextlib.suppress(Exception):
            worker._send_control_link(fatal_report(worker.rank, exc))
            worker._flush_control_blocking()
        raise SystemExit(3) from exc


def fatal_report(rank: int, exc: Exception) -> dict[str, Any]:
    """The ``fatal`` control message: what the supervisor needs to tell the user why.

    ``kind`` is ``encode`` (the state cannot be checkpointed), ``app`` (raised in the user's
    code: the traceback holds a frame of theirs) or ``internal``; ``traceback`` keeps only the
    user's frames, ``signature`` identifies the exception to recognise it when raised again.
    """
    if isinstance(exc, EncodeError):
        kind = "encode"
    else:
        kind = "app" if raised_in_user_code(exc) else "internal"
    return {
        "op": "fatal",
        "rank": rank,
        "error": repr(exc),
        "kind": kind,
        "message": str(exc),
        "traceback": user_traceback(exc),
        "signature": error_signature(exc),
    }


if __name__ == "__main__":
    main()
