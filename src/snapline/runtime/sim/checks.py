"""Checkers: separate objects that watch every simulated run and fail it on a violation.

* ``ChannelChecker`` -- nothing lost, nothing delivered twice: in the surviving history each
  channel's delivered seqs are exactly ``1..k``, each payload equals what the sender's
  surviving history sent with that seq, and at the end every sent message was delivered.
  It keeps, per channel, the payloads the sender's surviving history sent; a rollback trims
  that log to what is still sent or already delivered, and a re-sent message whose seq was
  already delivered must carry the same payload (otherwise the delivery is an orphan).
* ``RecoveryChecker`` -- every recovery plan restores every failed rank to a committed
  checkpoint, and after restore and replay no channel has more delivered than sent (the
  recovered state is a consistent cut). The pre-replay cut is also checked with
  ``is_consistent`` and counted, but not failed: message logging restores an inconsistent cut
  on purpose and makes it consistent by deterministic replay.
* ``InvariantChecker`` -- the app's invariant holds on the recovered cut after every recovery
  and on the final state; the app's final check holds on the results.
* ``OutputChecker`` -- output commit: the world sees each output id of a rank once, ids in
  order with no gap; an id released again (a protocol re-releasing what a restored checkpoint
  covers) must carry the item released first -- otherwise a rollback undid released output and
  the re-execution produced something else under that id; at the end every output of the
  surviving history was released. For apps whose outputs are deterministic, each rank's
  released outputs equal the failure-free run's as a multiset.
* ``ReferenceChecker`` -- a deterministic app ends with exactly the failure-free results.
* ``CheckpointPatternChecker`` -- a protocol's own promise about its checkpoints
  (``Protocol.checkpoint_pattern``), on the surviving history at the end of the run: no
  checkpoint on a Z-cycle (BCS), or rollback-dependency trackability (FDAS). It keeps each
  rank's checkpoints, sends and deliveries in the rank's order; a restore cuts the rank's
  history back to the restored checkpoint (what follows was undone), and re-sent or replayed
  messages are recorded where they happen again. ``zigzag.dependency_vectors`` then decides
  both promises for all checkpoints at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from snapline.protocols.base import RecoveryPlan, RecoveryView
from snapline.protocols.zigzag import (
    CheckpointId,
    Execution,
    MessageEvent,
    dependency_vectors,
    rdt_violations,
    z_cycle_checkpoints,
    z_path,
)


class CheckFailed(Exception):
    """A checker found a violation; the driver turns it into a ``SimulationError``."""

    def __init__(self, checker: str, message: str) -> None:
        self.checker = checker
        super().__init__(f"{checker}: {message}")


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """How one checker fared on a run."""

    name: str
    passed: bool
    runs: int
    detail: str = ""


def values_equal(a: object, b: object) -> bool:
    """Structural equality that understands numpy arrays inside plain data."""
    if a is b:
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(np.array_equal(a, b))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(values_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(values_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


class ChannelChecker:
    """Exactly-once, in-order, payload-faithful delivery in the surviving history."""

    name = "exactly-once delivery"
    __slots__ = ("deliveries", "logs", "n", "track_payloads")

    def __init__(self, n: int, *, track_payloads: bool) -> None:
        self.n = n
        self.track_payloads = track_payloads
        #: Per channel key ``src * n + dst``: payloads sent in the surviving history.
        self.logs: dict[int, list[object]] = {}
        #: Per channel: how many messages the receiver has delivered (surviving history).
        self.deliveries: dict[int, int] = {}

    def sent(self, src: int, dst: int, seq: int, payload: object) -> None:
        """The sender transmitted ``seq``."""
        if not self.track_payloads:
            return
        key = src * self.n + dst
        log = self.logs.get(key)
        if log is None:
            log = self.logs[key] = []
        if seq == len(log) + 1:
            log.append(payload)
        elif seq <= len(log):
            # Re-sent after a rollback. Only messages already delivered stay in the log (see
            # rollback), so this seq was delivered: the replay must reproduce it exactly.
            if not values_equal(log[seq - 1], payload):
                raise CheckFailed(
                    self.name,
                    f"rank {src} re-sent message {seq} to rank {dst} with a different payload "
                    f"after a rollback, but rank {dst} had already delivered the old one "
                    "(orphan message)",
                )
        else:
            raise CheckFailed(
                self.name, f"rank {src} sent seq {seq} to rank {dst} after only {len(log)}"
            )

    def delivered(self, dst: int, src: int, seq: int, payload: object) -> None:
        """Receiver ``dst`` handed ``seq`` from ``src`` to the application (port order)."""
        key = src * self.n + dst
        got = self.deliveries.get(key, 0)
        if seq != got + 1:
            raise CheckFailed(
                self.name,
                f"rank {dst} delivered message {seq} from rank {src} after {got} "
                f"({'duplicate' if seq <= got else 'gap'})",
            )
        self.deliveries[key] = seq
        if not self.track_payloads:
            return
        log = self.logs.get(key, [])
        if seq > len(log):
            raise CheckFailed(
                self.name,
                f"rank {dst} delivered message {seq} from rank {src}, which the sender's "
                f"surviving history never sent (it sent {len(log)}): orphan or invented message",
            )
        if not values_equal(log[seq - 1], payload):
            raise CheckFailed(
                self.name,
                f"rank {dst} delivered message {seq} from rank {src} with a payload that "
                "differs from the one sent",
            )

    def rollback(
        self,
        sent: Mapping[int, Mapping[int, int]],
        received: Mapping[int, Mapping[int, int]],
        ranks: set[int],
        *,
        exact: frozenset[int] = frozenset(),
    ) -> None:
        """Ranks in ``ranks`` were restored; ``sent``/``received``: every rank's counters."""
        for key in set(self.deliveries) | set(self.logs):
            src, dst = divmod(key, self.n)
            if src not in ranks and dst not in ranks:
                continue
            if dst in ranks:
                self.deliveries[key] = received[dst].get(src, 0)
            if self.track_payloads:
                log = self.logs.get(key)
                if log is not None and src not in exact:
                    # An exact re-execution (message logging) must send the same messages
                    # again, so its whole log stays and every re-send is compared with it.
                    keep = max(sent[src].get(dst, 0), self.deliveries.get(key, 0))
                    del log[keep:]

    def in_transit(self, sent: Mapping[int, Mapping[int, int]]) -> list[object]:
        """Payloads sent and not delivered, per the surviving history."""
        out: list[object] = []
        for key, log in self.logs.items():
            src, dst = divmod(key, self.n)
            out.extend(log[self.deliveries.get(key, 0) : sent[src].get(dst, 0)])
        return out

    def check_end(self, sent: Mapping[int, Mapping[int, int]]) -> None:
        """At the end every sent message was delivered exactly once."""
        for src, per_dst in sent.items():
            for dst, count in per_dst.items():
                got = self.deliveries.get(src * self.n + dst, 0)
                if got != count:
                    raise CheckFailed(
                        self.name,
                        f"channel {src}->{dst}: {count} messages sent, {got} delivered "
                        f"({'lost' if got < count else 'extra'} messages)",
                    )
                if self.track_payloads and len(self.logs.get(src * self.n + dst, [])) != count:
                    raise CheckFailed(self.name, f"channel {src}->{dst}: send log out of step")


