"""Resuming a stopped job on another number of ranks: ``snapline run --resume -n M``.

Theory of operation
-------------------
A resize is done by the runtime at resume time, on the stopped job's store, before any rank
starts; protocols are not involved beyond their ``plan_recovery``.

1. **Cut.** The recovery line ``--resume`` would restore (the protocol's ``plan_recovery``
   with every rank failed) names one checkpoint per rank. Its channel counters must form a
   consistent cut (nothing received that was not sent), and every message in transit in it
   (sent before the sender's checkpoint, not received before the receiver's) must be at hand:
   recorded channel state or logged messages from the plan (``replay``, ``rearrive``), or a
   send the sender's checkpoint still held. Otherwise the protocol cannot resize (a clear
   ``ConfigError``; see ``docs/howto/resize.md`` for which can).
2. **Split.** Each checkpointed state is put back into a process of the old job (the app's
   factory, then ``restore``) and asked for its ``keyed_state``; every key goes to the rank
   that owns its key group among the new ranks, and every in-transit message (and every send
   a checkpoint held) to the owner of its ``message_key``. A rank at its initial state
   contributes what its factory gives it (and, after an earlier resize, that resize's start).
3. **Commit.** The new ranks' start states (their keys and the messages to deliver first)
   are saved in a store under ``resize/<g>/start`` and the directory is renamed into place;
   then the old ranks' ledgers and stores are moved into ``resize/<g>/previous`` (kept, not
   deleted); last ``job.json`` is rewritten with the new ``-n`` and ``resized = <g>``. A
   crash in between leaves a generation that the next ``--resume`` finishes
   (``finish_interrupted``).

The resized job then resumes as a job with no checkpoint yet: each rank's *initial* state is
its start state (``start_factory`` builds it: ``restore_keyed``, then ``on_message`` for
each re-routed message before ``on_start``), so a failure before its first checkpoint rolls
back to the resize, never to the job's first start. The old ranks' files are pruned
(``prune_previous``) by a later ``--resume`` once the new ranks' recovery line has a
committed checkpoint of every rank.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from snapline.errors import ConfigError, SnaplineError
from snapline.protocols import protocol_class
from snapline.protocols.base import CheckpointRecord, RecoveryView, Redelivery, initial_record
from snapline.runtime import keyed
from snapline.runtime.keyed import Key, KeyedProcess
from snapline.runtime.local.config import JobConfig, ProcessFactory, app_factory, save_job
from snapline.runtime.local.ledger import LedgerView, read_ledger
from snapline.runtime.process import Context, Process, State
from snapline.topology import Topology

RESIZE_DIR = "resize"
_META = "meta.json"


@dataclass(slots=True, kw_only=True)
class StartState:
    """What a rank of a resized job starts from: its keys and the messages it gets first."""

    items: list[tuple[Key, State]]
    #: ``(src, payload)``: ``src`` is the sender's rank in the job that was checkpointed.
    inbox: list[tuple[int, object]]

    def to_plain(self) -> dict[str, Any]:
        """Plain data for the store."""
        return {
            "items": [[k, v] for k, v in self.items],
            "inbox": [[src, payload] for src, payload in self.inbox],
        }

    @classmethod
    def from_plain(cls, raw: Mapping[str, Any]) -> StartState:
        """Inverse of ``to_plain``."""
        return cls(
            items=[(k, v) for k, v in raw["items"]],
            inbox=[(int(src), payload) for src, payload in raw["inbox"]],
        )


# ------------------------------------------------------------------------------- the cut


@dataclass(slots=True, kw_only=True)
class _Cut:
    items: dict[Key, State]
    #: ``(src, payload)`` in channel order per sender.
    in_transit: list[tuple[int, object]]
    key_groups: int
    message_key: Any


def _no_keyed_state(config: JobConfig, new_n: int) -> ConfigError:
    return ConfigError(
        f"{config.app} declares no keyed state, so it can only resume on {config.n} ranks; "
        f"resume with -n {config.n}, or make its Process a snapline.runtime.keyed.KeyedProcess "
        f"to resume on {new_n} (see docs/howto/resize.md)"
    )


def _is_complete(n: int, edges: list[list[int]]) -> bool:
    return len({(int(s), int(d)) for s, d in edges if int(s) != int(d)}) == n * (n - 1)


def _load_start(store_dir: Path, generation: str, rank: int, allow_pickle: bool) -> StartState:
    from snapline.store import open_store

    with open_store(store_dir / RESIZE_DIR / generation / "start", create=False) as store:
        return StartState.from_plain(store.load(rank, allow_pickle=allow_pickle))


def _read_cut(base: Path, store_dir: Path, config: JobConfig, new_n: int) -> _Cut:
    """The keyed content of the recovery line of the job whose ledgers and stores are in base."""
    from snapline.store import open_store

    factory = app_factory(config.app, config.app_options)
    probe = factory(0, config.n)
    if not isinstance(probe, KeyedProcess):
        raise _no_keyed_state(config, new_n)
    if not _is_complete(config.n, config.edges):
        raise ConfigError(
            f"the job in {store_dir} runs on topology {config.topology!r}; a resize routes each "
            "key to its owner, which needs a channel between every two ranks (topology "
            "complete)"
        )
    n = config.n
    ledgers: dict[int, LedgerView] = {
        r: read_ledger(base / "ledger" / f"rank-{r}.log", r) for r in range(n)
    }
    view = RecoveryView(
        n=n,
        failed=frozenset(range(n)),
        committed={r: lv.committed_records() for r, lv in ledgers.items()},
        volatile={},
        message_logs={r: list(lv.message_log) for r, lv in ledgers.items()},
        edges=frozenset((int(s), int(d)) for s, d in config.edges),
        tentative={r: lv.tentative_records() for r, lv in ledgers.items()},
    )
    plan = protocol_class(config.protocol).plan_recovery(view)
    if plan.replay_timers_only:
        raise ConfigError(
            f"{config.protocol} recovers by re-executing the messages each rank logged after "
            "its checkpoint, so its checkpoints are no consistent cut that keys could be "
            f"split from: a job under it can only resume on {n} ranks (resume with -n {n}; "
            "docs/howto/resize.md lists the protocols that can resize)"
        )
    records: dict[int, CheckpointRecord] = {}
    for r in range(n):
        index = int(plan.restore.get(r, 0))
        lv = ledgers[r]
        if index == 0:
            records[r] = initial_record(r)
        elif index in lv.persisted:
            records[r] = lv.persisted[index]
        else:
            raise ConfigError(f"rank {r}'s checkpoint {index} is missing from its ledger")
    # Messages the plan can deliver again, by channel and sequence number.
    at_hand: dict[tuple[int, int], dict[int, object]] = {}
    for dst in range(n):
        for item in [*plan.replay.get(dst, ()), *plan.rearrive.get(dst, ())]:
            if isinstance(item, Redelivery):
                at_hand.setdefault((item.src, dst), {})[item.seq] = item.payload
    items: dict[Key, State] = {}
    in_transit: list[tuple[int, object]] = []
    for r in range(n):
        index = records[r].index
        process = factory(r, n)
        if not isinstance(process, KeyedProcess):
            raise _no_keyed_state(config, new_n)
        held: list[tuple[int, object]] = []
        if index == 0 and config.resized:
            start = _load_start(store_dir, config.resized, r, config.allow_pickle)
            process.restore_keyed(dict(start.items))
            held = list(start.inbox)
        elif index > 0:
            with open_store(base / f"rank-{r}", create=False) as store:
                process.restore(store.load(index, allow_pickle=config.allow_pickle))
            extras = ledgers[r].extras.get(index, {})
            assert isinstance(extras, dict)
            if extras.get("held_outputs"):
                raise ConfigError(
                    f"rank {r}'s checkpoint holds outputs not yet released; a resize cannot "
                    f"move them: resume with -n {n} until the job has released them"
                )
            for request in extras.get("requests") or ():
                if request[0] != "send":
                    raise ConfigError(
                        f"rank {r}'s checkpoint holds an output not yet issued; resume with -n {n}"
                    )
                held.append((r, request[2]))
        for key, value in process.keyed_state().items():
            if key in items:
                raise ConfigError(
                    f"key {key!r} is held by two ranks (rank {r} and another); keyed state "
                    "must hold each key on one rank only"
                )
            items[key] = value
        in_transit.extend(held)
    # Per sender, what was on its channels comes before what its checkpoint still held.
    in_transit = [
        *in_transit_messages(records, config.edges, at_hand, protocol=config.protocol),
        *in_transit,
    ]
    return _Cut(
        items=items,
        in_transit=in_transit,
        key_groups=int(probe.key_groups),
        message_key=probe.message_key,
    )


def in_transit_messages(
    records: Mapping[int, CheckpointRecord],
    edges: Iterable[Sequence[int]],
    at_hand: Mapping[tuple[int, int], Mapping[int, object]],
    *,
    protocol: str,
) -> list[tuple[int, object]]:
    """``(src, payload)`` of every message in transit in the cut ``records``, channel order.

    ``at_hand[(src, dst)][seq]`` are the payloads the recovery plan can deliver again. Raises
    ``ConfigError`` when the cut has an orphan or a message in transit is not at hand.
    """
    n = len(records)
    out: list[tuple[int, object]] = []
    for src, dst in sorted((int(s), int(d)) for s, d in edges):
        sent = int(records[src].sent.get(dst, 0))
        got = int(records[dst].received.get(src, 0))
        if got > sent:
            raise ConfigError(
                f"the recovery line of {protocol} restores rank {dst} after it received "
                f"{got} messages from rank {src}, which sent only {sent} in it: not a "
                "consistent cut of checkpoints, so the job cannot resize (resume with "
                f"-n {n}; see docs/howto/resize.md for the protocols that can)"
            )
        channel = at_hand.get((src, dst), {})
        for seq in range(got + 1, sent + 1):
            if seq not in channel:
                raise ConfigError(
                    f"message {seq} on channel {src}->{dst} is in transit in the recovery line, "
                    f"and {protocol} recorded no copy of it that the runtime could re-route: "
                    f"the job cannot resize (resume with -n {n}; see docs/howto/resize.md for "
                    "the protocols that can)"
                )
            out.append((src, channel[seq]))
    return out


def plan_starts(
    items: Mapping[Key, State],
    in_transit: list[tuple[int, object]],
    *,
    new_n: int,
    key_groups: int,
    message_key: Any,
) -> list[StartState]:
    """Each new rank's keys and the in-transit messages about them (channel order kept)."""
    keyed.check_parallelism(new_n, key_groups)
    starts = [StartState(items=[], inbox=[]) for _ in range(new_n)]
    for key in sorted(items, key=lambda k: (isinstance(k, int), str(k))):
        starts[keyed.owner(key, new_n, key_groups)].items.append((key, items[key]))
    for src, payload in in_transit:
        starts[keyed.owner(message_key(payload), new_n, key_groups)].inbox.append((src, payload))
    return starts


