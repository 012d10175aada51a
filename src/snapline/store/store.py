"""``Store``: save, load, list, verify, delete and gc checkpoints on one backend.

Theory of operation
-------------------
A store is a set of committed checkpoints, one per ``step``; each is a manifest naming
content-addressed chunks (``manifest.py``), written as ``writer.py`` describes and read as
``reader.py`` describes. This module holds the policy around them:

* **Writers** (``save``, ``save_async``, ``delete``, ``gc``) hold the backend's writer lock for
  their whole duration, waiting up to ``lock_timeout_s`` before ``StoreLocked``. Readers take
  no lock; a gc running while another process loads an old step can make that load fail with
  ``CorruptCheckpoint`` (missing chunk), never return wrong data.
* **Async**: ``save_async`` encodes the tree and copies its arrays into the store's staging
  buffer on the caller's thread, then returns a ``PendingSave``; one background thread per
  store writes it, starting while the copy is still running (``staging.py``). At most one
  checkpoint is staged: a further ``save_async`` (or ``save``, ``load``, ``delete``, ``gc``,
  ``wait``, ``close``) first waits for the pending one. A
  background error is raised by ``PendingSave.result()``; if nobody has called ``result()``,
  the next of those calls raises it instead (each error is raised once).
* **Damage**: ``load()`` without a step walks from the newest step down, skipping damaged
  checkpoints with a ``CheckpointDamagedWarning`` and a log line naming what is damaged;
  ``load(step=N)`` raises ``CorruptCheckpoint``. A newer format raises ``UnsupportedFormat``
  rather than being skipped, so an old snapline never silently loads an older state.
* **Pickle**: arbitrary objects are encoded only with ``save(..., allow_pickle=True)`` and
  decoded only with ``load(..., allow_pickle=True)``. Unpickling runs code: never enable it
  for checkpoints you do not trust.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from snapline.errors import (
    CheckpointDamagedWarning,
    CheckpointNotFound,
    ConfigError,
    CorruptCheckpoint,
    NotAStore,
    StoreError,
    UnsupportedFormat,
)
from snapline.state.codec import EncodedTree, encode_tree
from snapline.state.layout import DEFAULT_CHUNK_BYTES, MIN_CHUNK_BYTES, ChunkSpec
from snapline.store.backend import MARKER_KEY, Backend, MissingKey
from snapline.store.manifest import (
    ChunkRef,
    Manifest,
    manifest_key,
    parse_manifest,
    referenced_keys_anyway,
    step_of_manifest_key,
)
from snapline.store.priority import lower_this_thread
from snapline.store.reader import load_state, read_chunk
from snapline.store.retention import Retention, RetentionPolicy
from snapline.store.staging import Staging
from snapline.store.types import (
    CheckpointInfo,
    Damage,
    GcReport,
    ProgressCallback,
    VerifyReport,
)
from snapline.store.writer import Identity, LayoutCache, reusable_chunks, write_checkpoint

log = logging.getLogger("snapline.store")

STORE_FORMAT = "snapline-store"
STORE_FORMAT_VERSION = 1
MAX_STEP = 10**12 - 1
_MANIFEST_CACHE_SIZE = 4


class PendingSave:
    """A checkpoint being written in the background by ``Store.save_async``."""

    def __init__(self, step: int, future: Future[CheckpointInfo]) -> None:
        self.step = step
        self._future = future
        self.observed = False

    def done(self) -> bool:
        """True once the checkpoint is committed or the save failed."""
        return self._future.done()

    def result(self, timeout_s: float | None = None) -> CheckpointInfo:
        """Wait for the commit and return its info; raise the background error, if any."""
        try:
            return self._future.result(timeout=timeout_s)
        except BaseException:
            if self._future.done():
                self.observed = True
            raise

    def _error(self) -> BaseException | None:
        self._future.exception()  # waits
        return self._future.exception()


class Store:
    """Checkpoints of one process (or rank) in one backend; see the module docstring.

    Create it with ``snapline.open_store``. Usable as a context manager (``close`` on exit).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        lock_timeout_s: float = 30.0,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        compress: bool = False,
        io_threads: int = 4,
    ) -> None:
        if chunk_bytes < MIN_CHUNK_BYTES:
            raise ConfigError(f"chunk_bytes must be >= {MIN_CHUNK_BYTES}, got {chunk_bytes}")
        if io_threads < 1:
            raise ConfigError(f"io_threads must be >= 1, got {io_threads}")
        self.backend = backend
        self.lock_timeout_s = lock_timeout_s
        self.chunk_bytes = chunk_bytes
        self.compress = compress
        self.io_threads = io_threads
        # Both pools yield the CPU to the caller's thread where asked (store/priority.py).
        self._io = ThreadPoolExecutor(
            io_threads, thread_name_prefix="snapline-io", initializer=lower_this_thread
        )
        self._bg = ThreadPoolExecutor(
            1, thread_name_prefix="snapline-save", initializer=lower_this_thread
        )
        self._staging = Staging()
        self._layouts = LayoutCache()
        self._pending: PendingSave | None = None
        self._mutex = threading.Lock()
        self._closed = False
        # Parsed manifests by step, with the bytes they were parsed from: a manifest re-read
        # with the same bytes is not parsed again (saves read the newest one every time).
        self._manifests: dict[int, tuple[bytes, Manifest]] = {}

    @property
    def url(self) -> str:
        """Where the store lives (``file:///...`` or ``memory://name``)."""
        return self.backend.url

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- saving ---------------------------------------------------------------------------
    def save(
        self,
        state: object,
        *,
        step: int,
        meta: dict[str, Any] | None = None,
        allow_pickle: bool = False,
        compress: bool | None = None,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> CheckpointInfo:
        """Save ``state`` as checkpoint ``step`` and return once it is committed (durable).

        ``meta`` is a JSON-able dict kept in the manifest. ``compress`` (default: the store's
        setting) compresses each chunk with zstd. Saving an existing step raises
        ``ConfigError`` unless ``overwrite``. ``EncodeError`` names any value the safe codec
        cannot encode; ``allow_pickle=True`` pickles those instead (unsafe to load from
        untrusted sources).
        """
        self._settle()
        meta_ok = self._check_args(step, meta, overwrite)
        encoded = encode_tree(state, allow_pickle=allow_pickle)
        return self._write(encoded, step, meta_ok, compress, progress, overwrite)

    def save_async(
        self,
        state: object,
        *,
        step: int,
        meta: dict[str, Any] | None = None,
        allow_pickle: bool = False,
        compress: bool | None = None,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> PendingSave:
        """Capture ``state`` into staging memory and write it in the background.

        Returns once the state is captured: the caller may mutate its arrays at once. Waits
        first for a previous pending save (at most one is staged). ``result()`` on the
        returned object waits for the commit. Arguments are as for ``save``.
        """
        self._settle()
        meta_ok = self._check_args(step, meta, overwrite)
        capture = self._staging.capture(encode_tree(state, allow_pickle=allow_pickle))
        # The write starts now and reads each chunk once the copy below has passed it.
        future = self._bg.submit(
            self._write,
            capture.staged,
            step,
            meta_ok,
            compress,
            progress,
            overwrite,
            capture.wait_for,
        )
        try:
            capture.copy()
        except BaseException:
            with contextlib.suppress(BaseException):
                future.exception()  # the writer stops with an error and commits nothing
            raise
        pending = PendingSave(step, future)
        self._pending = pending
        return pending

    def wait(self) -> None:
        """Wait for a pending ``save_async``; raise its error if nobody has seen it yet."""
        self._settle()

    def _settle(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.url} is closed")
        pending, self._pending = self._pending, None
        if pending is None:
            return
        error = pending._error()
        if error is not None and not pending.observed:
            pending.observed = True
            raise error

    def _check_args(
        self, step: int, meta: dict[str, Any] | None, overwrite: bool
    ) -> dict[str, Any]:
        if type(step) is not int or not 0 <= step <= MAX_STEP:
            raise ConfigError(f"step must be an int in 0..{MAX_STEP}, got {step!r}")
        meta = {} if meta is None else meta
        if not isinstance(meta, dict):
            raise ConfigError("meta must be a dict of plain JSON values")
        try:
            meta = json.loads(json.dumps(meta, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"meta must hold plain JSON values (str keys): {exc}") from exc
        if not overwrite and step in self.steps():
            raise ConfigError(
                f"step {step} is already committed in {self.url}; save a new step, "
                "pass overwrite=True, or delete it first"
            )
        return meta

    def _write(
        self,
        encoded: EncodedTree,
        step: int,
        meta: dict[str, Any],
        compress: bool | None,
        progress: ProgressCallback | None,
        overwrite: bool,
        ready: Callable[[ChunkSpec], None] | None = None,
    ) -> CheckpointInfo:
        with self.backend.writer_lock(self.lock_timeout_s):
            manifest, data = write_checkpoint(
                self.backend,
                self._io,
                encoded,
                step=step,
                meta=meta,
                chunk_bytes=self.chunk_bytes,
                compress=self.compress if compress is None else compress,
                reusable=self._reusable(),
                streams_max=self.io_threads,
                progress=progress,
                ready=ready,
                replace=overwrite,
                layouts=self._layouts,
            )
            self._remember(step, data, manifest)
        return self._info(manifest, self._previous(step))

    def _reusable(self) -> dict[Identity, ChunkRef]:
        """Chunks a save may point at instead of writing: those of the newest readable step.

        Call under the writer lock (so gc cannot remove them meanwhile). Saves usually follow
        each other, so the newest step shares the most; older steps are not searched.
        """
        for step in reversed(self.steps()):
            try:
                return reusable_chunks(self.backend, self.manifest(step))
            except (CorruptCheckpoint, UnsupportedFormat, CheckpointNotFound):
                continue
        return {}

    # -- reading --------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Committed steps, ascending (a listing only; manifests are not read)."""
        out = []
        for key in self.backend.finalizer.visible(self.backend):
            step = step_of_manifest_key(key)
            if step is not None:
                out.append(step)
        return sorted(out)

    def manifest(self, step: int) -> Manifest:
        """The parsed, checked manifest of ``step`` (``CheckpointNotFound`` when absent)."""
        key = manifest_key(step)
        try:
            data = self.backend.read(key)
        except MissingKey:
            raise CheckpointNotFound(
                f"no checkpoint at step {step} in {self.url} (steps: {_fmt_steps(self.steps())})"
            ) from None
        with self._mutex:
            cached = self._manifests.get(step)
        if cached is not None and cached[0] == data:
            return cached[1]
        manifest = parse_manifest(data, where=f"{key} of {self.url}")
        if manifest.step != step:
            raise CorruptCheckpoint(f"manifest {key} names step {manifest.step}, not {step}")
        self._remember(step, data, manifest)
        return manifest

    def _remember(self, step: int, data: bytes, manifest: Manifest) -> None:
        with self._mutex:
            self._manifests.pop(step, None)
            self._manifests[step] = (data, manifest)
            while len(self._manifests) > _MANIFEST_CACHE_SIZE:
                del self._manifests[next(iter(self._manifests))]

    def load(
        self,
        step: int | None = None,
        *,
        allow_pickle: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """Load checkpoint ``step``, or the newest intact one (see the module docstring)."""
        self._settle()
        if step is not None:
            return load_state(
                self.backend,
                self._io,
                self.manifest(step),
                allow_pickle=allow_pickle,
                progress=progress,
            )
        steps = self.steps()
        if not steps:
            raise CheckpointNotFound(f"store {self.url} has no committed checkpoint yet")
        damaged: list[str] = []
        for candidate in reversed(steps):
            try:
                return load_state(
                    self.backend,
                    self._io,
                    self.manifest(candidate),
                    allow_pickle=allow_pickle,
                    progress=progress,
                )
            except CorruptCheckpoint as exc:
                damaged.append(str(exc))
                message = f"skipping damaged checkpoint step {candidate} in {self.url}: {exc}"
                log.warning(message)
                warnings.warn(message, CheckpointDamagedWarning, stacklevel=2)
        raise CorruptCheckpoint(f"every checkpoint in {self.url} is damaged: " + "; ".join(damaged))

    def info(self, step: int) -> CheckpointInfo:
        """Time, sizes (new vs shared with the previous step) and meta of one checkpoint."""
        return self._info(self.manifest(step), self._previous(step))

    def list(self) -> list[CheckpointInfo]:
        """Info on every committed step, ascending; damaged manifests have ``damaged`` set."""
        out: list[CheckpointInfo] = []
        previous: Manifest | None = None
        for step in self.steps():
            try:
                manifest = self.manifest(step)
            except (CorruptCheckpoint, UnsupportedFormat, CheckpointNotFound) as exc:
                out.append(CheckpointInfo(step=step, damaged=str(exc)))
                previous = None
                continue
            out.append(self._info(manifest, previous))
            previous = manifest
        return out

    def _previous(self, step: int) -> Manifest | None:
        lower = [s for s in self.steps() if s < step]
        if not lower:
            return None
        try:
            return self.manifest(lower[-1])
        except StoreError:
            return None

    @staticmethod
    def _info(manifest: Manifest, previous: Manifest | None) -> CheckpointInfo:
        before = {c.identity for c in previous.chunks} if previous is not None else set()
        seen: set[Identity] = set()
        new = shared = 0
        for c in manifest.chunks:
            if c.identity in seen:
                continue
            seen.add(c.identity)
            if c.identity in before:
                shared += c.stored_size
            else:
                new += c.stored_size
        return CheckpointInfo(
            step=manifest.step,
            created_unix_s=manifest.created_unix_s,
            total_bytes=manifest.total_bytes,
            stored_bytes=new + shared,
            new_bytes=new,
            shared_bytes=shared,
            written_bytes=manifest.written_bytes,
            chunk_count=len(seen),
            leaf_count=len(manifest.leaves),
            meta=manifest.meta,
        )

    # -- checking -------------------------------------------------------------------------
    def verify(
        self, step: int | None = None, *, progress: ProgressCallback | None = None
    ) -> VerifyReport:
        """Check every manifest and every chunk (of ``step``, or of all steps)."""
        steps = self.steps() if step is None else [step]
        if step is not None and step not in self.steps():
            raise CheckpointNotFound(
                f"no checkpoint at step {step} in {self.url} (steps: {_fmt_steps(self.steps())})"
            )
        damage: list[Damage] = []
        # By chunk, not by file: one pack file holds many chunks, each checked on its own.
        work: dict[ChunkRef, tuple[ChunkRef, list[int]]] = {}
        for s in steps:
            try:
                manifest = self.manifest(s)
            except (CorruptCheckpoint, UnsupportedFormat, CheckpointNotFound) as exc:
                damage.append(Damage(step=s, key=manifest_key(s), reason=str(exc)))
                continue
            for ref in manifest.chunks:
                work.setdefault(ref, (ref, []))[1].append(s)
        total = sum(ref.size for ref, _ in work.values())

        def check(item: tuple[ChunkRef, list[int]]) -> tuple[int, str | None]:
            ref, users = item
            try:
                read_chunk(self.backend, ref, step=users[0])
            except CorruptCheckpoint as exc:
                return ref.size, str(exc)
            return ref.size, None

        done = 0
        items = list(work.values())
        for (ref, users), (size, problem) in zip(items, self._io.map(check, items), strict=True):
            done += size
            if progress is not None:
                progress(done, total)
            if problem is not None:
                damage.extend(Damage(step=s, key=ref.key, reason=problem) for s in users)
        return VerifyReport(
            steps_checked=tuple(steps),
            chunks_checked=len(work),
            bytes_checked=total,
            damage=tuple(sorted(damage, key=lambda d: (d.step, d.key))),
        )

    # -- deleting -------------------------------------------------------------------------
    def delete(self, step: int) -> None:
        """Remove checkpoint ``step`` (its chunks stay until ``gc`` finds them unreferenced)."""
        self._settle()
        self._retract(step, missing_ok=False)

    def discard(self, step: int) -> None:
        """Remove checkpoint ``step`` if it is there, from any thread.

        Unlike ``delete`` it leaves a pending ``save_async`` alone (neither waits for it nor
        reports its error: that stays with the thread that saved); the writer lock orders
        the two. For a thread that collects old checkpoints while another one saves new
        ones (a job's rank: its loop saves, its stable-storage thread collects).
        """
        self._retract(step, missing_ok=True)

    def _retract(self, step: int, *, missing_ok: bool) -> None:
        with self.backend.writer_lock(self.lock_timeout_s):
            if step not in self.steps():
                if missing_ok:
                    return
                raise CheckpointNotFound(f"no checkpoint at step {step} in {self.url}")
            self.backend.finalizer.retract(self.backend, manifest_key(step))

    def gc(
        self,
        keep_last: int | None = None,
        keep_every: int | None = None,
        *,
        policy: RetentionPolicy | None = None,
    ) -> GcReport:
        """Apply retention, then delete chunks no manifest references and crashed leftovers.

        ``keep_last``/``keep_every`` build a ``Retention``: ``keep_last=K`` keeps the K newest
        *intact* steps, the newest intact step is always kept, damaged steps newer than the
        oldest retained intact one are kept for inspection and older damaged ones removed; with
        no intact step nothing is removed (``retention.py`` has the details). Retention
        therefore reads and hashes the steps it examines, newest first, like ``verify``. With
        neither rule (and no ``policy``) only unreferenced chunks are reclaimed. Chunks named
        by a damaged-but-parseable manifest are kept. A manifest of a newer format makes gc
        refuse (``UnsupportedFormat``), since it cannot know which chunks that manifest uses.
        """
        self._settle()
        rule = (
            policy if policy is not None else Retention(keep_last=keep_last, keep_every=keep_every)
        )
        with self.backend.writer_lock(self.lock_timeout_s):
            steps = self.steps()
            verdicts: dict[int, bool] = {}
            chunk_ok: dict[ChunkRef, bool] = {}

            def intact(step: int) -> bool:
                if step not in verdicts:
                    verdicts[step] = self._intact(step, chunk_ok)
                return verdicts[step]

            kept = rule.keep(steps, intact=intact)
            doomed = [s for s in steps if s not in kept]
            referenced: set[str] = set()
            for s in sorted(kept):
                key = manifest_key(s)
                try:
                    referenced.update(c.key for c in self.manifest(s).chunks)
                except UnsupportedFormat as exc:
                    raise UnsupportedFormat(f"gc refused: {exc}") from exc
                except (CorruptCheckpoint, CheckpointNotFound):
                    with contextlib.suppress(MissingKey):
                        referenced.update(referenced_keys_anyway(self.backend.read(key)))
            for s in doomed:
                self.backend.finalizer.retract(self.backend, manifest_key(s))
            for key in self.backend.finalizer.abandoned(self.backend):
                self.backend.delete(key)
            partial = self.backend.remove_partial_writes()
            deleted = 0
            freed = 0
            for key in self.backend.list_keys("chunks/"):
                if key in referenced:
                    continue
                freed += self.backend.size(key) or 0
                self.backend.delete(key)
                deleted += 1
            self.backend.sync()
        return GcReport(
            deleted_steps=tuple(doomed),
            kept_steps=tuple(sorted(kept)),
            deleted_chunks=deleted,
            freed_bytes=freed,
            removed_partial_writes=partial,
            kept_damaged_steps=tuple(s for s in sorted(kept) if verdicts.get(s) is False),
        )

    def _intact(self, step: int, chunk_ok: dict[ChunkRef, bool]) -> bool:
        """Whether ``step``'s manifest parses and all its chunks read back with the right hash.

        ``chunk_ok`` caches verdicts by chunk: consecutive steps share most chunks.
        """
        try:
            manifest = self.manifest(step)
        except UnsupportedFormat as exc:
            raise UnsupportedFormat(f"gc refused: {exc}") from exc
        except (CorruptCheckpoint, CheckpointNotFound):
            return False
        for ref in manifest.chunks:
            if ref not in chunk_ok:
                try:
                    read_chunk(self.backend, ref, step=step)
                    chunk_ok[ref] = True
                except CorruptCheckpoint:
                    chunk_ok[ref] = False
            if not chunk_ok[ref]:
                return False
        return True

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        """Wait for a pending save (raising its unseen error), then free threads and staging."""
        if self._closed:
            return
        try:
            self._settle()
        finally:
            self._closed = True
            self._bg.shutdown(wait=True)
            self._io.shutdown(wait=True)
            self._staging = Staging()


def _fmt_steps(steps: list[int]) -> str:
    if not steps:
        return "none"
    if len(steps) > 8:
        return ", ".join(map(str, steps[:3])) + ", ..., " + ", ".join(map(str, steps[-3:]))
    return ", ".join(map(str, steps))


def _marker() -> bytes:
    return json.dumps(
        {"format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION}, indent=1
    ).encode()


def open_backend(backend: Backend, *, create: bool) -> Backend:
    """Check (or create) the store marker of ``backend``."""
    if not backend.is_initialized():
        if not create:
            raise NotAStore(f"no snapline store at {backend.url} (pass create=True to make one)")
        backend.initialize(_marker())
        return backend
    try:
        marker = json.loads(backend.read(MARKER_KEY))
    except (ValueError, MissingKey) as exc:
        raise NotAStore(
            f"{backend.url}: the store marker {MARKER_KEY} is unreadable ({exc})"
        ) from exc
    if not isinstance(marker, dict) or marker.get("format") != STORE_FORMAT:
        raise NotAStore(f"{backend.url}: {MARKER_KEY} does not describe a snapline store")
    version = marker.get("format_version")
    if type(version) is not int or not 1 <= version <= STORE_FORMAT_VERSION:
        raise UnsupportedFormat(
            f"store {backend.url} has format version {version!r}; this snapline reads "
            f"1..{STORE_FORMAT_VERSION}. Upgrade snapline to open it"
        )
    return backend
