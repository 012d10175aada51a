"""``Checkpointer``: collective, asynchronous application-level checkpoints of an MPI program.

Theory of operation
-------------------
*Safe point.* ``checkpoint()`` is collective and must be called by every rank at the same step,
at a point where the program has no message in flight (every message sent before it has been
received). The checkpoint then is a consistent cut without in-transit messages, so each rank's
state alone is enough to resume. ``debug=True`` checks the rule (``_debug.py``).

*Layout.* Under the store directory each rank has its own store, ``rank-<r>/`` (the store's
atomic, verified checkpoints, one per step; the rank's *part*), and the job has
``commits/<step>.json`` (``_commit.py``). A global checkpoint exists exactly when its commit
record does.

*Writing.* ``checkpoint(state, step=s)`` captures the state into the store's staging memory and
returns while a background thread writes it (``Store.save_async``): at most one write is in
flight per rank, so the next ``checkpoint()`` (or ``close()``) first waits for it. Then the ranks
agree (allgather) whether every part of the previous step is durable; if so, rank 0 writes the
commit record of that step. A failure anywhere is raised on every rank as ``CheckpointFailed``,
and the previous complete checkpoint stays the newest. So checkpoint ``s`` becomes restorable
at the next ``checkpoint()`` or at ``close()``.

*Restoring.* ``restore()`` is collective: rank 0 reads the commit records and broadcasts them;
the ranks agree on the newest committed step whose part every rank holds and loads intact (the
store verifies hashes; the safe codec never runs code), and drop newer, uncommitted parts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from snapline.errors import CheckpointFailed, ConfigError, CorruptCheckpoint
from snapline.mpi._comm import Collective, mpi4py_MPI
from snapline.mpi._commit import new_record, read_records, remove_record, write_record
from snapline.mpi._debug import CountingComm, check_safe_point
from snapline.mpi._policy import CheckpointPolicy, make_policy
from snapline.store import PendingSave, Store, open_store
from snapline.store.multilevel import (
    LEVEL_NAMES,
    LevelledSave,
    MultiLevelStore,
    NodeLayout,
    parse_levels,
    parse_node_of,
    this_host,
)

log = logging.getLogger("snapline.mpi")

T = TypeVar("T")

LEVELS_ENV = "SNAPLINE_LEVELS"
FLUSH_EVERY_ENV = "SNAPLINE_FLUSH_EVERY"
NODE_OF_ENV = "SNAPLINE_NODE_OF"


class Checkpointer:
    """Collective checkpoint/restart of one MPI program's state (see the module docstring).

    ``comm``: the program's communicator (default ``MPI.COMM_WORLD``); the checkpointer talks on
    a duplicate of it, so its collectives never mix with the program's messages. ``store``: a
    directory on a file system every rank can reach. The schedule of ``should_checkpoint`` is one
    of ``every`` (steps), ``interval_s`` (seconds) or ``mtbf_s`` (Young/Daly from the measured
    cost and the job's mean time between failures); default: every 60 s. ``keep_last``: how
    many complete checkpoints to keep (older parts are deleted). ``debug``: check the safe-point
    rule at each checkpoint; the program must then send and receive through ``ckpt.comm``.
    ``compress``: zstd-compress the parts. ``levels`` (e.g. ``"local:/scratch,partner"``; default
    ``$SNAPLINE_LEVELS``, which ``snapline mpirun --levels`` sets) writes the parts to node-local
    directories first, protected on other nodes and flushed every ``flush_every``-th step to a
    remote level (``snapline.store.multilevel``); ``node_of`` names each rank's node (default:
    its host). The commit records stay under ``store``, which every rank must reach.
    """

    def __init__(
        self,
        comm: Any = None,
        store: str | os.PathLike[str] = "./ckpts",
        *,
        every: int | None = None,
        interval_s: float | None = None,
        mtbf_s: float | None = None,
        policy: CheckpointPolicy | None = None,
        keep_last: int = 2,
        debug: bool = False,
        compress: bool = False,
        levels: str | None = None,
        flush_every: int | None = None,
        node_of: Sequence[str] | None = None,
    ) -> None:
        if comm is None:
            comm = mpi4py_MPI().COMM_WORLD
        if policy is None:
            if every is None and interval_s is None and mtbf_s is None:
                interval_s = 60.0
            policy = make_policy(every=every, interval_s=interval_s, mtbf_s=mtbf_s)
        elif (every, interval_s, mtbf_s) != (None, None, None):
            raise ConfigError("give either policy= or every=/interval_s=/mtbf_s=, not both")
        if type(keep_last) is not int or keep_last < 1:
            raise ConfigError(f"keep_last must be an int >= 1, got {keep_last!r}")
        root = Path(os.fspath(store))
        if "://" in str(store):
            raise ConfigError(
                f"store {str(store)!r}: snapline.mpi needs a directory path on a file system "
                "every rank can reach (URLs are not supported)"
            )
        self._committed: list[int] = []
        self._deleted_since_gc = 0
        self.policy = policy
        self.keep_last = keep_last
        self.root = root
        self._collective = Collective(comm.Dup())
        self.rank = self._collective.rank
        self.size = self._collective.size
        self._counting = CountingComm(comm) if debug else None
        self.comm: Any = self._counting if self._counting is not None else comm
        """The communicator the program should use (counting messages in debug mode)."""
        layout = self._layout(levels, flush_every, node_of)
        self.store: Store | MultiLevelStore = self._agreed(
            "opening the store",
            lambda: (
                open_store(root / f"rank-{self.rank}", compress=compress)
                if layout is None
                else MultiLevelStore(layout, self.rank, compress=compress)
            ),
        )
        self._pending: PendingSave | LevelledSave | None = None
        self._pending_started_s = 0.0
        self._last_checkpoint_s = time.monotonic()
        self._cost_s: float | None = None
        self._closed = False

    def _layout(
        self, levels: str | None, flush_every: int | None, node_of: Sequence[str] | None
    ) -> NodeLayout | None:
        """The levels' layout (arguments, else ``SNAPLINE_LEVELS``...), or None: one store."""
        if levels is None:
            levels = os.environ.get(LEVELS_ENV) or None
            if flush_every is None and os.environ.get(FLUSH_EVERY_ENV):
                flush_every = int(os.environ[FLUSH_EVERY_ENV])
            if node_of is None and os.environ.get(NODE_OF_ENV):
                node_of = os.environ[NODE_OF_ENV].split(",")
        if levels is None:
            if flush_every is not None or node_of is not None:
                raise ConfigError("flush_every and node_of need levels= (e.g. 'local:/scratch')")
            return None
        spec = parse_levels(levels, flush_every=flush_every)
        if node_of is None:
            nodes = self._collective.allgather(this_host())  # every rank's host
        else:
            nodes = parse_node_of(",".join(node_of), self.size)
        return NodeLayout(levels=spec, node_of=tuple(nodes))

    # -- restoring ------------------------------------------------------------------------
    def restore(self) -> Any:
        """Collective: this rank's part of the newest complete checkpoint, or None if none.

        Verified on load (``CorruptCheckpoint`` on one rank makes every rank fall back to the
        next older complete checkpoint). Newer, uncommitted parts are deleted so that the
        resumed run can write those steps again. Never unpickles.
        """
        self._require_open("restore()")
        if self._pending is not None:
            raise ConfigError("call restore() before the first checkpoint(), not after")
        listing = self._collective.bcast(self._read_listing() if self.rank == 0 else None)
        assert listing is not None
        if isinstance(listing, str):  # rank 0 could not read the records: fail everywhere
            raise CheckpointFailed(listing)
        committed = sorted(step for step, ranks in listing if ranks == self.size)
        if listing and not committed:
            raise ConfigError(
                f"the checkpoints in {self.root} were written by a job of "
                f"{sorted({r for _, r in listing})} ranks; this job has {self.size}. Run with "
                "the same number of ranks, or use another store directory"
            )
        mine = set(self._agreed("listing this rank's parts", self.store.steps))
        held = self._collective.allgather(sorted(mine & set(committed)))
        common = set(committed).intersection(*map(set, held))
        chosen: int | None = None
        state: Any = None
        for step in sorted(common, reverse=True):
            outcome = self._gathered(_bind(self._load_part, step))
            failures = _failures(outcome)
            if not failures:
                chosen, state = step, outcome[self.rank][0]
                break
            if self.rank == 0:
                log.warning(
                    "checkpoint step %d cannot be restored (%s); trying an older one",
                    step,
                    _ranks_say(failures),
                )
        if chosen is None and committed:
            raise CheckpointFailed(
                f"no complete checkpoint in {self.root} can be restored: the committed steps "
                f"{committed} each miss or fail to load a rank's part (see the warnings). Check "
                "the rank-* stores with `snapline verify`, or move the directory away to start "
                "over"
            )
        self._agreed("dropping uncommitted parts", lambda: self._drop_newer(chosen))
        self._committed = [s for s in committed if chosen is not None and s <= chosen]
        if self._counting is not None:
            self._counting.reset()
        self._last_checkpoint_s = time.monotonic()
        return state

    def _read_listing(self) -> list[tuple[int, int]] | str:
        """Rank 0: (step, ranks) of every commit record, or what went wrong reading them."""
        try:
            records, problems = read_records(self.root)
        except OSError as exc:
            return (
                f"rank 0 could not read the commit records in {self.root / 'commits'} "
                f"({exc.strerror or exc}); check that the directory is readable on every rank"
            )
        for problem in problems:
            log.warning("ignoring a damaged commit record: %s", problem)
        return [(r.step, r.ranks) for r in records]

    def _load_part(self, step: int) -> Any:
        meta = self.store.manifest(step).meta
        if meta.get("rank") != self.rank or meta.get("ranks") != self.size:
            raise CorruptCheckpoint(
                f"the part of step {step} in {self.store.url} belongs to rank "
                f"{meta.get('rank')!r} of {meta.get('ranks')!r}, not rank {self.rank} of "
                f"{self.size}"
            )
        return self.store.load(step)

    def _drop_newer(self, chosen: int | None) -> None:
        for step in self.store.steps():
            if chosen is None or step > chosen:
                self.store.delete(step)
        if self.rank == 0:
            records, _ = read_records(self.root)
            for record in records:
                if chosen is None or record.step > chosen:
                    remove_record(self.root, record.step)

    # -- scheduling -----------------------------------------------------------------------
    def should_checkpoint(self, step: int) -> bool:
        """Whether to checkpoint at ``step``, the same answer on every rank.

        Collective for time-based schedules (``interval_s``, ``mtbf_s``): rank 0 decides from
        its clock and broadcasts, so every rank must call it at every step it is called at.
        """
        self._require_open("should_checkpoint()")
        if not self.policy.needs_clock:
            return self.policy.due(step=step, since_last_s=0.0, cost_s=self._cost_s)
        decision = None
        if self.rank == 0:
            since = time.monotonic() - self._last_checkpoint_s
            decision = self.policy.due(step=step, since_last_s=since, cost_s=self._cost_s)
        return bool(self._collective.bcast(decision))

    @property
    def cost_s(self) -> float | None:
        """The last measured checkpoint cost (slowest rank's write, seconds), or None."""
        return self._cost_s

    @property
    def committed_steps(self) -> list[int]:
        """Steps of the complete checkpoints this job knows of, ascending."""
        return list(self._committed)

    # -- checkpointing --------------------------------------------------------------------
    def checkpoint(self, state: object, *, step: int) -> None:
        """Collective: save this rank's ``state`` as its part of checkpoint ``step``.

        Call it on every rank at the same step, with no message in flight. Returns once the
        state is captured (arrays may be changed at once) while the write continues; it first
        waits for the previous write and commits that checkpoint. ``CheckpointFailed`` (on every
        rank) when a part could not be encoded or written, or the commit record not written.
        """
        self._require_open("checkpoint()")
        if self._counting is not None:
            check_safe_point(self._collective, self._counting, step)
        self._finish_previous()
        self._last_checkpoint_s = time.monotonic()
        started = time.time()
        outcome = self._gathered(
            lambda: self.store.save_async(
                state, step=step, meta={"rank": self.rank, "ranks": self.size}
            )
        )
        failures = _failures(outcome)
        pending = outcome[self.rank][0]
        if failures:
            if pending is not None:
                # Its part can never be committed: wait so the store is idle, drop the outcome.
                _quietly(pending.result)
            raise CheckpointFailed(
                f"checkpoint step {step} could not be started: {_ranks_say(failures)}. The "
                f"newest complete checkpoint is {self._newest()}; fix the state or the store "
                "and call checkpoint() again"
            )
        self._pending, self._pending_started_s = pending, started

    def _finish_previous(self) -> None:
        """Wait for the write in flight, agree it is durable everywhere, commit it."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        outcome = self._gathered(lambda: _written(pending, self._pending_started_s), share=True)
        failures = _failures(outcome)
        if failures:
            raise CheckpointFailed(
                f"writing checkpoint step {pending.step} failed on {_ranks_say(failures)}. It "
                f"was not committed; the newest complete checkpoint is {self._newest()}. Fix "
                f"the cause (space, permissions, health of {self.root}), then checkpoint again "
                "or relaunch to resume"
            )
        # The slowest part decides when the global checkpoint is complete.
        self._cost_s = max(max(float(w[0]) if w else 0.0 for w, _ in outcome), 0.0)
        # The levels every part is durable on (each part's save waited for them).
        held = [set(w[1]) if w else set() for w, _ in outcome]
        levels = [name for name in LEVEL_NAMES if all(name in h for h in held)]
        self._agreed(
            f"committing checkpoint step {pending.step}",
            lambda: self._commit(pending.step, levels),
        )
        self._committed.append(pending.step)
        self._agreed("deleting old checkpoints", self._apply_retention)

    def _commit(self, step: int, levels: list[str]) -> None:
        if self.rank == 0:
            write_record(self.root, new_record(step, self.size, levels=levels))

    def _apply_retention(self) -> None:
        doomed = self._committed[: -self.keep_last]
        self._committed = self._committed[-self.keep_last :]
        if not doomed:
            return
        # Records first: a crash between leaves parts without a record, never the reverse.
        if self.rank == 0:
            for step in doomed:
                remove_record(self.root, step)
        held = set(self.store.steps())
        for step in doomed:
            if step in held:
                self.store.delete(step)
        # gc (walking and unlinking chunks) is most of the time checkpoint() blocks: run it once
        # keep_last checkpoints' chunks are garbage, so at most that much disk waits for it.
        self._deleted_since_gc += len(doomed)
        if self._deleted_since_gc >= self.keep_last:
            self.store.gc()
            self._deleted_since_gc = 0

    def _newest(self) -> str:
        return f"step {self._committed[-1]}" if self._committed else "none (a rerun starts over)"

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Collective: wait for the last write, commit it, free the store and communicator."""
        if self._closed:
            return
        try:
            self._finish_previous()
        finally:
            self._closed = True
            _quietly(self.store.close)
            _quietly(self._collective.comm.Free)

    def abandon(self) -> None:
        """Local: stop without committing the write in flight (after an error on this rank).

        Not collective, so it is safe where other ranks may have failed; the checkpoint being
        written stays uncommitted.
        """
        if self._closed:
            return
        self._closed = True
        if self._pending is not None:
            _quietly(self._pending.result)
            self._pending = None
        _quietly(self.store.close)

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # After an exception other ranks may never reach close(): a collective would hang.
        if exc_type is None:
            self.close()
        else:
            self.abandon()

    # -- agreement ------------------------------------------------------------------------
    def _gathered(
        self, action: Callable[[], T], *, share: bool = False
    ) -> list[tuple[T | None, str | None]]:
        """Run ``action`` here; every rank's (result, error text), in rank order.

        Results of other ranks are None unless ``share`` (then they must pickle).
        """
        try:
            mine: tuple[T | None, str | None] = (action(), None)
        except Exception as exc:
            mine = (None, f"{type(exc).__name__}: {exc}")
        results = self._collective.allgather(mine if share else (None, mine[1]))
        if share:
            return results
        return [(mine[0] if r == self.rank else None, err) for r, (_, err) in enumerate(results)]

    def _agreed(self, what: str, action: Callable[[], T]) -> T:
        outcome = self._gathered(action)
        failures = _failures(outcome)
        if failures:
            raise CheckpointFailed(
                f"{what} failed on {_ranks_say(failures)}; raised on every rank. The newest "
                f"complete checkpoint is {self._newest()}"
            )
        return outcome[self.rank][0]  # type: ignore[return-value]

    def _require_open(self, call: str) -> None:
        if self._closed:
            raise ConfigError(f"{call} on a closed Checkpointer; create a new one")


