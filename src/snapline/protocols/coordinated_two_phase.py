"""Coordinated, blocking checkpointing: the two-phase protocol of Koo and Toueg.

Theory of operation
-------------------
Assumptions: reliable FIFO channels, a strongly connected graph (control messages must reach
every rank; the constructor rejects a rank with no inbound or no outbound channel, and with
``options["edges"]`` checks the whole graph). Crashes are reported by
``PeerFailed`` to every live rank.

Dependencies. Every application message piggybacks the sender's *label*, the index of its
latest committed checkpoint. A receiver keeps, per sender, the largest label received since
its own latest checkpoint. A checkpoint of rank i must be accompanied by a checkpoint of j iff
i received a message j sent after j's latest committed checkpoint (label >= j's label now).

A round (id ``(serial, initiator, incarnation)``): the initiator takes a tentative checkpoint
(``TakeCheckpoint``) and asks every rank it depends on, passing the label it saw. A rank that
must join takes a tentative checkpoint and asks its own dependencies, recursively, so only the
transitive dependencies take part; one that need not join, or already is in the round,
answers yes at once. A participant votes to its parent once its checkpoint is persisted and
its children voted; the initiator decides Commit when every vote is yes, else Abort, and the
decision flows down the tree (``Commit`` / ``DiscardCheckpoint``). Blocking: from its
tentative checkpoint to the decision a participant holds its application sends
(``messages_held``) so its checkpoint is not made obsolete by its own sends.

Concurrent initiators are serialized by priority (smaller ``(serial, initiator)`` first;
serials are a Lamport clock): a request of a lower-priority round than the one a rank is in is
refused (that round aborts), one of a higher-priority round is deferred until the current round
ends. Waits only go from higher to lower priority, so there is no deadlock and the round of
highest priority always finishes. A ``PeerFailed`` aborts every round in progress
at the ranks that have not voted yet (the initiator cannot have decided without their votes);
until ``RecoveryCompleted`` no round starts, and control of an older incarnation is ignored.

In-doubt rounds. A participant that voted yes and has not heard the decision when a peer fails
is *in doubt*: the initiator may have committed (its ``Commit`` is durable before it sends a
decision) or not. It keeps its tentative checkpoint and its held sends. Every checkpoint's meta
names its round, so recovery resolves the round from the initiator's durable decision:
``plan_recovery`` commits (``RecoveryPlan.commit``) every tentative checkpoint whose round some
rank committed, and presumes abort otherwise -- at planning time every live initiator has
decided or aborted, and a dead one decides nothing more. The participant learns the outcome
from ``RecoveryCompleted.committed`` (or from the decision itself, if it still arrives first).
So a round commits on all its participants or on none, the latest committed checkpoints form a
consistent cut, and a recovery line never falls behind a committed checkpoint (the planner
checks it).

Control routing: an envelope ``(origin, serial, to)`` goes along a shortest path of channels
(next hops computed from ``options["edges"]``, the job's channel list, which both drivers
pass); every rank computes the same paths, so one origin's envelopes to one rank follow one
chain of FIFO channels and a decision never overtakes its request. A message lost with a
crashed rank on its path is a message of a round that the failure aborts or leaves in doubt,
and recovery resolves those. Without the channel list, envelopes to a neighbour go directly
and others are flooded (forwarded on every outbound channel the first time a rank sees them;
first copies of one origin's envelopes to one rank arrive in the order sent).

Recovery: the recovery line is the maximum consistent cut over committed checkpoints (in-doubt
ones resolved first) and the survivors' volatile records (``recovery_line``): failed ranks
restore, survivors keep running unless they hold an orphan. Messages in transit for the cut are
re-delivered from the senders' logs (kept in checkpoint meta and volatile meta: ``{dst: [[seq,
payload], ...]}``).

Sender log pruning. A receiver never rolls back behind its latest committed checkpoint, so a
message it received before that checkpoint is never re-delivered. A request from ``dst`` to a
rank it depends on carries what ``dst``'s latest committed checkpoint received from that rank
(``acked``), and the rank drops those entries from its log to ``dst``. A receiver asks its
senders in every round it joins, so a log holds about two checkpoint intervals of messages to a
receiver that takes part in rounds; to one that never does (it sends nothing anyone depends
on) the log keeps everything, which its recovery from the initial state needs.

Output commit: an output is released once a committed checkpoint of this rank was taken after
it (``ReleaseOutput`` right after that ``Commit``): the recovery line never falls behind a
committed checkpoint, so no rollback can undo it. A rank restored from a checkpoint releases
again what that checkpoint covers (its commit may have been made durable by a recovery, or the
release lost with the process; drivers skip ids already released).

Costs: one int piggybacked per message (the label);
per round, flooded request, vote and decision per participant (each costs one control message
per channel); sends held during rounds (and while in doubt, until the recovery resolves it);
output held until the next committed round that covers it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeAlias, assert_never

from snapline.errors import ConfigError, RecoveryError
from snapline.protocols.base import (
    Action,
    AppTimerDue,
    CheckpointPersisted,
    CheckpointRecord,
    CheckpointRequested,
    CheckpointWriteFailed,
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
)
from snapline.protocols.reachability import INDEX_INCARNATION_SHIFT, first_hops, reaches_all
from snapline.protocols.recovery_line import recovery_line

RoundId: TypeAlias = tuple[int, int, int]
"""``(serial, initiator, incarnation)``; a smaller ``(serial, initiator)`` has priority."""


class Phase(enum.Enum):
    """Where this rank is in the two-phase protocol."""

    IDLE = "idle"
    #: Tentative checkpoint taken; waiting for persistence and the children's votes.
    COLLECTING = "collecting"
    #: Voted yes; waiting for the initiator's decision.
    VOTED = "voted"
    #: A peer failed; no round until ``RecoveryCompleted``.
    RECOVERING = "recovering"


@dataclass(slots=True)
class _Round:
    """This rank's part in one round."""

    round_id: RoundId
    parent: int | None
    index: int
    #: Ranks asked and not yet answered.
    waiting: set[int] = field(default_factory=set)
    #: Ranks that joined through this rank: they get the decision from it.
    children: set[int] = field(default_factory=set)
    persisted: bool = False
    all_yes: bool = True
    #: Dependencies (sender -> label) that the tentative checkpoint covers.
    covered: dict[int, int] = field(default_factory=dict)
    #: Messages received per sender at the tentative checkpoint (its ``received`` counters).
    received: dict[int, int] = field(default_factory=dict)
    #: The last output id the tentative checkpoint covers (released when it commits).
    outputs: int = 0