class RecoveryChecker:
    """Recovery plans restore every failed rank; the recovered state is a consistent cut."""

    name = "consistent recovery"

    def __init__(self) -> None:
        self.runs = 0
        self.inconsistent_before_replay = 0

    def validate_plan(
        self, view: RecoveryView, plan: RecoveryPlan, committed_indices: Mapping[int, set[int]]
    ) -> None:
        """The plan restores every failed rank to a committed checkpoint.

        Checkpoints the plan commits (``plan.commit``) count as committed; they must be
        tentative ones of the view.
        """
        self.runs += 1
        missing = sorted(view.failed - set(plan.restore))
        if missing:
            raise CheckFailed(self.name, f"plan leaves failed ranks {missing} unrestored")
        for rank, indices in plan.commit.items():
            tentative = {rec.index for rec in view.tentative.get(rank, ())}
            unknown = sorted(set(indices) - tentative)
            if unknown:
                raise CheckFailed(
                    self.name,
                    f"plan commits checkpoints {unknown} of rank {rank}, which are not "
                    f"tentative (tentative: {sorted(tentative)})",
                )
        for rank, index in plan.restore.items():
            if not 0 <= rank < view.n:
                raise CheckFailed(self.name, f"plan restores unknown rank {rank}")
            if (
                index != 0
                and index not in committed_indices[rank]
                and index not in plan.commit.get(rank, ())
            ):
                raise CheckFailed(
                    self.name,
                    f"plan restores rank {rank} to checkpoint {index}, which is not committed "
                    f"(committed: {sorted(committed_indices[rank])})",
                )
        extra = sorted(set(plan.replay) - set(plan.restore))
        if extra:
            raise CheckFailed(self.name, f"plan replays to ranks {extra} it does not restore")

    def check_cut(
        self,
        edges: Sequence[tuple[int, int]],
        sent: Mapping[int, Mapping[int, int]],
        received: Mapping[int, Mapping[int, int]],
    ) -> None:
        """After restore and replay no channel has delivered more than was sent (no orphan)."""
        for src, dst in edges:
            got = received[dst].get(src, 0)
            put = sent[src].get(dst, 0)
            if got > put:
                raise CheckFailed(
                    self.name,
                    f"orphan messages after recovery: rank {dst} has delivered {got} messages "
                    f"from rank {src}, which has sent only {put}",
                )


