"""``LocalDirectory``: a store in a local directory (``file://`` URLs and plain paths).

Theory of operation
-------------------
Every blob is written to ``.<name>.tmp-<pid>-<n>`` in its final directory, fsync'd, and
renamed onto its final name with ``os.replace``; the directories that gained or lost names
are fsync'd by ``sync()``, before the manifest is committed and after it. While a large blob
(a pack file) is written, writeback of what is already written is started every few MiB
(``sync_file_range`` on Linux): the disk then works while the rest is copied, instead of the
whole blob waiting for the final fsync, which on the dev machine halves the time of
write + fsync. Many small pieces are handed to the kernel in one ``pwritev``. A save
stream's pack files come through ``write_many``: each is fsync'd (and renamed) a few files
later, so no fsync holds up the next file's copy; from ``save_async``'s staging memory, large
page-aligned pieces are written with ``O_DIRECT`` (no page cache copy; the rest of the file
goes through the page cache as usual, and the fsync is the same). A ``kill -9`` at
any moment therefore leaves either no file or a complete, fsync'd file under each final name,
plus perhaps a temporary file that ``remove_partial_writes`` (run by gc) deletes.

The writer lock is ``fcntl.flock`` on ``<root>/lock``. It is held for a whole save, gc or
delete, so a gc can never delete a chunk that a concurrent save decided to reuse. A second
writer **waits** up to ``lock_timeout_s`` and then raises ``StoreLocked`` naming the holder's
pid; readers take no lock. flock locks belong to an open file, so two ``Store`` objects in
one process exclude each other as two processes do; the kernel drops the lock when its
holder dies, so a killed saver never leaves the store locked.

A full disk (``ENOSPC``), file-size limit (``EFBIG``) or quota error becomes ``StoreError``;
the temporary file is removed and nothing committed is touched.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import fcntl
import itertools
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from snapline.errors import NotAStore, StoreError, StoreLocked
from snapline.store.backend import MARKER_KEY, Backend, MissingKey, RenameFinalizer

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
_TMP = re.compile(r"^\..*\.tmp-\d+-\d+$")
_LOCK_NAME = "lock"
_LOCK_POLL_S = 0.02
_WRITEBACK_EVERY_BYTES = 8 * 1024 * 1024
_WRITEV_MAX_PIECES = 512
_WRITEV_MAX_BYTES = 4 * 1024 * 1024
_FSYNC_LAG = 4
_DIRECT_ALIGN = 4096
_DIRECT_MIN_BYTES = 256 * 1024


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """``sync_file_range(fd, offset, n, SYNC_FILE_RANGE_WRITE)`` from libc, or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    write_flag = 2  # SYNC_FILE_RANGE_WRITE: start writeback, do not wait for it

    def start_writeback(fd: int, offset: int, nbytes: int) -> None:
        # Only a hint: durability still comes from the fsync, so a failure is ignored.
        fn(fd, offset, nbytes, write_flag)

    return start_writeback


_start_writeback = _load_sync_file_range()


def _rest(views: list[memoryview], done: int) -> list[memoryview]:
    """What is left of ``views`` after the first ``done`` bytes (one pass, no re-slicing)."""
    i = 0
    while i < len(views) and done >= views[i].nbytes:
        done -= views[i].nbytes
        i += 1
    if i == len(views):
        return []
    return [views[i][done:], *views[i + 1 :]] if done else views[i:]


def _address(view: memoryview) -> int:
    """The memory address of a buffer's first byte."""
    return int(np.frombuffer(view, np.uint8).ctypes.data)


