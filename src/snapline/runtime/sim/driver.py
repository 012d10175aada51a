"""The deterministic discrete-event driver: one seeded run of a job under a fault model.

Theory of operation
-------------------
Time is simulated. A heap of ``(time, seq, kind, ...)`` entries orders everything that will
happen; ``seq`` is a global counter, so ties break in the order events were scheduled and the
same seed gives the same run byte for byte. One ``random.Random(seed)`` draws every delay and
fault; each rank's ``ctx.random`` is seeded from the same seed and saved with checkpoints.

Every rank runs in a ``RankEngine``; this class is its ``EnginePort``. The network gives each
channel a delay distribution; on FIFO networks a message never overtakes an earlier one on its
channel (application and control messages alike); with ``reorder`` (only for protocols whose
``needs_fifo`` is False) every message draws its own delay, and the engine re-sequences
application messages while control messages may pass them. Loss and duplication happen under a
reliable-channel layer: a lost packet is resent after ``rto_s`` (it arrives late, holding up
its channel on FIFO networks), a duplicate is dropped by the layer; partitions hold packets
until they heal. The protocol always sees reliable channels.

Faults. A crash kills a rank's engine: its volatile state, arrived messages, timers and
checkpoint writes in progress are gone, and messages arriving while it is down are lost (the
recovery plan must re-deliver what the restored cut needs). Crashes come from ``crash_at``,
from a Poisson process (``crash_rate`` per rank per second, in bursts of up to
``crash_burst`` ranks), during checkpoint writes (``crash_in_write``) and during recoveries
(``crash_in_recovery``), at most ``max_crashes`` and never after ``faults_until_s`` -- the
safety phase; afterwards the job must finish (liveness phase), or the run fails as stalled.

Recovery. ``detect_delay_s`` after a crash every live rank gets ``PeerFailed``;
``restart_delay_s`` later the driver builds the ``RecoveryView``, calls ``plan_recovery``,
checks the plan, restores the planned ranks (each gets a new incarnation), drops what the
rollback un-sent (in-flight and arrived messages of old incarnations above the restored send
counter; control messages of old incarnations), replays, checks the recovered cut and tells
every live rank ``RecoveryCompleted``. A crash before that point starts the recovery over with
the union of failed ranks.

The job ends when every rank finished, every requested message was delivered, no application
timer is pending and no recovery is under way.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Any

import msgpack

from snapline.apps import app_spec
from snapline.apps.spec import AppSpec, CutView
from snapline.errors import ConfigError, ProtocolError
from snapline.protocols import protocol_class
from snapline.protocols.base import (
    PlainData,
)
from snapline.protocols.base import Protocol as CheckpointProtocol
from snapline.runtime.engine import CheckpointImage, JobTally, RankEngine
from snapline.runtime.process import Process
from snapline.runtime.sim.checks import (
    ChannelChecker,
    CheckFailed,
    CheckOutcome,
    CheckpointPatternChecker,
    OutputChecker,
    RecoveryChecker,
)
from snapline.runtime.sim.config import Delay, SimConfig
from snapline.runtime.sim.network import Network, describe_control
from snapline.runtime.sim.recovery import recover
from snapline.runtime.sim.storage import StableStorage, StorageMisuse
from snapline.runtime.trace import Trace, TraceWriter
from snapline.topology import Topology

_ARRIVE = 0
_CONTROL = 1
_APP_TIMER = 2
_PROTO_TIMER = 3
_PERSIST = 4
_LOGGED = 5
_CKPT_REQ = 6
_CRASH = 7
_RANDOM_CRASH = 8
_DETECT = 9
_RECOVER = 10
_DUP = 11

_packb = msgpack.packb


class Simulator:
    """Runs one ``SimConfig``; ``run()`` returns the raw pieces ``run_simulation`` packages."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.n = n = config.n
        self.rng = random.Random(config.seed)
        self.spec: AppSpec | None = None
        self.params: dict[str, Any] = {}
        if config.process_factory is not None:
            factory = config.process_factory
            self.factory: Callable[[int, int], Process] = factory
            topology_spec = config.topology or "complete"
        else:
            assert config.app is not None
            spec = app_spec(config.app)
            self.spec = spec
            params = spec.resolve_params(config.app_params)
            self.params = params
            self.factory = lambda rank, size: spec.factory(rank, size, params)
            topology_spec = config.topology or spec.default_topology
        self.topology = Topology.parse(topology_spec, n, seed=config.seed)
        self.edges: list[tuple[int, int]] = sorted(self.topology.edges)
        # As the local runtime does: protocols may route or check reachability on the job's
        # channel list.
        self.protocol_options: dict[str, Any] = {
            "edges": [list(e) for e in self.edges],
            **config.protocol_options,
        }
        # One pass over the edges (Topology.inbound/outbound scan all edges per rank).
        inbound: list[list[int]] = [[] for _ in range(n)]
        outbound: list[list[int]] = [[] for _ in range(n)]
        for src, dst in self.edges:
            outbound[src].append(dst)
            inbound[dst].append(src)
        self.inbound = [sorted(x) for x in inbound]
        self.outbound = outbound
        self.inbound_sets = [frozenset(x) for x in inbound]
        self.outbound_sets = [frozenset(x) for x in outbound]
        self.protocol_cls: type[CheckpointProtocol] = (
            config.protocol_cls
            if config.protocol_cls is not None
            else protocol_class(config.protocol)
        )
        if config.reorder and self.protocol_cls.needs_fifo:
            raise ConfigError(
                f"protocol {self.protocol_cls.name!r} needs FIFO channels; run it without --reorder"
            )
        self.fifo = not config.reorder

        self.now_s = 0.0
        self.heap: list[tuple[Any, ...]] = []
        self.seq = 0
        #: The last control message sent and its encoded size (see ``send_control``).
        self._last_control: object = None
        self._last_control_bytes = 0
        self.engines: list[RankEngine | None] = [None] * n
        self.epoch = [0] * n
        self.incarnation = [0] * n
        self.restores: list[list[tuple[int, dict[int, int]]]] = [[] for _ in range(n)]
        self.tally = JobTally()
        self.finished = 0
        self.down: set[int] = set()
        self.failed: set[int] = set()
        self.announced: set[int] = set()
        self.crash_time: dict[int, float] = {}
        self.recovery_gen = 0
        self.recovery_phase: str | None = None
        self.t_first_failure = 0.0
        self.t_detect = 0.0
        self.crashes = 0
        self.recoveries: list[dict[str, Any]] = []
        self.storage = StableStorage(n)
        self.output_checker = OutputChecker(n)
        #: What the world has seen: per rank, the released outputs in id order.
        self.outputs: list[list[object]] = self.output_checker.released
        self.protocol_timers: dict[tuple[int, str], int] = {}
        self.dup_pending: dict[int, bool] = {}

        rng = self.rng
        self.network = Network(config, rng, fifo=self.fifo)
        persist = Delay.parse(config.persist_delay)
        self.persist_delay = [
            Delay.parse(config.slow_disks.get(r, persist)).sampler(rng) for r in range(n)
        ]
        self.log_delay = Delay.parse(config.log_delay).sampler(rng)
        self.disk_free_s = [0.0] * n
        self.log_free_s = [0.0] * n
        self.dup_rate = config.dup_rate

        self.trace_on = config.trace
        self.writer: TraceWriter | None = None
        if config.trace:
            self.writer = TraceWriter(
                n=n,
                protocol=config.protocol,
                app=config.app or "custom",
                seed=config.seed,
                edges=self.edges,
            )
        self.channels = ChannelChecker(n, track_payloads=config.check_payloads)
        self.check_sent = self.channels.sent if config.check_payloads else None
        pattern = self.protocol_cls.checkpoint_pattern
        #: The protocol's promise about its checkpoints, checked at the end of every run.
        self.pattern: CheckpointPatternChecker | None = (
            CheckpointPatternChecker(n, pattern) if pattern is not None else None
        )
        if not config.trace and self.pattern is None:
            # Hot path: without a trace, deliveries go straight to the checker (one Python
            # call less per message). Set through __dict__ because it shadows a method.
            self.__dict__["delivered"] = self.channels.delivered
        self.recovery_checker = RecoveryChecker()
        self.invariant_runs = 0
        self.progress_s = 0.0
        self.progress = (0, 0, 0)
        self.retired: dict[str, int] = {}
        self.stats: dict[str, Any] = {
            "piggyback_bytes": 0,
            "control_bytes": 0,
            "duplicates_dropped": 0,
            "stale_dropped": 0,
            "lost_to_crash": 0,
            "checkpoint_writes_lost": 0,
            "checkpoints_committed": 0,
            "checkpoints_discarded": 0,
            "checkpoints_voided": 0,
            "garbage_collected": 0,
            "messages_logged": 0,
        }

    # ----------------------------------------------------------------------------------------
    # Building engines.

    def _app_rng(self, rank: int) -> random.Random:
        # A string seed is hashed with SHA-512: stable across runs and Python processes.
        return random.Random(f"snapline-app:{self.config.seed}:{rank}")

    def protocol_args(self, rank: int) -> dict[str, Any]:
        """Keyword arguments every protocol object of ``rank`` is built with."""
        return {
            "n": self.n,
            "inbound": self.inbound_sets[rank],
            "outbound": self.outbound_sets[rank],
            "options": self.protocol_options,
        }

    def fresh_engine(self, rank: int, protocol: CheckpointProtocol) -> RankEngine:
        """An engine for ``rank`` in its initial state (before ``on_start``)."""
        return RankEngine(
            rank=rank,
            n=self.n,
            inbound=self.inbound[rank],
            outbound=self.outbound[rank],
            process=self.factory(rank, self.n),
            protocol=protocol,
            port=self,
            rng=self._app_rng(rank),
            tally=self.tally,
            trace=self.trace_on,
            incarnation=self.incarnation[rank],
        )

    def retire(self, engine: RankEngine) -> None:
        """Keep the counts of an engine that is being replaced (crash or rollback)."""
        for key, value in engine.stats.items():
            self.retired[key] = self.retired.get(key, 0) + value
        for key, value in engine.protocol.stats.items():
            pkey = f"protocol.{key}"
            self.retired[pkey] = self.retired.get(pkey, 0) + value

    # ----------------------------------------------------------------------------------------
    # EnginePort.

    def now(self) -> float:
        """Simulated time in seconds."""
        return self.now_s

    def _push(self, t: float, kind: int, *args: object) -> None:
        heappush(self.heap, (t, self.seq, kind, *args))
        self.seq += 1

    def transmit(self, src: int, dst: int, seq: int, payload: object, piggyback: PlainData) -> None:
        """Put application message ``seq`` on channel ``src -> dst``."""
        t = self.network.arrival_time(src, dst, self.now_s)
        msg = (src, dst, seq, payload, piggyback, self.incarnation[src])
        tid = self.seq
        heappush(self.heap, (t, tid, _ARRIVE, msg))
        self.seq = tid + 1
        if self.dup_rate and self.rng.random() < self.dup_rate:
            self.dup_pending[tid] = False
            self._push(t + self.network.link_delay(src, dst, self.now_s), _DUP, tid, msg)
        if piggyback is not None:
            self.stats["piggyback_bytes"] += len(_packb(piggyback))
        if self.check_sent is not None:
            self.check_sent(src, dst, seq, payload)
        if self.pattern is not None:
            self.pattern.sent(src, dst, seq)
        if self.writer is not None:
            self.writer.event(
                self.now_s,
                src,
                "send",
                {
                    "dst": dst,
                    "seq": seq,
                    "piggyback_bytes": 0 if piggyback is None else len(_packb(piggyback)),
                },
            )

    def send_control(self, src: int, dst: int, control: PlainData) -> None:
        """Send a protocol control message."""
        t = self.network.arrival_time(src, dst, self.now_s)
        # A protocol that sends one control to many ranks (a flood, a batch of gc summaries)
        # hands the same object over for each: encode it once for the byte count.
        if control is not self._last_control:
            self._last_control = control
            self._last_control_bytes = len(_packb(control))
        self.stats["control_bytes"] += self._last_control_bytes
        self._push(t, _CONTROL, (src, dst, control, self.epoch[src], self.epoch[dst]))
        if self.writer is not None:
            self.writer.event(
                self.now_s, src, "control_send", {"dst": dst, "what": describe_control(control)}
            )

    def persist_checkpoint(self, rank: int, image: CheckpointImage) -> None:
        """Start writing a checkpoint; it completes after the rank's disk delay."""
        try:
            self.storage.begin_write(rank, image, self.now_s)
        except StorageMisuse as exc:
            raise self._misuse(rank, image.record.index, exc) from None
        if self.pattern is not None:
            self.pattern.checkpoint(rank, image.record.index)
        start = max(self.now_s, self.disk_free_s[rank])
        done = start + self.persist_delay[rank]()
        self.disk_free_s[rank] = done
        self._push(done, _PERSIST, rank, self.epoch[rank], image.record.index)
        if self.config.crash_in_write and self.rng.random() < self.config.crash_in_write:
            self._push(self.rng.uniform(self.now_s, done), _CRASH, (rank,))

    def attach_to_checkpoint(self, rank: int, index: int, key: str, meta: PlainData) -> None:
        """Store ``meta`` with a checkpoint (pending or committed)."""
        try:
            self.storage.attach(rank, index, key, meta)
        except StorageMisuse as exc:
            raise self._misuse(rank, index, exc) from None

    def commit_checkpoint(self, rank: int, index: int) -> None:
        """Make a persisted checkpoint eligible for recovery."""
        try:
            self.storage.commit(rank, index)
        except StorageMisuse as exc:
            raise self._misuse(rank, index, exc) from None
        self.stats["checkpoints_committed"] += 1

    def discard_checkpoint(self, rank: int, index: int) -> None:
        """Drop a checkpoint that will never commit."""
        try:
            self.storage.discard(rank, index)
        except StorageMisuse as exc:
            raise self._misuse(rank, index, exc) from None
        self.stats["checkpoints_discarded"] += 1

    def collect_garbage(self, rank: int, before_index: int) -> None:
        """Delete committed checkpoints below ``before_index``."""
        self.stats["garbage_collected"] += self.storage.collect_garbage(rank, before_index)

    def set_protocol_timer(self, rank: int, name: str, delay_s: float) -> None:
        """Arm a protocol timer (re-setting a name replaces it)."""
        token = self.seq
        self.protocol_timers[(rank, name)] = token
        self._push(self.now_s + delay_s, _PROTO_TIMER, rank, self.epoch[rank], name, token)

    def set_app_timer(self, rank: int, timer_id: int, name: str, delay_s: float) -> None:
        """Arm an application timer."""
        # One per application message in timer-driven apps: push without _push's *args.
        tid = self.seq
        heappush(
            self.heap,
            (self.now_s + delay_s, tid, _APP_TIMER, rank, self.epoch[rank], timer_id, name),
        )
        self.seq = tid + 1

    def log_message(self, rank: int, entry_id: int, entry: PlainData) -> None:
        """Write a message-log entry; it is stable after the log delay."""
        done = max(self.now_s, self.log_free_s[rank]) + self.log_delay()
        self.log_free_s[rank] = done
        self._push(done, _LOGGED, rank, self.epoch[rank], entry_id, entry)

    def release_output(self, rank: int, first_id: int, items: list[object]) -> int:
        """Outputs reach the outside world (each id once; the checker sees re-releases)."""
        return len(self.output_checker.release(rank, first_id, items))

    def delivered(self, rank: int, src: int, seq: int, payload: object) -> None:
        """Check and record a delivery."""
        self.channels.delivered(rank, src, seq, payload)
        if self.pattern is not None:
            self.pattern.delivered(rank, src, seq)
        if self.writer is not None:
            self.writer.event(self.now_s, rank, "deliver", {"src": src, "seq": seq})

    def rank_finished(self, rank: int) -> None:
        """Count a finished rank."""
        self.finished += 1

    def record(self, rank: int, kind: str, **fields: object) -> None:
        """Append a trace event."""
        if self.writer is not None:
            self.writer.event(self.now_s, rank, kind, fields)

    def _misuse(self, rank: int, index: int, exc: Exception) -> ProtocolError:
        return ProtocolError(
            protocol=self.config.protocol,
            rank=rank,
            state="storage",
            event=f"checkpoint {index}",
            why=str(exc),
        )

    # ----------------------------------------------------------------------------------------
    # The event loop.

    def run(self) -> tuple[list[object], dict[str, Any], list[CheckOutcome], Trace | None]:
        """Run the job to its end; raises ``CheckFailed`` or ``ProtocolError`` on a violation."""
        config = self.config
        wall_start = time.perf_counter()
        n = self.n
        for rank in range(n):
            protocol = self.protocol_cls(rank=rank, **self.protocol_args(rank))
            self.engines[rank] = self.fresh_engine(rank, protocol)
        if config.interval_s is not None:
            requests = config.checkpoint_requests or getattr(
                self.protocol_cls, "checkpoint_requests", "all"
            )
            for rank in range(n) if requests == "all" else [0]:
                self._push(self.rng.uniform(0.0, config.interval_s), _CKPT_REQ, rank)
        for rank, t in config.crash_at:
            self._push(t, _CRASH, (rank,))
        if config.crash_rate > 0 and config.max_crashes > 0:
            self._push(self.rng.expovariate(config.crash_rate * n), _RANDOM_CRASH)
        for rank in range(n):
            engine = self.engines[rank]
            assert engine is not None
            engine.start()

        heap = self.heap
        engines = self.engines
        tally = self.tally
        max_time_s = config.max_time_s
        events = 0
        while True:
            if (
                self.finished == n
                and tally.requested == tally.delivered
                and self.recovery_phase is None
                # As on real processes: a finished rank's pending timers still run.
                and not any(e is not None and e.app_timers_pending for e in engines)
            ):
                break
            if not heap:
                raise CheckFailed("termination", self._stall_report("no events left"))
            item = heappop(heap)
            t = item[0]
            if t > max_time_s:
                raise CheckFailed(
                    "termination", self._stall_report(f"not finished by max_time_s={max_time_s}")
                )
            self.now_s = t
            kind = item[2]
            events += 1
            if kind == _ARRIVE:
                if self.dup_pending:
                    seen = self.dup_pending.get(item[1])
                    if seen is not None:
                        if seen:
                            # A duplicate got here first; the reliable layer drops this copy.
                            self.stats["duplicates_dropped"] += 1
                            del self.dup_pending[item[1]]
                            continue
                        self.dup_pending[item[1]] = True
                src, dst, seq, payload, piggyback, inc = item[3]
                if inc != self.incarnation[src] and self._revoked(src, dst, seq, inc):
                    self.stats["stale_dropped"] += 1
                    continue
                engine = engines[dst]
                if engine is None:
                    self.stats["lost_to_crash"] += 1
                    continue
                engine.message_arrived(src, seq, payload, piggyback)
            elif kind == _APP_TIMER:
                rank, epoch = item[3], item[4]
                engine = engines[rank]
                if engine is not None and epoch == self.epoch[rank]:
                    engine.app_timer_due(item[5], item[6])
            elif kind == _CONTROL:
                self._control_arrived(item[3])
            elif kind == _DUP:
                self._duplicate_arrived(item[3], item[4])
            else:
                self._slow_event(item)
            if events & 0xFFF == 0:
                if events > config.max_events:
                    raise CheckFailed(
                        "termination", self._stall_report(f"over max_events={config.max_events}")
                    )
                progress = (tally.requested, tally.delivered, self.finished)
                if progress != self.progress:
                    self.progress, self.progress_s = progress, t
                elif t - self.progress_s > config.stall_timeout_s and not self.down:
                    raise CheckFailed(
                        "termination",
                        self._stall_report(f"no progress for {config.stall_timeout_s:g} s"),
                    )
        wall_s = time.perf_counter() - wall_start
        return self._finish(events, wall_s)

    def _slow_event(self, item: tuple[Any, ...]) -> None:
        kind = item[2]
        engines = self.engines
        if kind == _PROTO_TIMER:
            rank, epoch, name, token = item[3:7]
            engine = engines[rank]
            if (
                engine is not None
                and epoch == self.epoch[rank]
                and self.protocol_timers.get((rank, name)) == token
            ):
                del self.protocol_timers[(rank, name)]
                engine.protocol_timer_fired(name)
        elif kind == _PERSIST:
            rank, epoch, index = item[3:6]
            engine = engines[rank]
            if engine is None or epoch != self.epoch[rank]:
                return
            if self.storage.finish_write(rank, index):
                engine.checkpoint_persisted(index)
        elif kind == _LOGGED:
            rank, epoch, entry_id, entry = item[3:7]
            engine = engines[rank]
            if engine is None or epoch != self.epoch[rank]:
                return
            self.storage.logs[rank].append(entry)
            self.stats["messages_logged"] += 1
            engine.message_logged(entry_id)
        elif kind == _CKPT_REQ:
            rank = item[3]
            engine = engines[rank]
            if engine is not None:
                engine.checkpoint_requested()
            assert self.config.interval_s is not None
            self._push(self.now_s + self.config.interval_s, _CKPT_REQ, rank)
        elif kind == _CRASH:
            for rank in item[3]:
                self._crash(rank)
        elif kind == _RANDOM_CRASH:
            self._random_crash()
        elif kind == _DETECT:
            if item[3] == self.recovery_gen:
                self._detect()
        elif kind == _RECOVER:
            if item[3] == self.recovery_gen:
                recover(self)
        else:  # pragma: no cover - every kind is handled above
            raise AssertionError(f"unknown event kind {kind}")

    def _duplicate_arrived(self, tid: int, msg: tuple[Any, ...]) -> None:
        if self.dup_pending.get(tid):
            # The original came first: the reliable layer drops the copy.
            self.stats["duplicates_dropped"] += 1
            del self.dup_pending[tid]
            return
        # The copy overtook the original: it stands in for it (the original is dropped later).
        self.dup_pending[tid] = True
        src, dst, seq, payload, piggyback, inc = msg
        if inc != self.incarnation[src] and self._revoked(src, dst, seq, inc):
            self.stats["stale_dropped"] += 1
            return
        engine = self.engines[dst]
        if engine is None:
            self.stats["lost_to_crash"] += 1
            return
        engine.message_arrived(src, seq, payload, piggyback)

    def _revoked(self, src: int, dst: int, seq: int, inc: int) -> bool:
        # A message of an older incarnation is void if a later restore of its sender rolled
        # back to before sending it (exact re-executions are not listed: nothing is void).
        for restored_inc, sent in self.restores[src]:
            if restored_inc > inc and seq > sent.get(dst, 0):
                return True
        return False

    def _control_arrived(self, msg: tuple[Any, ...]) -> None:
        src, dst, control, src_epoch, dst_epoch = msg
        engine = self.engines[dst]
        if engine is None or src_epoch != self.epoch[src] or dst_epoch != self.epoch[dst]:
            self.stats["stale_dropped"] += 1
            return
        if self.writer is not None:
            self.writer.event(
                self.now_s, dst, "control_recv", {"src": src, "what": describe_control(control)}
            )
        engine.control_arrived(src, control)

    # ----------------------------------------------------------------------------------------
    # Faults and recovery.

    def _faults_allowed(self) -> bool:
        until = self.config.faults_until_s
        return self.crashes < self.config.max_crashes and (until is None or self.now_s <= until)

    def _random_crash(self) -> None:
        config = self.config
        if not self._faults_allowed():
            return
        burst = self.rng.randint(1, config.crash_burst)
        for rank in sorted(self.rng.sample(range(self.n), min(burst, self.n))):
            self._crash(rank)
        self._push(self.now_s + self.rng.expovariate(config.crash_rate * self.n), _RANDOM_CRASH)

    def _crash(self, rank: int) -> None:
        engine = self.engines[rank]
        if engine is None or not self._faults_allowed():
            return
        self.crashes += 1
        self.retire(engine)
        if engine.done:
            self.finished -= 1
        self.engines[rank] = None
        self.epoch[rank] += 1
        self.stats["checkpoint_writes_lost"] += self.storage.lose_writes(rank)
        self.disk_free_s[rank] = self.now_s
        if not self.down:
            self.t_first_failure = self.now_s
        self.down.add(rank)
        self.failed.add(rank)
        self.crash_time[rank] = self.now_s
        if self.writer is not None:
            self.writer.event(self.now_s, rank, "crash", {})
        self.recovery_gen += 1
        self.recovery_phase = "detecting"
        self._push(self.now_s + self.config.detect_delay_s, _DETECT, self.recovery_gen)

    def _detect(self) -> None:
        self.t_detect = self.now_s
        newly = sorted(self.failed - self.announced)
        self.announced.update(newly)
        for engine in self.engines:
            if engine is not None:
                for rank in newly:
                    engine.peer_failed(rank)
        self.recovery_phase = "restoring"
        done = self.now_s + self.config.restart_delay_s
        self._push(done, _RECOVER, self.recovery_gen)
        if self.config.crash_in_recovery and self.rng.random() < self.config.crash_in_recovery:
            self._push(self.rng.uniform(self.now_s, done), _CRASH, (self.rng.randrange(self.n),))

    # ----------------------------------------------------------------------------------------
    # Checks and the end of a run.

    def check_invariant(self, when: str) -> None:
        """Check the app invariant on the current global state (a consistent cut)."""
        spec = self.spec
        if spec is None or spec.check_cut is None or not self.channels.track_payloads:
            return
        live = [e for e in self.engines if e is not None]
        in_transit: list[object] = self.channels.in_transit({e.rank: e.sent for e in live})
        for engine in live:
            in_transit.extend(payload for _, payload in engine.in_transit_unsent())
        cut = CutView(
            n=self.n,
            params=self.params,
            states={e.rank: e.process.state() for e in live},
            in_transit=in_transit,
        )
        self.invariant_runs += 1
        problem = spec.check_cut(cut)
        if problem is not None:
            raise CheckFailed("app invariant", f"{problem} ({when}, t={self.now_s:g})")

    def _stall_report(self, why: str) -> str:
        parts = [f"the job did not finish: {why} at t={self.now_s:g}"]
        unfinished = [r for r, e in enumerate(self.engines) if e is None or not e.done]
        if unfinished:
            parts.append(f"unfinished ranks {unfinished[:20]}")
        stuck = []
        for src, dst in self.edges:
            s, d = self.engines[src], self.engines[dst]
            if s is not None and d is not None and d.received[src] < s.sent[dst]:
                stuck.append(f"{src}->{dst} ({d.received[src]}/{s.sent[dst]} delivered)")
        if stuck:
            parts.append(f"undelivered messages on channels {', '.join(stuck[:10])}")
        held = [e.rank for e in self.engines if e is not None and e.in_transit_unsent()]
        if held:
            parts.append(f"sends held by the protocol at ranks {held[:20]}")
        if self.down:
            parts.append(f"ranks down: {sorted(self.down)}")
        return "; ".join(parts)

    def _finish(
        self, events: int, wall_s: float
    ) -> tuple[list[object], dict[str, Any], list[CheckOutcome], Trace | None]:
        live = [e for e in self.engines if e is not None]
        assert len(live) == self.n
        self.channels.check_end({e.rank: e.sent for e in live})
        if self.pattern is not None:
            self.pattern.check_end()
        self.check_invariant("at the end")
        # The job has ended: nothing can roll it back, so what protocols hold is released.
        for engine in live:
            engine.release_held_outputs()
        self.output_checker.check_end([e.output_id for e in live])
        results = [e.process.result() for e in live]
        if self.spec is not None and self.spec.check_final is not None:
            problem = self.spec.check_final(results, self.params, self.n)
            if problem is not None:
                raise CheckFailed("app invariant", problem)
        totals = dict(self.retired)
        for engine in live:
            for key, value in engine.stats.items():
                totals[key] = totals.get(key, 0) + value
            for key, value in engine.protocol.stats.items():
                totals[f"protocol.{key}"] = totals.get(f"protocol.{key}", 0) + value
        delivered = totals.get("messages_delivered", 0)
        stats: dict[str, Any] = {
            "sim_time_s": self.now_s,
            "wall_s": wall_s,
            "events": events,
            "messages_sent": totals.get("messages_sent", 0),
            "messages_delivered": delivered,
            "msgs_per_s": delivered / wall_s if wall_s > 0 else 0.0,
            "checkpoints_basic": totals.get("checkpoints_basic", 0),
            "checkpoints_forced": totals.get("checkpoints_forced", 0),
            "control_messages": totals.get("control_messages", 0),
            "replayed": totals.get("replayed", 0),
            "outputs_released": totals.get("outputs_released", 0),
            "crashes": self.crashes,
            "recoveries": len(self.recoveries),
            "ranks_rolled_back": sum(len(r["restore"]) for r in self.recoveries),
            "work_lost_s": sum(sum(r["rolled_back_s"].values()) for r in self.recoveries),
            "max_rollback_s": max(
                (v for r in self.recoveries for v in r["rolled_back_s"].values()), default=0.0
            ),
            "inconsistent_cuts_before_replay": self.recovery_checker.inconsistent_before_replay,
            **self.stats,
            "retransmits": self.network.retransmits,
            "blocking_s": totals.get("blocking_us", 0) / 1e6,
            "bytes_stored": self.storage.bytes_stored,
            "unsized_checkpoints": self.storage.unsized_checkpoints,
            "partition_delays": self.network.partition_delays,
            **self.storage.stored_count(),
            "protocol": {
                k.removeprefix("protocol."): v for k, v in sorted(totals.items()) if "." in k
            },
        }
        checks = [
            CheckOutcome(self.channels.name, True, stats["messages_delivered"]),
            CheckOutcome(self.recovery_checker.name, True, self.recovery_checker.runs),
            CheckOutcome(self.output_checker.name, True, self.output_checker.runs),
            CheckOutcome("app invariant", True, self.invariant_runs),
            CheckOutcome("termination", True, 1),
        ]
        if self.pattern is not None:
            checks.append(CheckOutcome(self.pattern.name, True, self.pattern.runs))
        # Wall-clock figures differ between identical runs; the trace holds simulated facts only.
        trace = (
            self.writer.finish(
                {k: v for k, v in stats.items() if k not in ("wall_s", "msgs_per_s")}
            )
            if self.writer is not None
            else None
        )
        return results, stats, checks, trace