def _written(pending: PendingSave | LevelledSave, started_s: float) -> tuple[float, list[str]]:
    """A part's write cost and the levels holding it (``[]`` for a one-level store)."""
    info = pending.result()
    return info.created_unix_s - started_s, list(info.meta.get("levels", []))


def levels_env(
    levels: str | None, flush_every: int | None, node_of: str | None, *, ranks: int
) -> dict[str, str]:
    """What ``snapline mpirun --levels ...`` puts in the program's environment (checked)."""
    if levels is None:
        if flush_every is not None or node_of is not None:
            raise ConfigError("--flush-every and --node-of need --levels")
        return {}
    env = {LEVELS_ENV: parse_levels(levels, flush_every=flush_every).absolute().spec()}
    if flush_every is not None:
        env[FLUSH_EVERY_ENV] = str(flush_every)
    if node_of is not None:
        env[NODE_OF_ENV] = ",".join(parse_node_of(node_of, ranks))
    return env


def _failures(outcome: list[tuple[Any, str | None]]) -> list[tuple[int, str]]:
    return [(rank, err) for rank, (_, err) in enumerate(outcome) if err is not None]


def _ranks_say(failures: list[tuple[int, str]]) -> str:
    return "; ".join(f"rank {rank}: {error}" for rank, error in failures)


def _bind(call: Callable[[int], T], step: int) -> Callable[[], T]:
    return lambda: call(step)


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except Exception as exc:
        log.debug("ignored during cleanup: %s", exc)