#: ``Protocol.checkpoint_pattern`` values the simulator can check.
CHECKPOINT_PATTERNS = frozenset({"no-useless-checkpoint", "rdt"})

_CHECKPOINT = 0
_SEND = 1
_DELIVER = 2


class CheckpointPatternChecker:
    """A protocol's promise about the pattern of its checkpoints, on the surviving history.

    ``"no-useless-checkpoint"``: no checkpoint lies on a Z-cycle, so every one belongs to some
    consistent cut. ``"rdt"``: every Z-path between two checkpoints is doubled by a causal path
    (rollback-dependency trackability; it implies the former).
    """

    name = "checkpoint pattern"
    __slots__ = ("checkpoints", "events", "n", "pattern", "runs")

    def __init__(self, n: int, pattern: str) -> None:
        if pattern not in CHECKPOINT_PATTERNS:
            raise ValueError(
                f"unknown checkpoint pattern {pattern!r}; known: {sorted(CHECKPOINT_PATTERNS)}"
            )
        self.n = n
        self.pattern = pattern
        self.runs = 0
        #: Per rank, in its order: (_CHECKPOINT, index, 0) / (_SEND, dst, seq) /
        #: (_DELIVER, src, seq).
        self.events: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
        #: Per rank: checkpoint index -> its position in ``events``.
        self.checkpoints: list[dict[int, int]] = [{} for _ in range(n)]

    def checkpoint(self, rank: int, index: int) -> None:
        """``rank`` took checkpoint ``index`` (at the ``TakeCheckpoint``)."""
        self.checkpoints[rank][index] = len(self.events[rank])
        self.events[rank].append((_CHECKPOINT, index, 0))

    def sent(self, src: int, dst: int, seq: int) -> None:
        """``src`` transmitted message ``seq`` to ``dst``."""
        self.events[src].append((_SEND, dst, seq))

    def delivered(self, dst: int, src: int, seq: int) -> None:
        """``dst`` handed message ``seq`` from ``src`` to the application."""
        self.events[dst].append((_DELIVER, src, seq))

    def rollback(self, rank: int, index: int) -> None:
        """``rank`` was restored to checkpoint ``index``: what it did after that is undone."""
        if index == 0:
            cut = 0
        else:
            at = self.checkpoints[rank].get(index)
            if at is None:
                raise CheckFailed(
                    self.name,
                    f"rank {rank} was restored to checkpoint {index}, which its surviving "
                    "history never took",
                )
            cut = at + 1
        del self.events[rank][cut:]
        self.checkpoints[rank] = {i: p for i, p in self.checkpoints[rank].items() if p < cut}

    def execution(self) -> tuple[Execution, list[tuple[int, int, int]]]:
        """The surviving history as a ``zigzag.Execution``, and each message's (src, dst, seq)."""
        ids: dict[tuple[int, int, int], int] = {}
        keys: list[tuple[int, int, int]] = []
        sends: list[tuple[int, int]] = []
        checkpoints: dict[int, list[int]] = {}
        for rank, events in enumerate(self.events):
            interval = 0
            for step, (kind, a, b) in enumerate(events):
                if kind == _CHECKPOINT:
                    checkpoints.setdefault(rank, []).append(a)
                    interval += 1
                elif kind == _SEND:
                    ids[(rank, a, b)] = len(keys)
                    keys.append((rank, a, b))
                    sends.append((interval, step))
        delivered: dict[int, tuple[int, int]] = {}
        for rank, events in enumerate(self.events):
            interval = 0
            for step, (kind, a, b) in enumerate(events):
                if kind == _CHECKPOINT:
                    interval += 1
                elif kind == _DELIVER:
                    message = ids.get((a, rank, b))
                    if message is None:
                        raise CheckFailed(
                            self.name,
                            f"rank {rank} delivered message {b} from rank {a}, which the "
                            "sender's surviving history never sent",
                        )
                    delivered[message] = (interval, step)
        messages = []
        for i, (src, dst, _) in enumerate(keys):
            got = delivered.get(i)
            messages.append(
                MessageEvent(
                    src=src,
                    dst=dst,
                    send_interval=sends[i][0],
                    deliver_interval=None if got is None else got[0],
                    send_step=sends[i][1],
                    deliver_step=None if got is None else got[1],
                )
            )
        execution = Execution(
            n=self.n,
            checkpoints={r: tuple(c) for r, c in checkpoints.items()},
            messages=tuple(messages),
        )
        return execution, keys

    def check_end(self) -> None:
        """Decide the promise on the surviving history; ``CheckFailed`` names a witness."""
        self.runs += 1
        execution, keys = self.execution()
        vectors = dependency_vectors(execution)

        def named(c: CheckpointId) -> str:
            rank, position = c
            index = execution.checkpoints[rank][position - 1] if position else 0
            return f"C({rank},{index})"

        def witness(frm: CheckpointId, to: CheckpointId) -> str:
            path = z_path(execution, frm, to) or []
            return " ".join(f"{keys[i][0]}->{keys[i][1]}#{keys[i][2]}" for i in path)

        useless = sorted(z_cycle_checkpoints(vectors))
        if useless:
            c = useless[0]
            raise CheckFailed(
                self.name,
                f"{len(useless)} checkpoint(s) on a Z-cycle (useless), first {named(c)}: "
                f"Z-cycle {witness(c, c)}",
            )
        if self.pattern == "rdt":
            violations = rdt_violations(vectors)
            if violations:
                v = violations[0]
                raise CheckFailed(
                    self.name,
                    f"not rollback-dependency trackable: {len(violations)} Z-path(s) with no "
                    f"causal path, first from {named(v.frm)} to {named(v.to)}: Z-path "
                    f"{witness(v.frm, v.to)}",
                )


