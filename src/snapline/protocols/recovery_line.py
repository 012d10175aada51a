"""The recovery line: the maximum consistent cut over stored checkpoints (pure).

Theory of operation
-------------------
Every ``CheckpointRecord`` carries its rank's channel counters, so a cut (one record per rank)
is consistent iff no channel has received more than was sent: ``received[d][s] <= sent[s][d]``
for every pair (``base.is_consistent``). A rank's *candidates* are the records it may stand on
after a failure, oldest first: its committed checkpoints and, for a surviving rank, its volatile
record (its current state, which it keeps if nothing forces it back).

Rollback propagation (``maximum_consistent_cut``): start every rank at its newest candidate;
while some channel ``s -> d`` has an orphan (``received[d][s] > sent[s][d]``), move ``d`` one
candidate back. This stops, because index 0 received nothing, and it returns *the* maximum
consistent cut:

* Counters only grow along a rank's candidates, so consistent cuts are closed under the
  per-rank maximum: if ``A`` and ``B`` are consistent and ``M = max(A, B)``, then for a
  channel ``s -> d`` with ``M[d] = A[d]`` (say), ``received_A[d][s] <= sent_A[s][d] <=
  sent_M[s][d]``. So a unique maximum consistent cut exists.
* Invariant: the current cut ``X`` is ``>=`` every consistent cut ``C``. It holds at the
  start. If ``X`` has an orphan on ``s -> d``, then ``sent_C[s][d] <= sent_X[s][d] <
  received_X[d][s]``, so ``C[d] != X[d]`` (else ``C`` has the same orphan), hence ``C[d] <
  X[d]`` and moving ``d`` one back keeps the invariant. At the fixed point ``X`` is consistent
  and ``>=`` every consistent cut: it is the maximum.

Cost: the propagation indexes, per sender, the ranks that ever received from it (from the
candidates' ``received`` maps); when a sender moves back only those can become orphans, so a
move costs its receivers, not all n ranks.

Pinning a rank at a candidate (``pinned``) answers "is there a consistent cut containing this
checkpoint?": the propagation would have to move a pinned rank iff none exists. That is how
``useless_checkpoints`` finds checkpoints on a Z-cycle with counters alone (``zigzag`` finds the
same set from the message pattern; the tests check that they agree). ``brute_force_maximum_cut``
enumerates every cut of small inputs, as an independent check of the propagation.

In-transit messages of a cut are, per channel, the sequence numbers ``received+1 .. sent``;
recovery must re-deliver them (from sender logs, recorded channel state or message logs).
Work lost is measured per rank by ``Rollback``: candidates skipped (the domino effect) and
application events (sends + deliveries) undone.

Garbage: committed checkpoints only accumulate, so the maximum consistent cut over the
*committed* records alone (the line every rank would roll back to if all failed now) can only
move forward, and any future recovery line is at or after it. Checkpoints older than it, and
sender-log entries its receivers have already received, are never needed again
(``garbage_line``). Knowing more committed checkpoints only raises that line, so a rank that
learns of checkpoints one batch at a time advances it incrementally
(``advance_garbage_line``): the old line is a consistent cut below the new maximum, so the
propagation runs over the checkpoints above it only, and ranks with nothing new stand still.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from snapline.errors import RecoveryError
from snapline.protocols.base import CheckpointRecord, RecoveryView, initial_record, is_consistent

#: The ``index`` of a surviving rank's volatile record in a ``RecoveryView``.
VOLATILE_INDEX = -1
#: Largest number of cuts ``brute_force_maximum_cut`` will enumerate.
BRUTE_FORCE_CUTS_MAX = 500_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollback:
    """How far one rank rolls back on a recovery line.

    ``checkpoints_lost`` counts the rank's candidates newer than the one it stands on: 0 for a
    failed rank restoring its latest committed checkpoint or a survivor that keeps running; 1
    for a survivor rolled back to its latest checkpoint; more is the domino effect.
    ``events_lost`` counts application sends and deliveries undone, measured from the newest
    candidate (the volatile state for survivors, the latest committed checkpoint for failed
    ranks -- work after it was lost with the process anyway).
    """

    checkpoints_lost: int
    events_lost: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryLine:
    """A planned recovery line.

    ``cut[r]`` is the record rank r stands on (``index == VOLATILE_INDEX`` = keeps running).
    ``restore`` maps each rank that rolls back to the checkpoint index it restores.
    ``in_transit[(s, d)]`` are the sequence numbers on channel ``s -> d`` sent in the cut but
    not received in it (they must be re-delivered to ``d``).
    """

    cut: Mapping[int, CheckpointRecord]
    restore: Mapping[int, int]
    in_transit: Mapping[tuple[int, int], range]
    rollback: Mapping[int, Rollback]


def _events(record: CheckpointRecord) -> int:
    return sum(record.sent.values()) + sum(record.received.values())


def check_candidates(rank: int, records: Sequence[CheckpointRecord]) -> None:
    """Candidates must be one rank's, in taking order, with counters that never shrink.

    Raises ``RecoveryError`` naming what is wrong.
    """
    for older, newer in itertools.pairwise(records):
        if older.rank != rank or newer.rank != rank:
            raise RecoveryError(
                f"rank {rank}'s checkpoint list holds a record of rank {newer.rank}; "
                "pass each rank's own records"
            )
        if newer.index != VOLATILE_INDEX and newer.index <= older.index:
            raise RecoveryError(
                f"rank {rank}'s checkpoints are not oldest first ({older.index} before "
                f"{newer.index}); sort them by index"
            )
        for counters_old, counters_new, what in (
            (older.sent, newer.sent, "sent"),
            (older.received, newer.received, "received"),
        ):
            for peer, count in counters_old.items():
                if counters_new.get(peer, 0) < count:
                    raise RecoveryError(
                        f"rank {rank}'s {what} counter for peer {peer} shrinks from checkpoint "
                        f"{older.index} to {newer.index}; the stored records are not from one "
                        "execution"
                    )


def candidate_records(view: RecoveryView) -> dict[int, list[CheckpointRecord]]:
    """Each rank's candidates, oldest first: committed checkpoints, then a survivor's volatile.

    The implicit checkpoint 0 is added where the view leaves it out.
    """
    candidates: dict[int, list[CheckpointRecord]] = {}
    for rank in range(view.n):
        records = list(view.committed.get(rank, ()))
        if not records or records[0].index != 0:
            records.insert(0, initial_record(rank))
        if rank not in view.failed:
            volatile = view.volatile.get(rank)
            if volatile is None:
                raise RecoveryError(
                    f"rank {rank} did not fail but the recovery view has no volatile record "
                    "for it; list it in 'failed' or give its current counters"
                )
            records.append(volatile)
        check_candidates(rank, records)
        candidates[rank] = records
    return candidates


#: Stands in for a rank whose records ``advance_garbage_line`` was not given: nothing sent.
_SENT_NOTHING = CheckpointRecord(rank=-1, index=0, forced=False, sent={}, received={})


def maximum_consistent_cut(
    candidates: Mapping[int, Sequence[CheckpointRecord]],
    *,
    start: Mapping[int, int] | None = None,
    pinned: Mapping[int, int] | None = None,
) -> dict[int, int] | None:
    """The maximum consistent cut, as a position into each rank's candidate list.

    Rollback propagation from ``start`` (default: every rank's newest candidate); the result is
    the maximum consistent cut among cuts at or before ``start`` (see the module docstring).
    Ranks in ``pinned`` start at the given position and may not move: ``None`` means no
    consistent cut holds them there.
    """
    position: dict[int, int] = {r: len(c) - 1 for r, c in candidates.items()}
    if start is not None:
        position.update(start)
    pinned = pinned or {}
    position.update(pinned)
    for rank, pos in position.items():
        if not 0 <= pos < len(candidates[rank]):
            raise RecoveryError(f"position {pos} is outside rank {rank}'s candidates")
    # Senders outside ``candidates`` are not part of the cut: no orphan on their channels.
    return _propagate(candidates, position, pinned, lambda rank: None)


def _propagate(
    candidates: Mapping[int, Sequence[CheckpointRecord]],
    position: dict[int, int],
    pinned: Mapping[int, int],
    standing: Callable[[int], CheckpointRecord | None],
    *,
    monotone: bool = False,
) -> dict[int, int] | None:
    """Rollback propagation over ``candidates`` from ``position`` (updated in place).

    ``standing(rank)`` is the record of a rank outside ``candidates`` (it never moves, and the
    caller guarantees nothing orphans it), or None where that rank is not part of the cut.
    Cost: one pass over the candidates' ``received`` maps, one over the current records', then
    per move only the receivers of the rank that moved -- not all n ranks.
    """

    def record_of(rank: int) -> CheckpointRecord | None:
        pos = position.get(rank)
        return standing(rank) if pos is None else candidates[rank][pos]

    # Only a rank that ever received from a sender can become its orphan when the sender's
    # position drops: index the receivers once (every candidate, unless the caller checked
    # the counters never shrink: then the starting record names every sender).
    receivers: dict[int, list[int]] = {}
    for rank in position:
        senders: set[int] = set()
        first = position[rank] if monotone else 0
        for record in candidates[rank][first : position[rank] + 1]:
            senders.update(src for src, count in record.received.items() if count > 0)
        senders.discard(rank)
        for src in senders:
            receivers.setdefault(src, []).append(rank)
    # First pass, receiver by receiver: step back past every orphan at the senders' current
    # records. A rank that moved sent less: its receivers are checked again (the work list).
    work: list[int] = []
    for rank in position:
        records = candidates[rank]
        moved = False
        while True:
            record = records[position[rank]]
            orphaned = False
            for src, count in record.received.items():
                if src == rank or count <= 0:
                    continue
                sender = record_of(src)
                if sender is not None and count > sender.sent.get(rank, 0):
                    orphaned = True
                    break
            if not orphaned:
                break
            if rank in pinned:
                return None
            # Candidate 0 received nothing (or, for ``advance_garbage_line``, is consistent
            # with everything at or above the old line), so this never runs below position 0.
            _step_back(rank, position)
            moved = True
        if moved:
            work.append(rank)
    while work:
        sender_rank = work.pop()
        sent = candidates[sender_rank][position[sender_rank]].sent
        for receiver_rank in receivers.get(sender_rank, ()):
            records = candidates[receiver_rank]
            moved = False
            while records[position[receiver_rank]].received.get(sender_rank, 0) > sent.get(
                receiver_rank, 0
            ):
                if receiver_rank in pinned:
                    return None
                _step_back(receiver_rank, position)
                moved = True
            if moved:
                work.append(receiver_rank)
    return position


def _step_back(rank: int, position: dict[int, int]) -> None:
    if position[rank] == 0:
        raise RecoveryError(
            f"rank {rank}'s oldest candidate is an orphan: the first candidate of each rank "
            "must be consistent with every other rank's (index 0 received nothing)"
        )
    position[rank] -= 1


def brute_force_maximum_cut(candidates: Mapping[int, Sequence[CheckpointRecord]]) -> dict[int, int]:
    """The maximum consistent cut by enumerating every cut (a reference for small inputs).

    Independent of the propagation: it checks each cut with ``base.is_consistent`` and takes
    the per-rank maximum of the consistent ones, then checks that maximum is itself
    consistent (closure under max, which makes the answer unique).
    """
    ranks = sorted(candidates)
    total = 1
    for rank in ranks:
        total *= len(candidates[rank])
    if total > BRUTE_FORCE_CUTS_MAX:
        raise RecoveryError(
            f"{total} cuts is too many to enumerate (limit {BRUTE_FORCE_CUTS_MAX}); "
            "use maximum_consistent_cut"
        )
    best = dict.fromkeys(ranks, 0)
    for combo in itertools.product(*(range(len(candidates[r])) for r in ranks)):
        cut = {r: candidates[r][p] for r, p in zip(ranks, combo, strict=True)}
        if is_consistent(cut):
            for r, p in zip(ranks, combo, strict=True):
                best[r] = max(best[r], p)
    if not is_consistent({r: candidates[r][p] for r, p in best.items()}):
        raise RecoveryError("consistent cuts are not closed under max: counters are not monotone")
    return best


def in_transit_messages(
    cut: Mapping[int, CheckpointRecord],
) -> dict[tuple[int, int], range]:
    """Per channel ``(src, dst)``: the sequence numbers sent in the cut but not received in it."""
    lost: dict[tuple[int, int], range] = {}
    for src, sender in cut.items():
        for dst, sent in sender.sent.items():
            receiver = cut.get(dst)
            if receiver is None:
                continue
            got = receiver.received.get(src, 0)
            if sent > got:
                lost[(src, dst)] = range(got + 1, sent + 1)
    return lost


def recovery_line(view: RecoveryView) -> RecoveryLine:
    """The recovery line for ``view``: the maximum consistent cut over each rank's candidates."""
    for rank in view.failed:
        if not 0 <= rank < view.n:
            raise RecoveryError(f"failed rank {rank} is outside 0..{view.n - 1}")
    candidates = candidate_records(view)
    position = maximum_consistent_cut(candidates)
    assert position is not None  # nothing is pinned
    cut = {r: candidates[r][p] for r, p in position.items()}
    assert is_consistent(cut)
    restore = {r: rec.index for r, rec in cut.items() if rec.index != VOLATILE_INDEX}
    rollback = {
        r: Rollback(
            checkpoints_lost=len(candidates[r]) - 1 - position[r],
            events_lost=_events(candidates[r][-1]) - _events(cut[r]),
        )
        for r in cut
    }
    return RecoveryLine(
        cut=cut, restore=restore, in_transit=in_transit_messages(cut), rollback=rollback
    )


def useless_checkpoints(
    committed: Mapping[int, Sequence[CheckpointRecord]],
    volatile: Mapping[int, CheckpointRecord] | None = None,
) -> set[tuple[int, int]]:
    """``(rank, index)`` of every committed checkpoint that no consistent cut contains.

    Cuts may also use ``volatile[r]``, rank r's current state (a checkpoint it could still take;
    Netzer and Xu's final checkpoint). A checkpoint useless here lies on a Z-cycle, and stays
    useless whatever happens later: no recovery line can ever use it.
    """
    candidates: dict[int, list[CheckpointRecord]] = {}
    for rank, records in committed.items():
        listed = list(records)
        if not listed or listed[0].index != 0:
            listed.insert(0, initial_record(rank))
        if volatile is not None and rank in volatile:
            listed.append(volatile[rank])
        check_candidates(rank, listed)
        candidates[rank] = listed
    useless: set[tuple[int, int]] = set()
    for rank, records in candidates.items():
        for pos, record in enumerate(records):
            if record.index == VOLATILE_INDEX:
                continue
            if maximum_consistent_cut(candidates, pinned={rank: pos}) is None:
                useless.add((rank, record.index))
    return useless


@dataclass(frozen=True, slots=True, kw_only=True)
class GarbageLine:
    """What stable storage no longer needs, given the committed checkpoints.

    ``before_index[r]``: rank r's committed checkpoints below this index are garbage.
    ``received[(s, d)]``: rank s may drop its logged messages to ``d`` up to this sequence
    number (``d`` will never roll back before receiving them).
    """

    before_index: Mapping[int, int]
    received: Mapping[tuple[int, int], int]


def garbage_line(committed: Mapping[int, Sequence[CheckpointRecord]]) -> GarbageLine:
    """The line below which nothing is needed: the maximum consistent cut of ``committed``.

    Passing a subset of the committed checkpoints (what one rank has heard of) gives a line at
    or before the true one, so garbage collection on partial knowledge stays safe.
    """
    candidates: dict[int, list[CheckpointRecord]] = {}
    for rank, records in committed.items():
        listed = list(records)
        if not listed or listed[0].index != 0:
            listed.insert(0, initial_record(rank))
        check_candidates(rank, listed)
        candidates[rank] = listed
    position = maximum_consistent_cut(candidates)
    assert position is not None
    cut = {r: candidates[r][p] for r, p in position.items()}
    received = {
        (src, dst): count for dst, rec in cut.items() for src, count in rec.received.items()
    }
    return GarbageLine(before_index={r: rec.index for r, rec in cut.items()}, received=received)


def advance_garbage_line(
    line: Mapping[int, CheckpointRecord],
    newer: Mapping[int, Sequence[CheckpointRecord]],
    *,
    checked: bool = False,
) -> dict[int, CheckpointRecord]:
    """The garbage line once the committed checkpoints ``newer`` are known too (incremental).

    ``line`` is the garbage line so far (``garbage_line`` of what was known, or an earlier
    result of this function); a rank missing from it stands at its checkpoint 0.
    ``newer[r]`` lists rank r's newly known committed checkpoints above ``line[r]``, oldest
    first (with any known earlier ones still above the line). Returns the new line record of
    every rank in ``newer`` whose line moved; the others stay where they were.

    Why it is enough to look above the old line: the old line is a consistent cut of committed
    checkpoints, and knowing more can only raise the maximum consistent cut, so the propagation
    never needs a record below it, and a rank with nothing new stays put and is never an
    orphan (its record is consistent with every record at or above the line). The cost is the
    new records and the ranks they reach, not all n ranks.

    ``checked``: the caller has already checked (``check_candidates``) that each rank's records
    are its own, oldest first, with counters that never shrink from its line record up (as the
    gc collector does once per record when it learns it, instead of once per advance).
    """
    candidates: dict[int, list[CheckpointRecord]] = {}
    for rank, records in newer.items():
        if not records:
            continue
        base = line.get(rank) or initial_record(rank)
        listed = [base, *records]
        if not checked:
            check_candidates(rank, listed)
        candidates[rank] = listed
    position = {rank: len(listed) - 1 for rank, listed in candidates.items()}

    def standing(rank: int) -> CheckpointRecord:
        return line.get(rank) or _SENT_NOTHING

    result = _propagate(candidates, position, {}, standing, monotone=True)
    assert result is not None  # nothing is pinned
    return {rank: candidates[rank][pos] for rank, pos in result.items() if pos > 0}


def cut_of(
    candidates: Mapping[int, Sequence[CheckpointRecord]], position: Mapping[int, int]
) -> dict[int, CheckpointRecord]:
    """The records a position map selects."""
    return {r: candidates[r][p] for r, p in position.items()}