def _round_id(data: PlainData) -> RoundId:
    serial, initiator, incarnation = data
    return (int(serial), int(initiator), int(incarnation))


#: The label a restored rank assumes for messages replayed to it: above any real label, so the
#: sender joins the restored rank's next round.
_REPLAYED_LABEL = 1 << 62


def _round_of(record: CheckpointRecord) -> RoundId | None:
    """The round a stored checkpoint was taken in (None for the initial state)."""
    meta = record.meta
    if not isinstance(meta, dict) or meta.get("round") is None:
        return None
    return _round_id(meta["round"])


class TwoPhaseCoordinated(Protocol):
    """One rank of Koo–Toueg two-phase coordinated checkpointing (see the module docstring)."""

    name = "two-phase"
    #: One global checkpoint per interval, started by rank 0 (any rank may initiate).
    checkpoint_requests = "one"
    needs_fifo = False
    #: Timers fire at once; output waits for a committed checkpoint (see above).
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
        self._check_topology()
        self.phase = Phase.IDLE
        self.incarnation = 0
        self.serial = 0
        self.label = 0  # index of the latest committed checkpoint
        self.next_index = 1
        self.deps: dict[int, int] = {}
        self.current: _Round | None = None
        #: Requests of higher-priority rounds, answered when the current round ends.
        self.deferred: list[tuple[int, PlainData]] = []
        #: Requests of rounds from a recovery this rank has not been told about yet.
        self.future: list[tuple[int, PlainData]] = []
        self.held: list[SendRequested] = []
        self.sent_log: dict[int, list[tuple[int, object]]] = {}
        self.sent_count: dict[int, int] = {}
        #: Messages received per sender (every arrival is delivered at once).
        self.received: dict[int, int] = {}
        #: What the latest committed checkpoint received per sender (sent as ``acked``).
        self.committed_received: dict[int, int] = {}
        #: The last output id requested, and the last one released.
        self.last_output_id = 0
        self.released_output_id = 0
        #: Set on a restored object: release what the restored checkpoint covers once the
        #: recovery completes.
        self.release_on_recovery = False
        self.flood_serial = 0
        self.seen: dict[int, set[int]] = {}
        #: First hop of a shortest path to each rank (None: the job's channels are unknown).
        self.next_hop: dict[int, int] | None = _next_hops(self.rank, self.options.get("edges"))
        self.stats.update(
            messages_held=0,
            piggyback_ints=0,
            rounds_committed=0,
            rounds_aborted=0,
            requests_refused=0,
            requests_deferred=0,
            requests_skipped=0,
            control_forwarded=0,
            rounds_in_doubt=0,
            sender_log_pruned=0,
        )

    def _check_topology(self) -> None:
        if self.n == 1:
            return
        edges_option = self.options.get("edges")
        if edges_option is not None:
            edges = [(int(s), int(d)) for s, d in edges_option]
            # Strongly connected iff rank 0 reaches every rank and every rank reaches rank 0:
            # two searches, not one per rank (each rank's object checks it).
            reversed_edges = [(d, s) for s, d in edges]
            if not (reaches_all(self.n, edges, 0) and reaches_all(self.n, reversed_edges, 0)):
                raise ConfigError(
                    "two-phase sends control between any two ranks and needs a strongly "
                    "connected topology; add channels so every rank reaches every rank"
                )
        elif not self.inbound or not self.outbound:
            raise ConfigError(
                f"two-phase needs a strongly connected topology, but rank {self.rank} has "
                f"{'no inbound' if not self.inbound else 'no outbound'} channel; add channels"
            )

    # ----------------------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        """Feed one event; return the actions to carry out, in order."""
        match event:
            case SendRequested():
                if self.current is not None:
                    self.held.append(event)
                    self.stats["messages_held"] += 1
                    return []
                return [self._transmit(event)]
            case MessageArrived(src=src, seq=seq, piggyback=label):
                if src not in self.inbound or not isinstance(label, int):
                    raise self.error(self.phase, event, "message without a label or channel")
                self.deps[src] = max(self.deps.get(src, -1), label)
                self.received[src] = seq
                return [Deliver(src=src, seq=seq)]
            case ControlArrived(src=src, control=control):
                return self._on_envelope(event, control)
            case CheckpointRequested():
                if self.phase is not Phase.IDLE:
                    self.stats["requests_skipped"] += 1
                    return []
                self.serial += 1
                self.stats["checkpoints_basic"] += 1
                return self._join((self.serial, self.rank, self.incarnation), parent=None)
            case CheckpointPersisted(index=index):
                rnd = self.current
                if rnd is None or rnd.index != index or rnd.persisted:
                    raise self.error(self.phase, event, f"checkpoint {index} is not pending")
                rnd.persisted = True
                return self._maybe_vote()
            case CheckpointWriteFailed(index=index):
                rnd = self.current
                if rnd is None or rnd.index != index:
                    raise self.error(self.phase, event, f"checkpoint {index} is not pending")
                rnd.persisted = True
                rnd.all_yes = False  # a vote of no: the round aborts
                return self._maybe_vote()
            case TimerFired():
                raise self.error(self.phase, event, "two-phase sets no timers")
            case AppTimerDue(timer_id=timer_id):
                return [FireAppTimer(timer_id=timer_id)]
            case MessageLogged():
                raise self.error(self.phase, event, "two-phase logs no messages")
            case OutputRequested(output_id=output_id):
                # Held until a committed checkpoint taken after it (see the module docstring).
                self.last_output_id = output_id
                return []
            case PeerFailed():
                # Deferred requests belong to rounds the failure aborts too: drop them first,
                # or ending the current round would start one of them (and it never ends).
                self.deferred.clear()
                rnd = self.current
                if rnd is not None and self.phase in (Phase.VOTED, Phase.RECOVERING):
                    # In doubt: the initiator may have committed. Keep the checkpoint and the
                    # held sends; the recovery resolves the round.
                    if self.phase is Phase.VOTED:
                        self.stats["rounds_in_doubt"] += 1
                    self.phase = Phase.RECOVERING
                    return []
                actions = self._end_round(commit=False) if rnd is not None else []
                self.phase = Phase.RECOVERING
                return actions
            case RecoveryCompleted(restored=restored, incarnation=incarnation, committed=done):
                return self._on_recovery_completed(restored, incarnation, done)
            case _:
                assert_never(event)

    def _on_recovery_completed(
        self, restored: frozenset[int], incarnation: int, committed: frozenset[int]
    ) -> list[Action]:
        actions: list[Action] = []
        rnd = self.current
        if rnd is not None:
            # The round this rank was in doubt about, resolved by the recovery plan; the
            # driver already made a commit durable, and the children were resolved alike.
            actions += self._end_round(commit=rnd.index in committed, durable=True)
        if self.release_on_recovery and self.rank in restored:
            self.release_on_recovery = False
            if self.released_output_id > 0:
                actions.append(ReleaseOutput(output_id=self.released_output_id))
        self.incarnation = incarnation
        self.phase = Phase.IDLE
        future, self.future = self.future, []
        for src, body in future:
            actions += self._on_request(src, body)
        return actions

    def _transmit(self, send: SendRequested) -> Transmit:
        seq = self.sent_count.get(send.dst, 0) + 1
        self.sent_count[send.dst] = seq
        self.sent_log.setdefault(send.dst, []).append((seq, send.payload))
        self.stats["piggyback_ints"] += 1
        return Transmit(
            send_id=send.send_id, dst=send.dst, payload=send.payload, piggyback=self.label
        )

    # ----------------------------------------------------------------------------------------
    # Rounds.

    def _join(self, round_id: RoundId, *, parent: int | None) -> list[Action]:
        index = self.next_index
        self.next_index += 1
        if parent is not None:
            self.stats["checkpoints_forced"] += 1
        rnd = _Round(
            round_id=round_id,
            parent=parent,
            index=index,
            covered=dict(self.deps),
            received=dict(self.received),
            outputs=self.last_output_id,
        )
        self.current = rnd
        self.phase = Phase.COLLECTING
        self.deps = {}
        actions: list[Action] = [
            TakeCheckpoint(
                index=index, forced=parent is not None, meta=self._meta(round_id=round_id)
            )
        ]
        for dep, label in sorted(rnd.covered.items()):
            rnd.waiting.add(dep)
            request = {
                "t": "req",
                "round": list(round_id),
                "label": label,
                "acked": self.committed_received.get(dep, 0),
            }
            actions += self._send_to(dep, request)
        return actions

    def _meta(self, *, round_id: RoundId | None = None) -> PlainData:
        return {
            "serial": self.serial,
            "round": None if round_id is None else list(round_id),
            "outputs": self.last_output_id,
            "log": {
                str(dst): [[seq, payload] for seq, payload in entries]
                for dst, entries in sorted(self.sent_log.items())
            },
        }

    def _on_request(self, src: int, body: PlainData) -> list[Action]:
        round_id = _round_id(body["round"])
        label = int(body["label"])
        self.serial = max(self.serial, round_id[0])
        self._prune_log(src, int(body.get("acked", 0)))
        if round_id[2] > self.incarnation:
            # Started after a recovery this rank has not heard of yet: answer after it.
            self.future.append((src, body))
            return []
        if round_id[2] < self.incarnation or self.phase is Phase.RECOVERING:
            return []  # started before a failure: the round is dead
        rnd = self.current
        if rnd is not None and rnd.round_id == round_id:
            return self._vote_to(src, round_id, yes=True, joined=False)
        if label < self.label:
            # My latest committed checkpoint already covers what the requester received.
            return self._vote_to(src, round_id, yes=True, joined=False)
        if rnd is None:
            return self._join(round_id, parent=src)
        if round_id[:2] < rnd.round_id[:2]:
            self.deferred.append((src, body))
            self.stats["requests_deferred"] += 1
            return []
        self.stats["requests_refused"] += 1
        return self._vote_to(src, round_id, yes=False, joined=False)

    def _prune_log(self, dst: int, acked: int) -> None:
        # ``dst``'s latest committed checkpoint received ``acked`` messages from this rank, and
        # no recovery line falls behind it: those are never re-delivered.
        entries = self.sent_log.get(dst)
        if not entries or entries[0][0] > acked:
            return
        keep = [(seq, payload) for seq, payload in entries if seq > acked]
        self.stats["sender_log_pruned"] += len(entries) - len(keep)
        self.sent_log[dst] = keep

    def _vote_to(self, dst: int, round_id: RoundId, *, yes: bool, joined: bool) -> list[Action]:
        return self._send_to(
            dst, {"t": "vote", "round": list(round_id), "yes": yes, "joined": joined}
        )

    def _on_vote(self, event: Event, src: int, body: PlainData) -> list[Action]:
        rnd = self.current
        if rnd is None or rnd.round_id != _round_id(body["round"]):
            return []  # a vote for a round this rank already left (failure abort)
        if src not in rnd.waiting:
            raise self.error(self.phase, event, f"unexpected vote from {src}")
        rnd.waiting.discard(src)
        if body["joined"]:
            rnd.children.add(src)
        rnd.all_yes = rnd.all_yes and bool(body["yes"])
        return self._maybe_vote()

    def _maybe_vote(self) -> list[Action]:
        rnd = self.current
        assert rnd is not None
        if rnd.waiting or not rnd.persisted or self.phase is not Phase.COLLECTING:
            return []
        if rnd.parent is None:
            return self._end_round(commit=rnd.all_yes)
        self.phase = Phase.VOTED
        return self._vote_to(rnd.parent, rnd.round_id, yes=rnd.all_yes, joined=True)

    def _on_decision(self, event: Event, body: PlainData) -> list[Action]:
        rnd = self.current
        if rnd is None or rnd.round_id != _round_id(body["round"]):
            return []  # this rank left the round on a failure, or never joined it
        if self.phase is Phase.RECOVERING:
            # In doubt, and the decision got here before the recovery resolved the round: it
            # is the initiator's durable decision, the one the recovery would find.
            return self._end_round(commit=bool(body["commit"]))
        if self.phase is not Phase.VOTED:
            raise self.error(self.phase, event, "decision before this rank voted")
        return self._end_round(commit=bool(body["commit"]))

    def _end_round(self, *, commit: bool, durable: bool = False) -> list[Action]:
        """End the current round; with ``durable`` the recovery resolved it (and committed)."""
        rnd = self.current
        assert rnd is not None
        self.current = None
        if self.phase is not Phase.RECOVERING:
            self.phase = Phase.IDLE
        actions: list[Action] = []
        if commit and rnd.persisted:
            if not durable:
                actions.append(Commit(index=rnd.index))
            self.label = rnd.index
            self.committed_received = dict(rnd.received)
            self.stats["rounds_committed"] += 1
            if rnd.outputs > self.released_output_id:
                # After the Commit (durable first): nothing can roll this rank back behind it.
                self.released_output_id = rnd.outputs
                actions.append(ReleaseOutput(output_id=rnd.outputs))
        else:
            actions.append(DiscardCheckpoint(index=rnd.index))
            self.stats["rounds_aborted"] += 1
            for src, label in rnd.covered.items():
                self.deps[src] = max(self.deps.get(src, -1), label)
        if not durable:
            # A recovery resolved the children too: they need no decision from this rank.
            for child in sorted(rnd.children):
                actions += self._send_to(
                    child, {"t": "decide", "round": list(rnd.round_id), "commit": commit}
                )
        held, self.held = self.held, []
        actions += [self._transmit(send) for send in held]
        deferred, self.deferred = self.deferred, []
        for src, body in deferred:
            actions += self._on_request(src, body)
        return actions

    # ----------------------------------------------------------------------------------------
    # Flooding: control to a rank that may not be a neighbour.

    def _send_to(self, dst: int, body: PlainData) -> list[Action]:
        self.flood_serial += 1
        envelope = {"o": self.rank, "k": self.flood_serial, "to": dst, "b": body}
        self.seen.setdefault(self.rank, set()).add(self.flood_serial)
        return self._route(envelope, dst)

    def _route(self, envelope: PlainData, dst: int) -> list[Action]:
        """Send toward ``dst``: to the next hop of a shortest path, or flood if none is known."""
        if self.next_hop is not None:
            hop = self.next_hop.get(dst)
        else:
            hop = dst if dst in self.outbound else None
        if hop is None:
            return self._forward(envelope)
        self.stats["control_messages"] += 1
        return [SendControl(dst=hop, control=envelope)]

    def _forward(self, envelope: PlainData) -> list[Action]:
        self.stats["control_messages"] += len(self.outbound)
        return [SendControl(dst=dst, control=envelope) for dst in sorted(self.outbound)]

    def _on_envelope(self, event: ControlArrived, envelope: PlainData) -> list[Action]:
        if event.src not in self.inbound or not isinstance(envelope, dict):
            raise self.error(self.phase, event, "control from a non-inbound rank or malformed")
        try:
            return self._open_envelope(event, envelope)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            # A wrongly shaped envelope from a buggy peer: say so, rather than a bare KeyError.
            raise self.error(self.phase, event, f"malformed control envelope ({exc!r})") from None

    def _open_envelope(self, event: ControlArrived, envelope: dict[str, PlainData]) -> list[Action]:
        origin, serial = int(envelope["o"]), int(envelope["k"])
        seen = self.seen.setdefault(origin, set())
        if serial in seen:
            return []
        seen.add(serial)
        if envelope["to"] != self.rank:
            self.stats["control_forwarded"] += 1
            return self._route(envelope, int(envelope["to"]))
        body = envelope["b"]
        match body["t"]:
            case "req":
                return self._on_request(origin, body)
            case "vote":
                return self._on_vote(event, origin, body)
            case "decide":
                return self._on_decision(event, body)
            case other:
                raise self.error(self.phase, event, f"unknown control {other!r}")

    # ----------------------------------------------------------------------------------------

    def volatile_meta(self) -> PlainData:
        """Serial, outputs and sender log, as a checkpoint taken now would store them."""
        return self._meta()

    def sender_log_entries(self) -> int:
        """How many messages the sender log holds now (over all outbound channels)."""
        return sum(len(entries) for entries in self.sent_log.values())

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
    ) -> TwoPhaseCoordinated:
        """Back to a committed checkpoint: its label, serial and sender log; no round."""
        proto = cls(rank=record.rank, n=n, inbound=inbound, outbound=outbound, options=options)
        proto.incarnation = incarnation
        proto.label = record.index
        proto.next_index = max(record.index + 1, incarnation << INDEX_INCARNATION_SHIFT)
        proto.sent_count = {int(d): int(c) for d, c in record.sent.items()}
        # The restored checkpoint is committed: it is this rank's committed line now.
        proto.received = {int(s): int(c) for s, c in record.received.items()}
        proto.committed_received = dict(proto.received)
        # The recovery replays in-transit messages straight to the application, past this
        # object, and their labels are unknown here: the next checkpoint asks every sender to
        # join, so a replayed message's send is covered by a checkpoint of its sender.
        proto.deps = dict.fromkeys(inbound, _REPLAYED_LABEL)
        meta = record.meta
        if isinstance(meta, dict):
            proto.serial = int(meta["serial"])
            proto.sent_log = {
                int(dst): [(int(seq), payload) for seq, payload in entries]
                for dst, entries in meta["log"].items()
            }
            proto.last_output_id = proto.released_output_id = int(meta.get("outputs", 0))
            proto.release_on_recovery = proto.released_output_id > 0
        # Envelopes are numbered per incarnation so receivers never mistake them for old ones.
        proto.flood_serial = incarnation << INDEX_INCARNATION_SHIFT
        return proto

    @classmethod
    def plan_recovery(cls, view: RecoveryView) -> RecoveryPlan:
        """Resolve in-doubt rounds; maximum consistent cut; in-transit messages from logs."""
        commit = resolve_in_doubt(view)
        if commit:
            committed = {r: list(records) for r, records in view.committed.items()}
            for rank, indices in commit.items():
                chosen = [rec for rec in view.tentative[rank] if rec.index in indices]
                committed[rank] = sorted([*committed.get(rank, []), *chosen], key=_index)
            view = replace(view, committed=committed)
        line = recovery_line(view)
        for rank, index in line.restore.items():
            latest = max((rec.index for rec in view.committed.get(rank, ())), default=0)
            if index < latest:
                raise RecoveryError(
                    f"two-phase recovery line restores rank {rank} to checkpoint {index}, "
                    f"behind its committed checkpoint {latest}: the committed checkpoints are "
                    "not a consistent cut (a round committed on some participants only)"
                )
        replay: dict[int, list[ReplayItem]] = {}
        for (src, dst), seqs in sorted(line.in_transit.items()):
            if dst not in line.restore:
                continue  # a survivor still gets them from the channel
            meta = line.cut[src].meta
            log = meta.get("log", {}) if isinstance(meta, dict) else {}
            entries = {int(seq): payload for seq, payload in log.get(str(dst), [])}
            missing = [seq for seq in seqs if seq not in entries]
            if missing:
                raise RecoveryError(
                    f"rank {src}'s sender log lacks messages {missing} to rank {dst}; "
                    "the stored checkpoint meta is incomplete"
                )
            replay.setdefault(dst, []).extend(
                Redelivery(src=src, seq=seq, payload=entries[seq]) for seq in seqs
            )
        return RecoveryPlan(
            restore=dict(line.restore),
            replay=replay,
            commit={r: tuple(indices) for r, indices in commit.items()},
        )