# ------------------------------------------------------------------------------- commit


def _generations(store_dir: Path) -> list[int]:
    root = store_dir / RESIZE_DIR
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _movable(store_dir: Path, n: int) -> list[str]:
    return ["ledger", *(f"rank-{r}" for r in range(n))]


def _finish(
    store_dir: Path, config: JobConfig, generation: int, meta: Mapping[str, Any]
) -> JobConfig:
    """Steps after the start states are in place: move the old ranks' files, rewrite job.json."""
    gdir = store_dir / RESIZE_DIR / str(generation)
    previous = gdir / "previous"
    previous.mkdir(exist_ok=True)
    for name in _movable(store_dir, int(meta["from_n"])):
        if (store_dir / name).exists():
            os.replace(store_dir / name, previous / name)
    _fsync_dir(previous)
    _fsync_dir(store_dir)
    new_n = int(meta["to_n"])
    topo = Topology.parse(config.topology, new_n, seed=config.seed)
    resized = replace(
        config,
        n=new_n,
        edges=[list(e) for e in sorted(topo.edges)],
        resized=str(generation),
    )
    save_job(store_dir, resized)
    return resized


def finish_interrupted(store_dir: Path, config: JobConfig) -> JobConfig:
    """Finish a resize a crash interrupted after its start states were committed."""
    gens = _generations(store_dir)
    if not gens or str(gens[-1]) == config.resized:
        return config
    meta = json.loads((store_dir / RESIZE_DIR / str(gens[-1]) / _META).read_text())
    if int(meta["from_n"]) != config.n or str(meta["previous"]) != config.resized:
        return config
    return _finish(store_dir, config, gens[-1], meta)