class OutputChecker:
    """Output commit: each output id released once, in order, never changed by a rollback."""

    name = "exactly-once output"
    __slots__ = ("released", "runs")

    def __init__(self, n: int) -> None:
        #: Per rank, the items the world has seen, output id k at position k-1.
        self.released: list[list[object]] = [[] for _ in range(n)]
        self.runs = 0

    def release(self, rank: int, first_id: int, items: Sequence[object]) -> list[object]:
        """The engine released ``items`` under ids ``first_id...``; returns the new ones."""
        self.runs += 1
        seen = self.released[rank]
        if first_id < 1 or first_id > len(seen) + 1:
            raise CheckFailed(
                self.name,
                f"rank {rank} released output ids from {first_id} after only {len(seen)}: "
                "outputs in between were never released (lost)",
            )
        fresh: list[object] = []
        for offset, item in enumerate(items):
            output_id = first_id + offset
            if output_id <= len(seen):
                if not values_equal(seen[output_id - 1], item):
                    raise CheckFailed(
                        self.name,
                        f"rank {rank} released output {output_id} as "
                        f"{_short(seen[output_id - 1])} and, after a rollback, again as "
                        f"{_short(item)}: released output was rolled back and re-executed "
                        "differently (output repeated or lost)",
                    )
            else:
                seen.append(item)
                fresh.append(item)
        return fresh

    def check_end(self, produced: Sequence[int]) -> None:
        """At the end rank r released exactly the ``produced[r]`` outputs of its history."""
        for rank, count in enumerate(produced):
            got = len(self.released[rank])
            if got != count:
                raise CheckFailed(
                    self.name,
                    f"rank {rank} produced {count} outputs in its surviving history but "
                    f"{got} were released",
                )


def compare_outputs(
    expected: Sequence[Sequence[object]], got: Sequence[Sequence[object]]
) -> str | None:
    """None if ``got[r]`` equals ``expected[r]`` as a multiset for every rank r."""
    if len(expected) != len(got):
        return f"outputs of {len(got)} ranks, expected {len(expected)}"
    for rank, (want, have) in enumerate(zip(expected, got, strict=True)):
        want_count = Counter(repr(x) for x in want)
        have_count = Counter(repr(x) for x in have)
        if want_count != have_count:
            missing = sorted((want_count - have_count).elements())
            extra = sorted((have_count - want_count).elements())
            return (
                f"rank {rank} released {len(have)} outputs, the failure-free run {len(want)}; "
                f"never released: {_short(missing)}; repeated or invented: {_short(extra)}"
            )
    return None


def compare_results(expected: Sequence[object], got: Sequence[object]) -> str | None:
    """None if the results match, else a description of the first difference."""
    if len(expected) != len(got):
        return f"{len(got)} results, expected {len(expected)}"
    for rank, (want, have) in enumerate(zip(expected, got, strict=True)):
        if not values_equal(want, have):
            return f"rank {rank} ended with {_short(have)}, failure-free run gives {_short(want)}"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
