"""Coordinated, non-blocking checkpointing: Chandy–Lamport snapshots with recorded channels.

Theory of operation
-------------------
Assumptions: FIFO channels (a marker separates the messages sent before the sender's local
checkpoint from those sent after it). Every rank that initiates must reach every rank through
the directed graph. Without topology knowledge that means a strongly connected graph, and the
constructor rejects what it can see locally (a rank with no inbound or no outbound channel);
with ``options["edges"]`` (the job's channel list) a rank that cannot reach every rank declines
to initiate (``requests_declined``) and the constructor raises ``ConfigError`` if no rank can.

Snapshots. Any rank may initiate on ``CheckpointRequested``. A snapshot id is ``(incarnation,
clock, initiator)``: ``clock`` is a Lamport clock over snapshots (markers carry it), so ids are
unique and their order follows causality; "newer" always means the larger id. On initiating,
or on the first marker of an id, a rank takes a local checkpoint (``TakeCheckpoint``), sends a
marker on every outbound channel, and records every inbound channel whose marker is not in yet
(all but the marker's own channel). A message arriving on a channel that one or more snapshots
record is recorded in each of them (``RecordChannelMessage``) and delivered at once: sends are
never held. When markers have come in on every inbound channel, the recorded channel state is
attached to the checkpoint (``AttachToCheckpoint``, key ``channel_state``) and
``SnapshotComplete`` is given; ``Commit`` follows once the checkpoint is also persisted.
Several snapshots run at once without interfering: each has its own checkpoint and recording.

Recovery (``plan_recovery``): a global snapshot is usable only when every rank committed its
part. Every rank restores its part of the newest such snapshot (or the initial state if none),
and gets the recorded messages re-delivered per channel in order. Recorded messages are the
in-transit ones: their seqs are exactly ``received+1 .. sent`` of the cut (checked). Everyone
rolls back; a new incarnation starts and markers of older incarnations are ignored.

Garbage and output commit. A rank that commits its part of a snapshot reports it to one
collector rank (option ``gc_collector``, default 0) along a shortest path (``committed``
control; ranks in between forward it unread). Once every rank has reported a snapshot S, and
S is newer than the last one announced, the collector announces "S is committed everywhere"
down its shortest-path tree (``complete``; each rank forwards it to the ranks below it). A rank
that learns it releases the output requested before its part of S and collects checkpoints
below its part of S, but never below a part of a newer (larger id) snapshot: so the newest
snapshot committed everywhere is never collected anywhere, and that is the one
``plan_recovery`` picks. Reports and announcements of an older incarnation are ignored (every
rank restores on a recovery, the collector too, from a snapshot all know). Markers used to
carry this knowledge as deltas: n ranks' ids crossing every channel, O(n x E) per snapshot, the
largest cost of a 32-rank simulation and of a 1,000-rank one, and output waited for the next
snapshot's markers; the collector needs 2(n-1) short messages per snapshot (times the tree's
depth on a sparse graph) and releases output one round trip after the last commit.

Costs: n_edges markers and one local checkpoint per rank per snapshot, plus the reports and
announcements above; the recorded messages are stored with the checkpoints; no piggyback on
application messages, no blocking.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias, assert_never

from snapline.errors import ConfigError, RecoveryError
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
    ReplayItem,
    SendControl,
    SendRequested,
    SnapshotComplete,
    TakeCheckpoint,
    TimerFired,
    Transmit,
)
from snapline.protocols.reachability import (
    INDEX_INCARNATION_SHIFT,
    initiators,
    routes_to_collector,
)

SnapshotId: TypeAlias = tuple[int, int, int]
"""``(incarnation, clock, initiator)``; larger is newer."""

#: Attachment key of the recorded channel state: ``{str(src): [[seq, payload], ...]}``.
CHANNEL_STATE_KEY = "channel_state"


class Phase(enum.Enum):
    """Whether this rank takes part in a snapshot that is not complete yet."""

    IDLE = "idle"
    SNAPSHOTTING = "snapshotting"


@dataclass(slots=True)
class _Part:
    """This rank's part of one global snapshot."""

    snapshot_id: SnapshotId
    index: int
    #: Inbound channels whose marker has not come in: they are being recorded.
    waiting: set[int]
    last_output_id: int
    recorded: dict[int, list[tuple[int, object]]] = field(default_factory=dict)
    persisted: bool = False
    complete: bool = False