def resolve_in_doubt(view: RecoveryView) -> dict[int, list[int]]:
    """Tentative checkpoints to commit: those whose round some rank committed (durably).

    The initiator commits before it sends any decision, and a participant commits only on the
    decision, so a committed checkpoint of round R anywhere means R was decided commit; a round
    no rank committed is presumed aborted (at planning time nobody can commit it any more).
    """
    decided: set[RoundId] = set()
    for records in view.committed.values():
        for record in records:
            round_id = _round_of(record)
            if round_id is not None:
                decided.add(round_id)
    commit: dict[int, list[int]] = {}
    for rank, records in sorted(view.tentative.items()):
        for record in records:
            if _round_of(record) in decided:
                commit.setdefault(rank, []).append(record.index)
    return commit


def _index(record: CheckpointRecord) -> int:
    return record.index


def _next_hops(rank: int, edges_option: object) -> dict[int, int] | None:
    """First hops of shortest paths from ``rank`` (None when the channel list is unknown).

    Every rank computes the same paths, so all control from one origin to one rank follows
    one chain of FIFO channels and arrives in the order it was sent.
    """
    if edges_option is None:
        return None
    assert isinstance(edges_option, list | tuple)
    return first_hops([(int(s), int(d)) for s, d in edges_option], rank)
