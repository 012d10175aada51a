"""``MultiLevelStore``: one rank's checkpoints on several storage levels, seen as one store.

Theory of operation
-------------------
The runtime sees one store (``save_async``, ``load``, ``steps``, ``delete`` ...). Behind it:

* **Save.** ``save_async`` captures the state into the *local* level (the node's own
  directory, a plain ``Store``) and returns at once, as ``Store.save_async`` does. A protect
  thread then waits for the local commit and writes the *partner* copy (``copy_checkpoint``
  into the next node's directory) and the *XOR* segments (``XorLevel``). The returned
  ``LevelledSave`` completes only when those are durable; its ``CheckpointInfo.meta["levels"]``
  names the levels that hold the checkpoint, so whoever records the commit (the rank's
  ledger, the MPI commit record) says which levels hold it only once they do. A partner or
  XOR write that fails (a lost node) is logged and left out of that list; it does not fail
  the checkpoint, which the local level holds.
* **Flush.** Every ``flush_every``-th checkpoint (by checkpoint number, see ``flush_due``) is
  then copied to the *remote* level by one flusher thread, never on the caller's thread. A
  flush still running when the next falls due is not queued behind: only the newest due
  checkpoint waits (the remote level is for the newest state, not for every state). A flush
  commits the remote manifest last, so one killed halfway leaves the remote store
  consistent (nothing visible, orphan files for its gc). ``on_flushed(step, id)`` is called
  once the remote copy is committed.
* **Delete.** ``delete`` removes a step from the local level at once and from the others in
  the flusher thread -- except, when an older step is deleted, the remote level's newest
  step, kept until a newer one is flushed, so that losing every node never leaves the remote
  level empty.
* **Load.** ``load(step)`` tries the levels fastest first -- local, partner, XOR, remote --
  each verified as ``Store.load`` verifies (hashes of every chunk). The first intact copy
  wins; a copy served by a slower level is also written back to the local level (so the
  next failure finds it there). If no level holds ``step`` intact, ``CorruptCheckpoint`` (or
  ``CheckpointNotFound``) is raised exactly as for a one-level store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import xxhash

from snapline.errors import CheckpointNotFound, CorruptCheckpoint, SnaplineError
from snapline.store.backend import MissingKey
from snapline.store.manifest import Manifest, manifest_key
from snapline.store.multilevel.copy import (
    copy_checkpoint,
    pack_checkpoint,
    packed_id,
    unpack_checkpoint,
)
from snapline.store.multilevel.nodes import NodeLayout
from snapline.store.multilevel.xorlevel import XorLevel
from snapline.store.priority import lower_this_thread
from snapline.store.store import PendingSave, Store
from snapline.store.types import CheckpointInfo, GcReport

log = logging.getLogger("snapline.store.multilevel")

_NUMBER_MASK = (1 << 32) - 1


def flush_due(step: int, every: int) -> bool:
    """Whether checkpoint ``step`` goes to the remote level: its number is a multiple of
    ``every``. The number is the step's low 32 bits (protocols that restart their numbering
    in each incarnation keep the incarnation in the high bits)."""
    number = step & _NUMBER_MASK
    return every > 0 and number % every == 0


def checkpoint_id(store: Store, step: int) -> str:
    """What tells two checkpoints of the same step apart: the digest of its manifest bytes.

    Copies on every level share it (they copy the manifest as it is); a step saved again (a
    rolled-back rank reusing its numbers) gets a new one, so a stale copy on a slower level
    is never taken for the current checkpoint.
    """
    try:
        return xxhash.xxh3_128_hexdigest(store.backend.read(manifest_key(step)))
    except MissingKey:
        raise CheckpointNotFound(f"no checkpoint at step {step} in {store.url}") from None


#: A checkpoint being written: done once every fast level (local, partner, XOR) is; its
#: info's ``meta["levels"]`` lists the levels that hold it. The store's own pending save.
LevelledSave = PendingSave


def _open(where: str, *, create: bool = True) -> Store:
    from snapline.store import open_store

    return open_store(where, create=create)


class MultiLevelStore:
    """Checkpoints of rank ``rank`` on the levels of ``layout`` (see the module docstring)."""

    def __init__(
        self,
        layout: NodeLayout,
        rank: int,
        *,
        compress: bool = False,
        on_flushed: Callable[[int, str], None] | None = None,
    ) -> None:
        from snapline.store import open_store

        self.layout = layout
        self.rank = rank
        self.levels = layout.levels
        self.local: Store = open_store(layout.local_store(rank), compress=compress)
        self._partner: Store | None = None
        self._remote: Store | None = None
        self.xor = XorLevel(layout.xor_dirs(rank), rank) if self.levels.xor_group else None
        self.on_flushed = on_flushed
        self._protect = ThreadPoolExecutor(
            1, thread_name_prefix="snapline-protect", initializer=lower_this_thread
        )
        self._flusher = ThreadPoolExecutor(
            1, thread_name_prefix="snapline-flush", initializer=lower_this_thread
        )
        self._flush_lock = threading.Lock()
        # The partner and remote stores are opened (and dropped after an error) from the
        # caller's, the protect and the flusher threads.
        self._open_lock = threading.Lock()
        self._flush_wanted: int | None = None
        self._pending: LevelledSave | None = None
        self._closed = False
        #: The remote level's steps, listed once and then kept up to date (listing an object
        #: store on every ``steps()`` would cost a request each time).
        self._remote_steps: set[int] | None = None
        #: Steps deleted everywhere else but kept on the remote level as its newest one.
        self._remote_doomed: set[int] = set()
        #: Steps ``delete`` was called for (until saved again): hidden from ``steps()`` while
        #: the slower levels drop them in the background, or keep them as the remote newest.
        self._deleted: set[int] = set()
        self._fetched: dict[int, str] = {}
        #: Which level served each step loaded (``local``, ``partner``, ``xor``, ``remote``).
        self.served: dict[int, str] = {}

    @property
    def url(self) -> str:
        """The local level's URL (the level saves go to first)."""
        return self.local.url

    def __repr__(self) -> str:
        return f"MultiLevelStore(rank={self.rank}, levels={self.levels.spec()!r})"

    def __enter__(self) -> MultiLevelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the slower levels' stores, reopened after a failure (a node lost and back) -------
    def partner(self) -> Store | None:
        """The partner level's store of this rank (None when not configured)."""
        if not self.levels.partner:
            return None
        with self._open_lock:
            if self._partner is None:
                self._partner = _open(str(self.layout.partner_store(self.rank)))
            return self._partner

    def remote(self) -> Store | None:
        """The remote level's store of this rank (None when not configured)."""
        if not self.levels.remote:
            return None
        with self._open_lock:
            if self._remote is None:
                self._remote = _open(self.layout.remote_store(self.rank))
            return self._remote

    def _drop(self, level: str) -> None:
        with self._open_lock:
            store = self._partner if level == "partner" else self._remote
            if level == "partner":
                self._partner = None
            else:
                self._remote = None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    # -- saving ---------------------------------------------------------------------------
    def save_async(
        self,
        state: object,
        *,
        step: int,
        meta: dict[str, Any] | None = None,
        allow_pickle: bool = False,
        overwrite: bool = False,
        compress: bool | None = None,
    ) -> LevelledSave:
        """Capture ``state`` into the local level; protect and flush it in the background."""
        self.wait()
        self._deleted.discard(step)
        local = self.local.save_async(
            state,
            step=step,
            meta=meta,
            allow_pickle=allow_pickle,
            overwrite=overwrite,
            compress=compress,
        )
        pending = LevelledSave(step, self._protect.submit(self._protect_step, local.result, step))
        self._pending = pending
        return pending

    def save(self, state: object, *, step: int, **kwargs: Any) -> CheckpointInfo:
        """Save and wait until the fast levels hold ``step`` (see ``save_async``)."""
        return self.save_async(state, step=step, **kwargs).result()

    def _protect_step(self, local_done: Callable[[], CheckpointInfo], step: int) -> CheckpointInfo:
        info = local_done()
        ident = checkpoint_id(self.local, step)
        held = ["local"]
        if self.levels.partner:
            try:
                partner = self.partner()
                assert partner is not None
                copy_checkpoint(self.local, partner, step)
                held.append("partner")
            except (SnaplineError, OSError) as exc:
                log.warning("rank %d: partner copy of step %d failed: %s", self.rank, step, exc)
                self._drop("partner")
        if self.xor is not None:
            try:
                self.xor.write(pack_checkpoint(self.local, step), step)
                held.append("xor")
            except (SnaplineError, OSError) as exc:
                log.warning("rank %d: XOR segments of step %d failed: %s", self.rank, step, exc)
        if self.levels.remote and flush_due(step, self.levels.flush_every):
            self.flush(step)
        return dataclasses.replace(info, meta={**info.meta, "levels": held, "checkpoint_id": ident})

    def flush(self, step: int) -> Future[None]:
        """Copy ``step`` to the remote level in the background (newest due step wins)."""
        with self._flush_lock:
            self._flush_wanted = step
        return self._flusher.submit(self._flush_step, step)

    def _flush_step(self, step: int) -> None:
        with self._flush_lock:
            if self._flush_wanted != step:
                return  # a newer checkpoint is due: flush that one instead
        try:
            remote = self.remote()
            assert remote is not None
            ident = checkpoint_id(self.local, step)
            copy_checkpoint(self.local, remote, step)
        except (SnaplineError, OSError) as exc:
            log.warning(
                "rank %d: flush of step %d to the remote level failed: %s", self.rank, step, exc
            )
            self._drop("remote")
            return
        if self._remote_steps is not None:
            self._remote_steps.add(step)
        for older in sorted(d for d in self._remote_doomed if d < step):
            self._remote_doomed.discard(older)
            self._delete_elsewhere(older)
        if self.on_flushed is not None:
            self.on_flushed(step, ident)

    def wait(self) -> None:
        """Wait for the pending save's fast levels; raise its error if nobody has seen it."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        error = pending._future.exception()  # waits
        if error is not None and not pending.observed:
            pending.observed = True
            raise error

    def wait_flushed(self, timeout_s: float | None = None) -> None:
        """Wait until every flush submitted so far has finished (for tests and ``close``)."""
        self._flusher.submit(lambda: None).result(timeout=timeout_s)

    # -- reading --------------------------------------------------------------------------
    def _level_steps(self) -> list[tuple[str, Callable[[], list[int]]]]:
        out: list[tuple[str, Callable[[], list[int]]]] = [("local", self.local.steps)]
        if self.levels.partner:
            out.append(("partner", lambda: self._store_steps("partner")))
        if self.xor is not None:
            out.append(("xor", self.xor.steps))
        if self.levels.remote:
            out.append(("remote", self._listed_remote_steps))
        return out

    def _listed_remote_steps(self) -> list[int]:
        if self._remote_steps is None:
            self._remote_steps = set(self._store_steps("remote"))
        return sorted(self._remote_steps)

    def _store_steps(self, level: str) -> list[int]:
        try:
            store = self.partner() if level == "partner" else self.remote()
            return [] if store is None else store.steps()
        except (SnaplineError, OSError):
            self._drop(level)
            return []

    def steps(self) -> list[int]:
        """Steps some level holds (a listing; whether intact is known on load), less those
        deleted through this store."""
        found: set[int] = set()
        for _level, steps in self._level_steps():
            found.update(steps())
        return sorted(found - self._deleted)

    def where(self, step: int) -> list[str]:
        """The levels whose listing has ``step`` (fastest first; not verified)."""
        return [level for level, steps in self._level_steps() if step in steps()]

    def manifest(self, step: int) -> Manifest:
        """The manifest of ``step`` from the fastest level that has a readable one."""
        self.wait()
        try:
            return self.local.manifest(step)
        except (CorruptCheckpoint, CheckpointNotFound) as exc:
            self._fetched[step] = self._fetch(step, exc, None)
        return self.local.manifest(step)

    def load(
        self, step: int | None = None, *, allow_pickle: bool = False, expect: str | None = None
    ) -> Any:
        """Load ``step`` (default: the newest step any level holds intact) from the fastest
        level holding it intact; see the module docstring.

        ``expect``: the checkpoint id (``checkpoint_id``) the caller recorded for ``step``; a
        copy with another id (an older checkpoint of the same step) does not count.
        """
        self.wait()
        if step is None:
            return self._load_newest(allow_pickle)
        try:
            self._check_id(self.local, step, expect, "local")
            state = self.local.load(step, allow_pickle=allow_pickle)
        except (CorruptCheckpoint, CheckpointNotFound) as exc:
            self.served[step] = self._fetch(step, exc, expect)
            return self.local.load(step, allow_pickle=allow_pickle)
        # Fetched into the local level by ``manifest`` just before: served by that level.
        self.served[step] = self._fetched.pop(step, "local")
        return state

    def _check_id(self, store: Store, step: int, expect: str | None, level: str) -> None:
        if expect is not None and checkpoint_id(store, step) != expect:
            raise CorruptCheckpoint(
                f"the {level} copy of step {step} is another checkpoint of that step (stale)"
            )

    def _load_newest(self, allow_pickle: bool) -> Any:
        steps = self.steps()
        if not steps:
            raise CheckpointNotFound(f"no level of rank {self.rank} holds a checkpoint yet")
        problems: list[str] = []
        for candidate in reversed(steps):
            try:
                return self.load(candidate, allow_pickle=allow_pickle)
            except CorruptCheckpoint as exc:
                problems.append(str(exc))
        raise CorruptCheckpoint(
            f"every checkpoint of rank {self.rank} is damaged on every level: "
            + "; ".join(problems)
        )

    def _fetch(self, step: int, local_problem: Exception, expect: str | None) -> str:
        """Write ``step`` into the local level from the fastest slower level holding it intact.

        Returns the level that served it; raises ``CorruptCheckpoint`` (or
        ``CheckpointNotFound`` when no level lists it) like a one-level store's load.
        """
        listed = not isinstance(local_problem, CheckpointNotFound)
        problems = [f"local: {local_problem}"]
        for level in ("partner", "xor", "remote"):
            try:
                if level == "xor":
                    if self.xor is None or step not in self.xor.steps():
                        continue
                    listed = True
                    blob = self.xor.read(step)
                    if expect is not None and packed_id(blob) != expect:
                        raise CorruptCheckpoint(
                            f"the XOR copy of step {step} is another checkpoint of that step"
                        )
                    unpack_checkpoint(blob, self.local)
                else:
                    store = self.partner() if level == "partner" else self.remote()
                    if store is None or step not in store.steps():
                        continue
                    listed = True
                    self._check_id(store, step, expect, level)
                    copy_checkpoint(store, self.local, step, rewrite=True)
            except (CorruptCheckpoint, CheckpointNotFound) as exc:
                problems.append(f"{level}: {exc}")
                continue
            except (SnaplineError, OSError) as exc:
                problems.append(f"{level}: {exc}")
                if level != "xor":
                    self._drop(level)
                continue
            log.warning("rank %d: step %d restored from the %s level", self.rank, step, level)
            return level
        if not listed:
            raise CheckpointNotFound(
                f"no level of rank {self.rank} holds step {step} "
                f"(levels: {', '.join(self.levels.names)})"
            )
        raise CorruptCheckpoint(
            f"no level of rank {self.rank} holds step {step} intact: " + "; ".join(problems)
        )

    # -- deleting -------------------------------------------------------------------------
    def delete(self, step: int) -> None:
        """Remove ``step`` from the local level now and from the others in the background.

        Deleting an old step (a newer one is kept) keeps the remote level's newest step until
        a newer one is flushed; deleting the newest (undoing it, as after a rollback) removes
        it from the remote level too, so that no stale copy of that step outlives it.
        """
        self.wait()
        undo = not any(s > step for s in self.local.steps())
        self._deleted.add(step)
        with contextlib.suppress(CheckpointNotFound):
            self.local.delete(step)
        self._flusher.submit(self._delete_elsewhere, step, undo)

    def discard(self, step: int) -> None:
        """Remove an old ``step`` (a newer one exists) from every level, from any thread.

        As ``Store.discard``: a pending save is left alone. The remote level keeps the step
        until a newer one is flushed (as ``delete`` of an old step does).
        """
        self._deleted.add(step)
        self.local.discard(step)
        self._flusher.submit(self._delete_elsewhere, step, False)

    def _delete_elsewhere(self, step: int, undo: bool = False) -> None:
        for level in ("partner", "remote"):
            try:
                if level == "remote" and not undo and not self._remote_newer(step):
                    # The newest flushed checkpoint stays until a newer one is flushed: the
                    # remote level must hold something when every node is lost.
                    self._remote_doomed.add(step)
                    continue
                store = self.partner() if level == "partner" else self.remote()
                if store is not None and step in store.steps():
                    store.delete(step)
                    # Its chunks too (the writer lock keeps a copy in progress safe from it):
                    # nothing else reclaims space on the levels this store writes for a rank.
                    store.gc()
                if level == "remote" and self._remote_steps is not None:
                    self._remote_steps.discard(step)
            except (SnaplineError, OSError) as exc:
                log.warning(
                    "rank %d: deleting step %d on the %s level failed: %s",
                    self.rank,
                    step,
                    level,
                    exc,
                )
                self._drop(level)
        if self.xor is not None:
            self.xor.delete(step)

    def _remote_newer(self, step: int) -> bool:
        return self.levels.remote != "" and any(s > step for s in self._listed_remote_steps())

    def _quiet(self, opener: Callable[[], Store | None]) -> Store | None:
        try:
            return opener()
        except (SnaplineError, OSError):
            return None

    def gc(self, keep_last: int | None = None, keep_every: int | None = None) -> GcReport:
        """Apply retention on the local level and reclaim unreferenced chunks on the partner
        level. (Steps ``delete`` removes from the partner and remote levels have their chunks
        reclaimed there at once, in the background.)"""
        self.wait()
        report = self.local.gc(keep_last=keep_last, keep_every=keep_every)
        partner = self._quiet(self.partner)
        if partner is not None:
            for step in partner.steps():
                if step in report.deleted_steps:
                    partner.delete(step)
            partner.gc()
        if self.xor is not None:
            for step in report.deleted_steps:
                self.xor.delete(step)
        return report

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Wait for the pending save and every flush, then close every level."""
        if self._closed:
            return
        try:
            self.wait()
        finally:
            self._closed = True
            self._protect.shutdown(wait=True)
            self._flusher.shutdown(wait=True)
            for store in (self.local, self._partner, self._remote):
                if store is not None:
                    with contextlib.suppress(Exception):
                        store.close()
