"""The journal directory: its marker file, the writer lock, listing, and durable file steps.

Theory of operation
-------------------
A journal directory holds ``journal.json`` (format marker: version and mode), ``writer.lock``
(an ``fcntl.flock`` lock held by the one writer), images ``image_<txid>`` and segments
``edits_*`` (see ``_format``). Every file that must survive a crash is made durable the same
way: write to ``<name>.tmp``, ``fsync`` it, ``rename`` over the final name, ``fsync`` the
directory, so a reader sees either the old state or the complete new file, never a torn one.
Deleting (retention) and renaming (finalizing a segment) are followed by a directory fsync.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from snapline import _durable
from snapline.errors import ConfigError, JournalError
from snapline.journal._format import (
    FORMAT_VERSION,
    SegmentName,
    parse_image_txid,
    parse_segment_name,
)

MARKER_NAME = "journal.json"
LOCK_NAME = "writer.lock"
MARKER_FORMAT = "snapline-journal"

JournalMode = Literal["state", "log"]


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via tmp + fsync + rename + directory fsync."""
    try:
        _durable.write_atomic(path, data)
    except OSError as exc:
        raise JournalError(f"cannot write {path}: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class Marker:
    """Contents of ``journal.json``."""

    version: int
    mode: JournalMode
    machine: str | None


def read_marker(directory: Path) -> Marker:
    """Read and check the marker; raise JournalError if ``directory`` is not a journal."""
    path = directory / MARKER_NAME
    if not directory.is_dir():
        raise JournalError(f"{directory} is not a journal directory (it does not exist)")
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise JournalError(
            f"{directory} is not a journal directory (no {MARKER_NAME}); pass a directory "
            "created by snapline.journal or an empty/new one"
        ) from None
    except (OSError, ValueError) as exc:
        raise JournalError(f"{path} is unreadable or not JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != MARKER_FORMAT:
        raise JournalError(f"{path} does not describe a snapline journal")
    version = raw.get("version")
    if version != FORMAT_VERSION:
        raise JournalError(
            f"{directory}: journal format version {version!r} is not supported (this snapline "
            f"reads version {FORMAT_VERSION}); open it with a matching snapline"
        )
    mode = raw.get("mode")
    if mode not in ("state", "log"):
        raise JournalError(f"{path}: unknown journal mode {mode!r}")
    machine = raw.get("machine")
    return Marker(version=version, mode=mode, machine=machine if isinstance(machine, str) else None)


def create_marker(directory: Path, *, mode: JournalMode, machine: str | None) -> Marker:
    """Initialise ``directory`` (created if missing, must be empty) as a journal."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JournalError(f"cannot create journal directory {directory}: {exc}") from exc
    leftovers = [p.name for p in directory.iterdir() if p.name != LOCK_NAME]
    if leftovers:
        raise JournalError(
            f"{directory} is not a journal directory (no {MARKER_NAME}) and is not empty "
            f"(holds {sorted(leftovers)[:5]}); use an empty or new directory"
        )
    marker = Marker(version=FORMAT_VERSION, mode=mode, machine=machine)
    body = {"format": MARKER_FORMAT, "version": FORMAT_VERSION, "mode": mode, "machine": machine}
    write_atomic(directory / MARKER_NAME, json.dumps(body, indent=1).encode())
    return marker


class WriterLock:
    """The single-writer lock: an exclusive ``flock`` on ``writer.lock``.

    ``flock`` is released by the kernel when the holder dies (even by ``kill -9``), so a
    crashed writer never leaves a stale lock behind.
    """

    def __init__(self, directory: Path) -> None:
        self._path = directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise JournalError naming the holder."""
        try:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open lock file {self._path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise JournalError(
                f"journal {self._path.parent} is already open for writing by another writer "
                f"(pid {holder}); a journal has exactly one writer -- close the other one or "
                "open this one read-only with inspect"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Listing:
    """The images and segments in a journal directory, in txid order."""

    images: list[tuple[int, Path]]
    segments: list[SegmentName]


def list_directory(directory: Path) -> Listing:
    """List images and segments (ignores tmp, corrupt and unrelated files)."""
    images: list[tuple[int, Path]] = []
    segments: list[SegmentName] = []
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        raise JournalError(f"cannot list journal directory {directory}: {exc}") from exc
    for path in entries:
        if (txid := parse_image_txid(path)) is not None:
            images.append((txid, path))
        elif (seg := parse_segment_name(path)) is not None:
            segments.append(seg)
    images.sort()
    # Equal first txids do not occur in a healthy directory; the tie-break only makes the
    # order total (finalized first) so that recovery's contiguity check reports it.
    segments.sort(key=lambda s: (s.first_txid, s.last_txid is None))
    return Listing(images=images, segments=segments)


def check_positive(name: str, value: float | None, *, allow_none: bool = True) -> None:
    """Raise ConfigError unless ``value`` is positive (or None when allowed)."""
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")