def _open_direct(path: Path) -> int | None:
    """A second, ``O_DIRECT`` descriptor on a file being written, or None where unsupported."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError:
        return None  # e.g. EINVAL: the file system does not do direct I/O


def _write_all(fd: int, pieces: Iterable[memoryview], direct_fd: int | None = None) -> None:
    """Write every piece in order: small ones batched into one ``pwritev``, with writeback.

    With ``direct_fd`` (the same file opened ``O_DIRECT``), a large piece whose address,
    size and file offset are block aligned goes straight from memory to the disk instead:
    no copy into the page cache (the caller promises the memory does not change meanwhile).
    Anything else, and the rest of a piece after a short or refused direct write, is
    buffered.
    """
    batch: list[memoryview] = []
    batched = 0
    pos = 0  # file offset of the batch's first byte
    kicked = 0

    def flush() -> None:
        nonlocal batch, batched, pos, kicked
        views = batch
        while views:
            n = os.pwritev(fd, views, pos)
            pos += n
            views = _rest(views, n)  # a short write leaves the rest to go again
        batch, batched = [], 0
        if _start_writeback is not None and pos - kicked >= _WRITEBACK_EVERY_BYTES:
            _start_writeback(fd, kicked, pos - kicked)
            kicked = pos

    for piece in pieces:
        view = piece.cast("B") if piece.format != "B" or piece.ndim != 1 else piece
        if not view.nbytes:
            continue
        if (
            direct_fd is not None
            and view.nbytes >= _DIRECT_MIN_BYTES
            and not view.nbytes % _DIRECT_ALIGN
            and not (pos + batched) % _DIRECT_ALIGN
            and not _address(view) % _DIRECT_ALIGN
        ):
            flush()
            try:
                n = os.pwrite(direct_fd, view, pos)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                direct_fd, n = None, 0  # refused after all: buffer from here on
            pos += n
            view = view[n:]
            if not view.nbytes:
                continue
        batch.append(view)
        batched += view.nbytes
        if len(batch) >= _WRITEV_MAX_PIECES or batched >= _WRITEV_MAX_BYTES:
            flush()
    flush()


def _check_key(key: str) -> None:
    if not _KEY.match(key) or any(part in ("", ".", "..") for part in key.split("/")):
        raise StoreError(f"refusing key {key!r}: it would name a path outside the store")


def _os_error(exc: OSError, what: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "the disk is full; free space (or run `snapline gc`) and save again"
    elif exc.errno == errno.EFBIG:
        hint = "the file size limit was reached; raise it (ulimit -f) and save again"
    else:
        hint = "check the path and its permissions"
    return StoreError(
        f"{what} failed: {exc.strerror or exc} ({hint}); committed checkpoints are intact"
    )


class LocalDirectory(Backend):
    """A store rooted at a local directory; see the module docstring."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.url = f"file://{self.root}"
        self.finalizer = RenameFinalizer()
        self._counter = itertools.count()
        self._dirty_dirs: set[Path] = set()
        self._known_dirs: set[Path] = set()
        self._mutex = threading.Lock()

    # -- open -----------------------------------------------------------------------------
    def is_initialized(self) -> bool:
        """True when the marker exists; ``NotAStore`` for a file or a foreign directory."""
        if not self.root.exists():
            return False
        if not self.root.is_dir():
            raise NotAStore(f"{self.root} is a file, not a snapline store directory")
        if (self.root / MARKER_KEY).is_file():
            return True
        if self._interrupted_create():
            return False  # ``initialize`` completes it
        if any(self.root.iterdir()):
            raise NotAStore(
                f"{self.root} is a non-empty directory without {MARKER_KEY}: not a snapline "
                "store. Pick an empty or missing directory for a new store"
            )
        return False

    def _interrupted_create(self) -> bool:
        """Whether the directory holds only what an ``initialize`` killed midway leaves.

        ``initialize`` makes ``chunks/`` and ``manifests/`` before it renames the marker into
        place: a ``kill -9`` in between leaves both empty, maybe with the marker's temp file,
        and nothing a store could have written. Anything else is not treated as ours.
        """
        entries = list(self.root.iterdir())
        names = {e.name for e in entries}
        if not names or not names <= {"chunks", "manifests"} | {
            n for n in names if n.startswith(f".{MARKER_KEY}.tmp-")
        }:
            return False
        return all(not e.is_dir() or not any(e.iterdir()) for e in entries)

    def initialize(self, marker: bytes) -> None:
        """Create the directory tree and the marker file (atomically)."""
        try:
            for sub in ("", "chunks", "manifests"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"creating store {self.root}") from exc
        self._dirty_dirs.add(self.root.parent)
        self.write(MARKER_KEY, [memoryview(marker)])
        self.sync()

    # -- read -----------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def read(self, key: str) -> bytes:
        """The whole file."""
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise MissingKey(f"{path} is missing") from None
        except OSError as exc:
            raise _os_error(exc, f"reading {path}") from exc

    def read_into(self, key: str, buffer: memoryview) -> int:
        """``readinto`` straight into the caller's buffer (no intermediate copy)."""
        path = self._path(key)
        try:
            with open(path, "rb", buffering=0) as f:
                size = os.fstat(f.fileno()).st_size
                want = min(size, buffer.nbytes)
                got = 0
                while got < want:
                    n = f.readinto(buffer[got:want])
                    if not n:
                        break
                    got += n
                return size if got == want else got
        except FileNotFoundError:
            raise MissingKey(f"{path} is missing") from None
        except OSError as exc:
            raise _os_error(exc, f"reading {path}") from exc

    def read_range(self, key: str, offset: int, buffers: Sequence[memoryview]) -> int:
        """``preadv`` straight into the caller's buffers (one system call for a whole run)."""
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise MissingKey(f"{path} is missing") from None
        except OSError as exc:
            raise _os_error(exc, f"reading {path}") from exc
        try:
            size = os.fstat(fd).st_size
            views = [b for b in buffers if b.nbytes]
            pos = offset
            while views:
                n = os.preadv(fd, views[:_WRITEV_MAX_PIECES], pos)
                if not n:
                    break  # end of file: the size tells the caller it is short
                pos += n
                views = _rest(views, n)
            return size
        except OSError as exc:
            raise _os_error(exc, f"reading {path}") from exc
        finally:
            os.close(fd)

    def size(self, key: str) -> int | None:
        """``st_size`` of the file, or None."""
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, f"checking {key}") from exc

    def list_keys(self, prefix: str) -> list[str]:
        """Final names under ``prefix`` (temporary files are skipped)."""
        base = self._path(prefix.rstrip("/"))
        out: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            out.extend(f"{rel}/{name}" for name in files if not name.startswith("."))
        return sorted(out)

    # -- write ----------------------------------------------------------------------------
    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            with self._mutex:
                self._dirty_dirs.add(directory.parent)
        with self._mutex:
            self._known_dirs.add(directory)

    def write(self, key: str, pieces: Sequence[memoryview]) -> None:
        """Temp file, write, fsync, rename; the directory is fsync'd by ``sync()``."""
        self.write_many([(key, pieces)])

    def write_many(
        self, items: Iterable[tuple[str, Sequence[memoryview]]], *, direct: bool = False
    ) -> None:
        """``write`` each blob, as it comes, but fsync each only a few blobs later.

        A stream's pack files are written back to back: a pack's fsync no longer holds up
        the copy of the next one, and finds most of its data on disk already (writeback
        starts during the copy). At most ``_FSYNC_LAG`` files wait for their fsync (open
        descriptors and unsynced data stay bounded for any state size). Each final name
        still appears only for a complete, fsync'd file. ``direct``: large aligned pieces
        are written with ``O_DIRECT`` (see ``_write_all``); the fsync is the same.
        """
        waiting: collections.deque[tuple[int, Path, Path]] = collections.deque()
        path = self.root

        def finish_oldest() -> None:
            nonlocal path
            fd, tmp, path = waiting.popleft()
            try:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            except BaseException:
                # A failed fsync leaves no temporary file behind either (it is off ``waiting``).
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                raise
            with self._mutex:
                self._dirty_dirs.add(path.parent)

        try:
            for key, pieces in items:
                path = self._path(key)
                tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{next(self._counter)}"
                self._ensure_dir(path.parent)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                waiting.append((fd, tmp, path))
                direct_fd = _open_direct(tmp) if direct else None
                try:
                    _write_all(fd, pieces, direct_fd)
                finally:
                    if direct_fd is not None:
                        os.close(direct_fd)
                if len(waiting) > _FSYNC_LAG:
                    finish_oldest()
            while waiting:
                finish_oldest()
        except BaseException as exc:
            # Files already renamed are complete and fsync'd (gc reclaims them if unused).
            for fd, tmp, _final in waiting:
                with contextlib.suppress(OSError):
                    os.close(fd)
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _os_error(exc, f"writing {path}") from exc
            raise

    def sync(self) -> None:
        """fsync every directory that gained or lost a name since the last sync."""
        with self._mutex:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        # Children first, so a new subdirectory's entries are durable before its own name.
        for directory in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise _os_error(exc, f"syncing directory {directory}") from exc

    def delete(self, key: str) -> None:
        """Unlink the file (missing is fine)."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise _os_error(exc, f"deleting {path}") from exc
        with self._mutex:
            self._dirty_dirs.add(path.parent)

    def remove_partial_writes(self) -> int:
        """Delete temporary files left by writers that crashed (call under the lock)."""
        removed = 0
        for sub in ("chunks", "manifests", ""):
            base = self.root / sub
            walker: Iterator[tuple[str, list[str], list[str]]]
            walker = os.walk(base) if sub else iter([(str(base), [], os.listdir(base))])
            for dirpath, _dirs, files in walker:
                for name in files:
                    if _TMP.match(name):
                        (Path(dirpath) / name).unlink(missing_ok=True)
                        removed += 1
                        with self._mutex:
                            self._dirty_dirs.add(Path(dirpath))
        self.sync()
        return removed

    # -- lock -----------------------------------------------------------------------------
    @contextmanager
    def writer_lock(self, timeout_s: float) -> Iterator[None]:
        """``flock`` on ``<root>/lock``, polling until ``timeout_s`` (see module docstring)."""
        path = self.root / _LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _os_error(exc, f"opening lock file {path}") from exc
        try:
            deadline = time.monotonic() + max(0.0, timeout_s)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
                        raise StoreLocked(
                            f"store {self.root} is locked by another writer (pid {holder}) "
                            f"for more than {timeout_s:g} s; wait for its save/gc to finish "
                            "or open the store with a larger lock_timeout_s"
                        ) from None
                    time.sleep(_LOCK_POLL_S)
            # The pid is only informational (for the StoreLocked message).
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
