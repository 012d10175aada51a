"""Group commit: one writer thread turns many queued operations into one write and one fsync.

Theory of operation
-------------------
Callers (any number of threads) enqueue encoded operations under ``cond``; each gets the next
txid and a ``Future`` at once. The single writer thread repeatedly takes *everything* queued
(up to ``batch_ops_max``), frames it, issues one ``write`` and one ``fdatasync`` on the
in-progress segment, and only then resolves the batch's futures with their txids. While that
fsync runs, new operations pile up in the queue and go out together in the next batch, so the
number of fsyncs per second stays about constant while throughput grows with the number of
concurrent writers -- no timer or artificial delay is needed (the "natural batching" of
group commit). ``batch_ops_max=1`` gives one fsync per operation, for comparison.

An operation is acknowledged (its future resolved) only after the fsync that covers it
returned, so an acknowledged operation survives ``kill -9`` and power loss (as far as the
device honours fsync). If a write or fsync fails, the file's state is unknown (Linux may drop
the dirty pages and report the error only once), so the writer fails every queued and future
operation with a ``JournalError`` instead of retrying; reopening the journal recovers the
durable prefix.

Rolling the log (finalizing the in-progress segment and starting a new one) is done by the
writer thread itself between two batches, so it never races a write; appends only wait for
the duration of the roll (a close, two renames and a directory fsync).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from snapline._durable import fsync_dir
from snapline.errors import JournalError
from snapline.journal._format import finalized_name, frame_record, inprogress_name, segment_header

_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


@dataclass(slots=True)
class WriterStats:
    """Counters of the writer thread (read them for tests and benchmarks)."""

    batches: int = 0
    fsyncs: int = 0
    ops: int = 0
    batch_ops_largest: int = 0
    rolls: int = 0


class GroupCommitWriter:
    """The single writer thread of a journal's edit log (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        next_txid: int,
        batch_ops_max: int,
        segment_bytes_max: int,
        on_durable: Callable[[int, int], None],
    ) -> None:
        self.cond = threading.Condition()
        self.stats = WriterStats()
        self._directory = directory
        self._batch_ops_max = batch_ops_max
        self._segment_bytes_max = segment_bytes_max
        self._on_durable = on_durable
        self._pending: list[tuple[int, bytes, Future[int]]] = []
        self._rolls: list[Future[int]] = []
        self._next_txid = next_txid
        self._durable_txid = next_txid - 1
        self._failed: JournalError | None = None
        self._closing = False
        self._segment_first = next_txid
        self._segment_bytes = 0
        self._fd = self._open_segment(next_txid)
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    # -- caller side ---------------------------------------------------------------------

    @property
    def durable_txid(self) -> int:
        """The highest txid known to be on disk (fsynced)."""
        return self._durable_txid

    @property
    def last_txid(self) -> int:
        """The highest txid handed out so far (possibly not yet durable)."""
        return self._next_txid - 1

    def check_usable_locked(self) -> None:
        """Raise if the journal can take no more operations (caller holds ``cond``)."""
        if self._failed is not None:
            raise self._failed
        if self._closing:
            raise JournalError("the journal is closed; reopen it to append")

    def enqueue_locked(self, payload: bytes) -> Future[int]:
        """Queue one encoded op; the caller holds ``cond`` and called ``check_usable_locked``."""
        future: Future[int] = Future()
        txid = self._next_txid
        self._next_txid += 1
        self._pending.append((txid, payload, future))
        if len(self._pending) == 1:
            self.cond.notify_all()
        return future

    def request_roll(self) -> Future[int]:
        """Ask the writer to finalize the in-progress segment; resolves to the durable txid.

        Every txid up to the returned one is in a finalized segment afterwards.
        """
        future: Future[int] = Future()
        with self.cond:
            self.check_usable_locked()
            self._rolls.append(future)
            self.cond.notify_all()
        return future

    def close(self) -> None:
        """Write what is queued, finalize the segment, stop the thread (idempotent)."""
        with self.cond:
            self._closing = True
            self.cond.notify_all()
        self._thread.join()

    # -- writer thread -------------------------------------------------------------------

    def _open_segment(self, first_txid: int) -> int:
        path = self._directory / inprogress_name(first_txid)
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(segment_header(first_txid))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(self._directory)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._segment_bytes = os.fstat(fd).st_size
        return fd

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self._pending and not self._rolls and not self._closing:
                    self.cond.wait()
                batch = self._pending[: self._batch_ops_max]
                del self._pending[: len(batch)]
                # Roll only once the queue is drained, so a roll covers what was queued.
                rolls: list[Future[int]] = []
                if not self._pending:
                    rolls, self._rolls = self._rolls, []
                stopping = self._closing and not self._pending and not self._rolls
            try:
                if batch:
                    self._write_batch(batch)
                if rolls or self._segment_bytes >= self._segment_bytes_max or stopping:
                    self._roll(reopen=not stopping)
                    for future in rolls:
                        future.set_result(self._durable_txid)
            except OSError as exc:
                self._fail(JournalError(f"edit log write failed: {exc}; reopen the journal"))
                for future in rolls:
                    future.set_exception(self._failed or JournalError(str(exc)))
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(self._failed or JournalError(str(exc)))
                return
            if stopping:
                if self._fd >= 0:
                    os.close(self._fd)
                return

    def _write_batch(self, batch: list[tuple[int, bytes, Future[int]]]) -> None:
        blob = b"".join(frame_record(txid, payload) for txid, payload, _ in batch)
        view = memoryview(blob)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        _fdatasync(self._fd)
        self._segment_bytes += len(blob)
        last = batch[-1][0]
        self._durable_txid = last
        stats = self.stats
        stats.batches += 1
        stats.fsyncs += 1
        stats.ops += len(batch)
        stats.batch_ops_largest = max(stats.batch_ops_largest, len(batch))
        for txid, _, future in batch:
            future.set_result(txid)
        self._on_durable(last, len(batch))

    def _roll(self, *, reopen: bool) -> None:
        last = self._durable_txid
        if last < self._segment_first:
            return  # nothing in this segment: keep it open (it records the next txid)
        os.close(self._fd)
        self._fd = -1
        os.replace(
            self._directory / inprogress_name(self._segment_first),
            self._directory / finalized_name(self._segment_first, last),
        )
        self.stats.rolls += 1
        self._segment_first = last + 1
        if reopen:
            self._fd = self._open_segment(last + 1)  # fsyncs the directory: covers both renames
        else:
            fsync_dir(self._directory)

    def _fail(self, error: JournalError) -> None:
        with self.cond:
            self._failed = error
            pending, self._pending = self._pending, []
            rolls, self._rolls = self._rolls, []
        for _, _, future in pending:
            future.set_exception(error)
        for future in rolls:
            future.set_exception(error)