def resize_job(store_dir: Path, config: JobConfig, new_n: int) -> JobConfig:
    """Prepare the stopped job in ``store_dir`` to resume on ``new_n`` ranks; the new config.

    Raises ``ConfigError`` (changing nothing) when the app or protocol cannot resize.
    """
    if new_n < 1:
        raise ConfigError(f"-n must be at least 1, got {new_n}")
    cut = _read_cut(store_dir, store_dir, config, new_n)
    starts = plan_starts(
        cut.items,
        cut.in_transit,
        new_n=new_n,
        key_groups=cut.key_groups,
        message_key=cut.message_key,
    )
    from snapline.store import open_store

    root = store_dir / RESIZE_DIR
    root.mkdir(mode=0o700, exist_ok=True)
    generation = (_generations(store_dir) or [0])[-1] + 1
    tmp = root / f".{generation}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700)
    with open_store(tmp / "start") as store:
        for rank, start in enumerate(starts):
            store.save(start.to_plain(), step=rank, allow_pickle=config.allow_pickle)
    meta = {
        "from_n": config.n,
        "to_n": new_n,
        "previous": config.resized,
        "key_groups": cut.key_groups,
        "keys": len(cut.items),
        "in_transit": len(cut.in_transit),
    }
    (tmp / _META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    with open(tmp / _META, "rb") as fh:
        os.fsync(fh.fileno())
    _fsync_dir(tmp)
    os.replace(tmp, root / str(generation))
    _fsync_dir(root)
    return _finish(store_dir, config, generation, meta)


def prune_previous(store_dir: Path, config: JobConfig) -> list[Path]:
    """Delete old ranks' files of past resizes once every rank has a committed checkpoint."""
    if not config.resized:
        return []
    from snapline.runtime.local.jobdir import job_checkpoints

    with contextlib.suppress(SnaplineError):
        line = job_checkpoints(store_dir).recovery_line
        if line is None or not all(index > 0 for index in line.values()):
            return []
        removed = []
        for generation in _generations(store_dir):
            previous = store_dir / RESIZE_DIR / str(generation) / "previous"
            if previous.exists():
                shutil.rmtree(previous)
                removed.append(previous)
        return removed
    return []


# ------------------------------------------------------------------------------- workers


class _StartOfResizedRank(Process):
    """A resized rank's process: delivers the re-routed messages before ``on_start``."""

    def __init__(self, inner: Process, inbox: list[tuple[int, object]]) -> None:
        self.inner = inner
        self.inbox = inbox

    def state(self) -> State:
        return self.inner.state()

    def restore(self, state: State) -> None:
        self.inner.restore(state)

    def on_start(self, ctx: Context) -> None:
        for src, payload in self.inbox:
            self.inner.on_message(ctx, src, payload)
        self.inner.on_start(ctx)

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        self.inner.on_message(ctx, src, payload)

    def on_timer(self, ctx: Context, name: str) -> None:
        self.inner.on_timer(ctx, name)

    def result(self) -> object:
        return self.inner.result()


def start_factory(factory: ProcessFactory, store_dir: Path, config: JobConfig) -> ProcessFactory:
    """``factory``, or, for a resized job, one that builds each rank in its start state."""
    generation = config.resized
    if not generation:
        return factory

    def build(rank: int, n: int) -> Process:
        process = factory(rank, n)
        start = _load_start(store_dir, generation, rank, config.allow_pickle)
        if not isinstance(process, KeyedProcess):
            raise ConfigError(f"{config.app} was resized but declares no keyed state")
        process.restore_keyed(dict(start.items))
        return _StartOfResizedRank(process, start.inbox)

    return build
