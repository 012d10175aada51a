"""Recovery in the simulator: plan, check, restore, replay, and tell the survivors.

Theory of operation
-------------------
Recovery happens at one instant of simulated time (``restart_delay_s`` after detection), so
no event interleaves with it. The driver gathers the ``RecoveryView`` from simulated stable
storage and the live engines, asks the protocol class for a plan and checks it (every failed
rank restored, to a committed checkpoint). Each planned rank gets a new incarnation: an engine
rebuilt from its checkpoint (a fresh one, re-running ``on_start``, for index 0), its later
checkpoints voided (an undone future). What the rollback un-sent is dropped: survivors forget
arrivals above the restored senders' counters, and in-flight messages of older incarnations
above those counters are void on arrival -- except for ranks that re-execute exactly
(``replay_timers_only``: message logging), whose old messages stay valid because they will be
sent again identically. Then restored ranks replay, ``rearrive`` items are fed through the
protocols, the recovered cut is checked (no channel delivered more than was sent; the app
invariant holds), and every live rank hears ``RecoveryCompleted``. The checkpoint-pattern
checker (for protocols that promise one) forgets what each restored rank did after its
restored checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from snapline.protocols.base import RecoveryPlan, RecoveryView, initial_record, is_consistent
from snapline.runtime.engine import RankEngine

if TYPE_CHECKING:
    from snapline.runtime.sim.driver import Simulator


def recover(sim: Simulator) -> None:
    """Carry out one recovery of ``sim.failed`` now."""
    n = sim.n
    engines = sim.engines
    failed = frozenset(sim.failed)
    committed = {r: sim.storage.committed_records(r) for r in range(n)}
    view = RecoveryView(
        n=n,
        failed=failed,
        committed=committed,
        volatile={r: e.volatile_record() for r, e in enumerate(engines) if e is not None},
        message_logs={r: tuple(log) for r, log in enumerate(sim.storage.logs) if log},
        edges=frozenset(sim.edges),
        tentative={r: sim.storage.tentative_records(r) for r in range(n)},
    )
    plan: RecoveryPlan = sim.protocol_cls.plan_recovery(view)
    sim.recovery_checker.validate_plan(
        view, plan, {r: {rec.index for rec in committed[r]} for r in range(n)}
    )
    # In-doubt checkpoints the planner resolved as committed: committed before any restore.
    for rank, indices in sorted(plan.commit.items()):
        for index in indices:
            sim.commit_checkpoint(rank, index)
        if indices:
            committed[rank] = sim.storage.committed_records(rank)
    cut = {r: view.volatile[r] for r in view.volatile if r not in plan.restore}
    for rank, index in plan.restore.items():
        cut[rank] = next(rec for rec in committed[rank] if rec.index == index)
    if not is_consistent(cut):
        sim.recovery_checker.inconsistent_before_replay += 1

    sim.recovery_gen += 1
    incarnation = len(sim.recoveries) + 1
    restored = dict(sorted(plan.restore.items()))
    exact = plan.replay_timers_only
    rolled_back_s: dict[str, float] = {}
    fresh: set[int] = set()
    for rank, index in restored.items():
        old = engines[rank]
        t_lost = sim.crash_time.get(rank, sim.now_s) if rank in failed else sim.now_s
        if old is not None:
            sim.retire(old)
            if old.done:
                sim.finished -= 1
        sim.epoch[rank] += 1
        sim.incarnation[rank] += 1
        inc = sim.incarnation[rank]
        # Checkpoints taken after the restored one belong to a future that is undone.
        sim.stats["checkpoints_voided"] += sim.storage.void_after(rank, index)
        args = sim.protocol_args(rank)
        if index == 0:
            protocol = sim.protocol_cls.restored(
                record=initial_record(rank), incarnation=inc, **args
            )
            engine = sim.fresh_engine(rank, protocol)
            taken_at_s = 0.0
            fresh.add(rank)
        else:
            image, taken_at_s = sim.storage.restore_image(rank, index)
            protocol = sim.protocol_cls.restored(record=image.record, incarnation=inc, **args)
            engine = RankEngine.restored(
                image=image,
                n=n,
                inbound=sim.inbound[rank],
                outbound=sim.outbound[rank],
                process=sim.factory(rank, n),
                protocol=protocol,
                port=sim,
                tally=sim.tally,
                trace=sim.trace_on,
                incarnation=inc,
            )
        engines[rank] = engine
        if sim.pattern is not None:
            sim.pattern.rollback(rank, index)
        if rank not in exact:
            # In-flight messages of older incarnations above this count are void. An exact
            # re-execution sends the same messages again, so its old ones stay valid.
            sim.restores[rank].append((inc, dict(engine.sent)))
        sim.disk_free_s[rank] = sim.now_s
        rolled_back_s[str(rank)] = max(0.0, t_lost - taken_at_s)
        if sim.writer is not None:
            sim.writer.event(sim.now_s, rank, "restore", {"index": index})
    sim.down.clear()
    live = [e for e in engines if e is not None]
    assert len(live) == n, "every failed rank is restored"
    # Survivors forget arrivals that the restored senders no longer sent (unless the sender
    # re-executes exactly: then what they hold is what it will send again).
    for rank in restored:
        if rank in exact:
            continue
        for dst in sim.outbound[rank]:
            receiver = engines[dst]
            if dst not in restored and receiver is not None:
                receiver.forget_messages_from(
                    rank, max(restored_engine_sent(engines, rank, dst), receiver.received[rank])
                )
    sent = {e.rank: e.sent for e in live}
    received = {e.rank: e.received for e in live}
    sim.channels.rollback(sent, received, set(restored), exact=exact)
    replayed_before = sum(e.stats["replayed"] for e in live)
    for rank in restored:
        restored_engine = engines[rank]
        assert restored_engine is not None
        timers_only = rank in plan.replay_timers_only
        if rank in fresh:
            restored_engine.start(defer_timers=timers_only)
        restored_engine.resume(plan.replay.get(rank, ()), timers_only=timers_only)
    rearrived = 0
    for rank, items in sorted(plan.rearrive.items()):
        receiver = engines[rank]
        assert receiver is not None
        for item in items:
            rearrived += receiver.message_arrived(item.src, item.seq, item.payload, item.piggyback)
    replayed = sum(e.stats["replayed"] for e in live) - replayed_before + rearrived
    # The run's "replayed" total counts re-sent messages fed through the protocol too.
    sim.retired["replayed"] = sim.retired.get("replayed", 0) + rearrived
    sim.tally.requested = sum(e.requested_sends for e in live)
    sim.tally.delivered = sum(sum(e.received.values()) for e in live)
    sim.finished = sum(e.done for e in live)
    sim.recovery_checker.check_cut(sim.edges, sent, received)
    sim.check_invariant("after recovery")
    record = {
        "t_detect": sim.t_detect,
        "t_done": sim.now_s,
        "t_fail": sim.t_first_failure,
        "failed": sorted(failed),
        "restore": {str(r): i for r, i in restored.items()},
        "replayed": replayed,
        "rolled_back_s": rolled_back_s,
    }
    sim.recoveries.append(record)
    if sim.writer is not None:
        sim.writer.recovery(record)
    sim.failed.clear()
    sim.announced.clear()
    sim.crash_time.clear()
    sim.recovery_phase = None
    sim.progress_s = sim.now_s
    restored_set = frozenset(restored)
    for engine in live:
        engine.recovery_completed(
            restored_set, incarnation, frozenset(plan.commit.get(engine.rank, ()))
        )


def restored_engine_sent(engines: Sequence[RankEngine | None], rank: int, dst: int) -> int:
    """How many messages restored ``rank`` has sent to ``dst`` (its restored counter)."""
    engine = engines[rank]
    assert engine is not None
    return engine.sent[dst]