def _snapshot_id(data: PlainData) -> SnapshotId:
    incarnation, clock, initiator = data
    return (int(incarnation), int(clock), int(initiator))


class ChandyLamport(Protocol):
    """One rank of Chandy–Lamport snapshots (see the module docstring)."""

    name = "chandy-lamport"
    #: One global checkpoint per interval, started by rank 0 (any rank may initiate).
    checkpoint_requests = "one"
    needs_fifo = True
    #: Sends and application timers need nothing from a snapshot (arrivals do: recording).
    passes_through = frozenset({"sends", "timers"})
    #: Arrivals are read (recorded while a snapshot records their channel), then delivered.
    message_hooks = frozenset({"arrivals"})

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
        self.may_initiate = self._check_topology()
        self.incarnation = 0
        self.clock = 0
        self.next_index = 1
        self.parts: dict[SnapshotId, _Part] = {}
        self.parts_by_index: dict[int, _Part] = {}
        #: Committed parts not yet collected: id -> (index, last output id before it).
        self.committed_parts: dict[SnapshotId, tuple[int, int]] = {}
        #: The rank that learns which snapshots are committed everywhere and announces them,
        #: and the routes to and from it.
        self.collector, self.routes = routes_to_collector(n=n, options=self.options)
        if self.routes is None:
            self._check_direct_routes()
        #: At the collector: what each rank has reported committed (ids newer than
        #: ``known_complete``).
        self.committed_by: dict[int, set[SnapshotId]] = {r: set() for r in range(n)}
        #: The newest snapshot this rank knows to be committed on every rank.
        self.known_complete: SnapshotId | None = None
        #: Snapshots whose part here failed to write: later markers of them are ignored.
        self.abandoned: set[SnapshotId] = set()
        self.last_output_id = 0
        self.released_output_id = 0
        self.collected_before = 0
        self.stats.update(
            snapshots_initiated=0,
            snapshots_committed=0,
            messages_recorded=0,
            requests_declined=0,
            stale_markers=0,
            stale_reports=0,
            checkpoints_discarded=0,
        )

    def _check_topology(self) -> bool:
        """Whether this rank may initiate; raise ``ConfigError`` when snapshots cannot work."""
        if self.n == 1:
            return True
        edges_option = self.options.get("edges")
        if edges_option is None:
            if not self.inbound or not self.outbound:
                raise ConfigError(
                    f"chandy-lamport needs every rank to reach every rank, but rank {self.rank} "
                    f"has {'no inbound' if not self.inbound else 'no outbound'} channel; use a "
                    "strongly connected topology, or pass options edges=[[src, dst], ...] so "
                    "only ranks that reach everyone initiate"
                )
            return True
        assert isinstance(edges_option, list | tuple)
        may_initiate = initiators(self.n, edges_option)
        if not may_initiate:
            raise ConfigError(
                "chandy-lamport needs a rank whose markers reach every rank, and no rank of "
                "this topology reaches all others; add channels"
            )
        return self.rank in may_initiate

    def _check_direct_routes(self) -> None:
        """Without a channel list, reports and announcements go directly: check they can."""
        direct = (
            set(range(self.n)) - {self.rank} <= self.outbound
            if self.rank == self.collector
            else self.collector in self.outbound
        )
        if self.n > 1 and not direct:
            where = (
                "has no channel to every rank"
                if self.rank == self.collector
                else f"has no channel to rank {self.collector}, the collector"
            )
            raise ConfigError(
                f"chandy-lamport routes commit reports and announcements, and rank {self.rank} "
                f"{where}; pass options edges=[[src, dst], ...] (the drivers do)"
            )

    @property
    def phase(self) -> Phase:
        """SNAPSHOTTING while any of this rank's parts still records channels."""
        return (
            Phase.SNAPSHOTTING if any(not p.complete for p in self.parts.values()) else Phase.IDLE
        )

    # ----------------------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; return the actions to carry out, in order."""
        match event:
            case SendRequested(send_id=send_id, dst=dst, payload=payload):
                return [Transmit(send_id=send_id, dst=dst, payload=payload)]
            case MessageArrived(src=src, seq=seq, payload=payload):
                return self._on_message(event, src, seq, payload)
            case ControlArrived(src=src, control=control):
                return self._on_control(event, src, control)
            case CheckpointRequested():
                if not self.may_initiate:
                    self.stats["requests_declined"] += 1
                    return []
                self.clock += 1
                self.stats["snapshots_initiated"] += 1
                self.stats["checkpoints_basic"] += 1
                return self._start_part((self.incarnation, self.clock, self.rank), came_on=None)
            case CheckpointPersisted(index=index):
                part = self._part_at(event, index)
                if part.persisted:
                    raise self.error(self.phase, event, f"checkpoint {index} persisted twice")
                part.persisted = True
                return self._maybe_commit(part)
            case CheckpointWriteFailed(index=index):
                # This part can never commit, so its snapshot is unusable; stop recording it.
                part = self._part_at(event, index)
                self._forget(part)
                self.abandoned.add(part.snapshot_id)
                self.stats["checkpoints_discarded"] += 1
                return [DiscardCheckpoint(index=index), *self._collect()]
            case TimerFired():
                raise self.error(self.phase, event, "chandy-lamport sets no timers")
            case AppTimerDue(timer_id=timer_id):
                return [FireAppTimer(timer_id=timer_id)]
            case MessageLogged():
                raise self.error(self.phase, event, "chandy-lamport logs no messages")
            case OutputRequested(output_id=output_id):
                self.last_output_id = output_id
                return []
            case PeerFailed() | RecoveryCompleted():
                # Every rank restores on a failure; nothing to clean up before that.
                return []
            case _:
                assert_never(event)

    def _on_message(
        self, event: MessageArrived, src: int, seq: int, payload: object
    ) -> list[Action]:
        return [*self.admit_arrival(src, seq, payload, None), Deliver(src=src, seq=seq)]

    def admit_arrival(
        self, src: int, seq: int, payload: object, piggyback: PlainData
    ) -> list[Action]:
        """Record the arrival where a snapshot records its channel (the arrival hook)."""
        if src not in self.inbound:
            raise self.error(
                self.phase, ("arrival", src, seq), f"message from {src}, not an inbound channel"
            )
        actions: list[Action] = []
        if self.parts:
            for part in self.parts.values():
                if src in part.waiting:
                    part.recorded.setdefault(src, []).append((seq, payload))
                    actions.append(
                        RecordChannelMessage(snapshot_id=part.snapshot_id, src=src, seq=seq)
                    )
                    self.stats["messages_recorded"] += 1
        return actions

    def _on_control(self, event: ControlArrived, src: int, control: PlainData) -> list[Action]:
        if src not in self.inbound:
            raise self.error(self.phase, event, f"control from {src}, not an inbound channel")
        kind = control.get("kind") if isinstance(control, dict) else None
        if kind not in ("marker", "committed", "complete"):
            raise self.error(self.phase, event, "control message is not a marker")
        assert isinstance(control, dict)
        try:
            snapshot_id = _snapshot_id(control["id"])
            reporter = int(control["rank"]) if kind == "committed" else self.rank
        except (KeyError, TypeError, ValueError) as exc:
            raise self.error(self.phase, event, f"malformed {kind}: {exc!r}") from None
        if snapshot_id[0] < self.incarnation:
            # From before the last recovery: drivers may drop them, and every rank restored.
            self.stats["stale_markers" if kind == "marker" else "stale_reports"] += 1
            return []
        if kind == "committed":
            if self.rank != self.collector:
                return self._forward_up(control)
            if not 0 <= reporter < self.n:
                raise self.error(self.phase, event, f"commit report of rank {reporter}")
            return self._learn_commit(reporter, snapshot_id)
        if kind == "complete":
            return self._announce(control) + self._completed(snapshot_id)
        self.clock = max(self.clock, snapshot_id[1])
        part = self.parts.get(snapshot_id)
        if part is None and snapshot_id in self.abandoned:
            return []
        if part is None:
            if snapshot_id in self.committed_parts:
                raise self.error(self.phase, event, f"marker of finished snapshot {snapshot_id}")
            # Even a snapshot older than one known committed everywhere (concurrent initiators)
            # is taken part in: the ranks that started it wait for this rank's markers.
            self.stats["checkpoints_forced"] += 1
            return self._start_part(snapshot_id, came_on=src)
        if src not in part.waiting:
            raise self.error(self.phase, event, f"second marker from {src} for {snapshot_id}")
        part.waiting.discard(src)
        return self._maybe_complete(part)

    def _start_part(self, snapshot_id: SnapshotId, *, came_on: int | None) -> list[Action]:
        index = self.next_index
        self.next_index += 1
        part = _Part(
            snapshot_id=snapshot_id,
            index=index,
            waiting=set(self.inbound) - ({came_on} if came_on is not None else set()),
            last_output_id=self.last_output_id,
        )
        self.parts[snapshot_id] = part
        self.parts_by_index[index] = part
        meta = {
            "snapshot_id": list(snapshot_id),
            "clock": self.clock,
            "last_output_id": self.last_output_id,
        }
        # Markers first: they only have to follow what this rank sent before the checkpoint and
        # precede what it sends after, and nothing is sent between two actions of one event. A
        # driver that writes queued frames out before it starts the save (the local runtime
        # does) thus has the markers on their way while the state is written.
        marker = {"kind": "marker", "id": list(snapshot_id)}
        actions: list[Action] = []
        for dst in sorted(self.outbound):
            actions.append(SendControl(dst=dst, control=marker))
            self.stats["control_messages"] += 1
        actions.append(TakeCheckpoint(index=index, forced=came_on is not None, meta=meta))
        return actions + self._maybe_complete(part)

    def _maybe_complete(self, part: _Part) -> list[Action]:
        if part.waiting or part.complete:
            return []
        part.complete = True
        channel_state = {
            str(src): [[seq, payload] for seq, payload in messages]
            for src, messages in sorted(part.recorded.items())
        }
        return [
            AttachToCheckpoint(index=part.index, key=CHANNEL_STATE_KEY, meta=channel_state),
            SnapshotComplete(snapshot_id=list(part.snapshot_id), index=part.index),
            *self._maybe_commit(part),
        ]

    def _maybe_commit(self, part: _Part) -> list[Action]:
        if not (part.persisted and part.complete):
            return []
        self._forget(part)
        self.committed_parts[part.snapshot_id] = (part.index, part.last_output_id)
        self.stats["snapshots_committed"] += 1
        actions: list[Action] = [Commit(index=part.index)]
        if self.rank == self.collector:
            return actions + self._learn_commit(self.rank, part.snapshot_id)
        report = {"kind": "committed", "rank": self.rank, "id": list(part.snapshot_id)}
        return actions + self._forward_up(report)

    def _forget(self, part: _Part) -> None:
        del self.parts[part.snapshot_id]
        del self.parts_by_index[part.index]

    def _part_at(self, event: Event, index: int) -> _Part:
        part = self.parts_by_index.get(index)
        if part is None:
            raise self.error(self.phase, event, f"no checkpoint {index} in progress")
        return part

    # ----------------------------------------------------------------------------------------
    # Knowledge of which snapshots are committed everywhere: garbage and output commit.

    def _forward_up(self, report: PlainData) -> list[Action]:
        """Send a commit report one hop toward the collector."""
        if self.routes is None:
            hop: int | None = self.collector
        else:
            hop = self.routes.up.get(self.rank)
        if hop is None:
            return []  # cannot reach the collector: nothing is ever known complete
        self.stats["control_messages"] += 1
        return [SendControl(dst=hop, control=report)]

    def _announce(self, announcement: PlainData) -> list[Action]:
        """Pass a ``complete`` announcement to the ranks below this one on the tree."""
        if self.routes is None:
            below: tuple[int, ...] = (
                tuple(sorted(set(range(self.n)) - {self.rank}))
                if self.rank == self.collector
                else ()
            )
        else:
            below = self.routes.children.get(self.rank, ())
        self.stats["control_messages"] += len(below)
        return [SendControl(dst=dst, control=announcement) for dst in below]

    def _learn_commit(self, rank: int, snapshot_id: SnapshotId) -> list[Action]:
        """At the collector: ``rank`` committed its part of ``snapshot_id``."""
        if self.known_complete is not None and snapshot_id <= self.known_complete:
            return []
        self.committed_by[rank].add(snapshot_id)
        everywhere = set.intersection(*self.committed_by.values())
        if not everywhere:
            return []
        newest = max(everywhere)
        if self.known_complete is not None and newest <= self.known_complete:
            return []
        for ids in self.committed_by.values():
            ids.difference_update({i for i in ids if i <= newest})
        announcement = {"kind": "complete", "id": list(newest)}
        return self._announce(announcement) + self._completed(newest)

    def _completed(self, snapshot_id: SnapshotId) -> list[Action]:
        """``snapshot_id`` is committed on every rank: release output, collect below it."""
        if self.known_complete is not None and snapshot_id <= self.known_complete:
            return []
        if snapshot_id not in self.committed_parts:
            raise self.error(
                self.phase,
                ("complete", snapshot_id),
                "announced committed everywhere, but this rank has not committed its part",
            )
        self.known_complete = snapshot_id
        actions: list[Action] = []
        _, last_output_id = self.committed_parts[snapshot_id]
        if last_output_id > self.released_output_id:
            self.released_output_id = last_output_id
            actions.append(ReleaseOutput(output_id=last_output_id))
        return actions + self._collect()

    def _collect(self) -> list[Action]:
        """Collect below my part of ``known_complete``, never below a newer snapshot's part."""
        if self.known_complete is None:
            return []
        bound, _ = self.committed_parts[self.known_complete]
        for snapshot_id, (index, _) in self.committed_parts.items():
            if snapshot_id > self.known_complete:
                bound = min(bound, index)
        for part in self.parts.values():
            bound = min(bound, part.index)
        if bound <= self.collected_before:
            return []
        self.collected_before = bound
        for snapshot_id in [i for i, (idx, _) in self.committed_parts.items() if idx < bound]:
            del self.committed_parts[snapshot_id]
        return [CollectGarbage(before_index=bound)]

    # ----------------------------------------------------------------------------------------

    def volatile_meta(self) -> PlainData:
        """Clock and the snapshots in progress (recovery does not need them: all restore)."""
        return {
            "clock": self.clock,
            "in_progress": [list(i) for i in sorted(self.parts)],
            "known_complete": list(self.known_complete) if self.known_complete else None,
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
    ) -> ChandyLamport:
        """Back to this rank's part of a snapshot committed everywhere (or the initial state).

        Snapshots in progress when the part was taken are abandoned: every rank rolls back.
        """
        proto = cls(rank=record.rank, n=n, inbound=inbound, outbound=outbound, options=options)
        proto.incarnation = incarnation
        proto.next_index = max(record.index + 1, incarnation << INDEX_INCARNATION_SHIFT)
        meta = record.meta
        if isinstance(meta, dict) and "snapshot_id" in meta:
            snapshot_id = _snapshot_id(meta["snapshot_id"])
            proto.clock = int(meta["clock"])
            proto.last_output_id = proto.released_output_id = int(meta["last_output_id"])
            # The plan restores only snapshots committed on every rank.
            proto.known_complete = snapshot_id
            proto.committed_parts[snapshot_id] = (record.index, proto.last_output_id)
            for ids in proto.committed_by.values():
                ids.add(snapshot_id)
        return proto

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        """Everyone back to the newest snapshot committed on every rank; replay its channels."""
        parts: dict[int, dict[SnapshotId, CheckpointRecord]] = {}
        for rank in range(view.n):
            parts[rank] = {}
            for record in view.committed.get(rank, ()):
                if isinstance(record.meta, dict) and "snapshot_id" in record.meta:
                    parts[rank][_snapshot_id(record.meta["snapshot_id"])] = record
        common = set.intersection(*(set(p) for p in parts.values()))
        if not common:
            return RecoveryPlan(restore=dict.fromkeys(range(view.n), 0))
        newest = max(common)
        cut = {rank: parts[rank][newest] for rank in range(view.n)}
        replay: dict[int, list[ReplayItem]] = {}
        for rank, record in cut.items():
            channel_state = record.attachments.get(CHANNEL_STATE_KEY)
            if channel_state is None:
                raise RecoveryError(
                    f"rank {rank}'s checkpoint {record.index} of snapshot {newest} has no "
                    "recorded channel state; the store lost an attachment"
                )
            items: list[ReplayItem] = []
            # Any channel with messages in transit has a sender that sent something.
            sources = {int(k) for k in channel_state} | {
                src for src in range(view.n) if src != rank and cut[src].sent.get(rank, 0) > 0
            }
            for src in sorted(sources):
                recorded = channel_state.get(str(src), [])
                expected = range(record.received.get(src, 0) + 1, cut[src].sent.get(rank, 0) + 1)
                seqs = [int(seq) for seq, _ in recorded]
                if seqs != list(expected):
                    raise RecoveryError(
                        f"snapshot {newest}: channel {src}->{rank} recorded seqs {seqs} but "
                        f"{list(expected)} are in transit; the snapshot is corrupt"
                    )
                items.extend(
                    Redelivery(src=src, seq=int(seq), payload=payload) for seq, payload in recorded
                )
            if items:
                replay[rank] = items
        return RecoveryPlan(restore={r: rec.index for r, rec in cut.items()}, replay=replay)
