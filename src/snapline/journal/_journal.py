"""``Journal``: open (recover) a journal directory, append operations, checkpoint, read back.

Theory of operation
-------------------
Opening takes the single-writer lock, recovers (``_recovery``: newest intact image plus the
edits after it; a torn tail is cut), finalizes the recovered in-progress segment and starts
the group-commit writer thread (``_writer``) on a fresh in-progress segment, plus, in state
mode, the checkpointer (``_checkpointer``).

``append_async(op)`` encodes the op (outside any lock), decodes it again so that the live state
sees exactly what replay will see (msgpack turns tuples into lists), then, under the writer's
lock, applies it to the live state and takes the next txid -- applying and numbering under one
lock keeps the live state equal to replaying the log in txid order. It returns a future that
resolves once the op is durable. Like the HDFS NameNode, the live state may show an op a few
milliseconds before its fsync completes; no caller is told it is done before then, and after a
crash the state is always exactly a prefix of the ops in txid order. An op that ``apply``
rejects is not logged.

In *log* mode (no state machine; the message-logging protocol's store) the journal is an
append-only, durable, txid-numbered log: ``read(from_txid)`` iterates records, and
``discard_before(txid)`` drops finalized segments once their records are no longer needed
(the caller's retention, e.g. after a checkpoint of the logging process).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from snapline._durable import fsync_dir
from snapline.errors import ConfigError, JournalError
from snapline.journal._checkpointer import Checkpointer, apply_retention, merge_checkpoint
from snapline.journal._format import (
    Record,
    decode_op,
    encode_op,
    finalized_name,
    read_segment_records,
)
from snapline.journal._layout import (
    LOCK_NAME,
    MARKER_NAME,
    WriterLock,
    check_positive,
    create_marker,
    list_directory,
    read_marker,
)
from snapline.journal._machines import StateMachine, machine_ref
from snapline.journal._recovery import (
    RecoveryReport,
    cut_torn_tail,
    load_newest_image,
    replay,
)
from snapline.journal._writer import GroupCommitWriter, WriterStats

T = TypeVar("T")

CheckpointerKind = Literal["thread", "process", "off"]


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalConfig:
    """How a journal commits, checkpoints and retains.

    ``checkpoint_period_s`` / ``checkpoint_every_ops``: triggers of the checkpointer (None turns
    one off). ``checkpointer``: run merges in a ``"thread"``, a separate ``"process"``, or
    ``"off"`` (only explicit ``checkpoint()`` calls). ``images_kept``: images retained (with the
    edits after the oldest of them). ``batch_ops_max``: most ops per group commit (1 = one
    fsync per op). ``segment_bytes_max``: the writer rolls a segment that grows past this.
    """

    checkpoint_period_s: float | None = 60.0
    checkpoint_every_ops: int | None = 100_000
    checkpointer: CheckpointerKind = "thread"
    images_kept: int = 2
    batch_ops_max: int = 4096
    segment_bytes_max: int = 64 * 1024 * 1024
    process_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        check_positive("checkpoint_period_s", self.checkpoint_period_s)
        check_positive("checkpoint_every_ops", self.checkpoint_every_ops)
        check_positive("images_kept", self.images_kept, allow_none=False)
        check_positive("batch_ops_max", self.batch_ops_max, allow_none=False)
        check_positive("segment_bytes_max", self.segment_bytes_max, allow_none=False)
        check_positive("process_timeout_s", self.process_timeout_s, allow_none=False)
        if self.checkpointer not in ("thread", "process", "off"):
            raise ConfigError(
                f"checkpointer must be 'thread', 'process' or 'off', got {self.checkpointer!r}"
            )


def open_journal(
    path: str | os.PathLike[str],
    machine: StateMachine | None,
    config: JournalConfig | None = None,
    *,
    create: bool = True,
) -> Journal:
    """Open (recovering) or create the journal in ``path``.

    ``machine`` selects state mode (e.g. ``KEY_VALUE``); ``None`` selects append-only log mode.
    Raises JournalError if ``path`` is not a journal, has another format version, is locked by
    another writer, or was created in the other mode or with another machine.
    """
    return Journal(Path(path), machine, config or JournalConfig(), create=create)


class Journal:
    """An open journal: the single writer of one journal directory (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        machine: StateMachine | None,
        config: JournalConfig,
        *,
        create: bool,
    ) -> None:
        started = time.monotonic()
        self.directory = directory
        self.machine = machine
        self.config = config
        if machine is not None and config.checkpointer == "process":
            self._machine_ref: str | None = machine_ref(machine)  # fail early, not at checkpoint
        else:
            self._machine_ref = None
        has_marker = (directory / MARKER_NAME).exists()
        if not has_marker and (not create or not _is_empty_or_missing(directory)):
            read_marker(directory)  # raises the precise "not a journal" error
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(directory)
        self._lock.acquire()
        try:
            mode: Literal["state", "log"] = "log" if machine is None else "state"
            name = None if machine is None else machine.name
            marker = (
                read_marker(directory)
                if (directory / MARKER_NAME).exists()
                else create_marker(directory, mode=mode, machine=name)
            )
            if marker.mode != mode or marker.machine != name:
                raise JournalError(
                    f"journal {directory} was created in {marker.mode} mode"
                    f"{f' with machine {marker.machine!r}' if marker.machine else ''}; open it "
                    f"the same way (got {mode} mode{f' with machine {name!r}' if name else ''})"
                )
            self._state, next_txid, self.recovery = self._recover(started)
            self._checkpoint_lock = threading.Lock()
            self._image_txid = self.recovery.image_txid or 0
            self._checkpointer: Checkpointer | None = None
            self._writer = GroupCommitWriter(
                directory,
                next_txid=next_txid,
                batch_ops_max=config.batch_ops_max,
                segment_bytes_max=config.segment_bytes_max,
                on_durable=self._on_durable,
            )
        except BaseException:
            self._lock.release()
            raise
        self._closed = False
        if machine is not None and config.checkpointer != "off":
            self._checkpointer = Checkpointer(
                self.checkpoint,
                period_s=config.checkpoint_period_s,
                every_ops=config.checkpoint_every_ops,
            )

    # -- recovery ------------------------------------------------------------------------

    def _recover(self, started: float) -> tuple[Any, int, RecoveryReport]:
        listing = list_directory(self.directory)
        damaged: list[str] = []
        image_txid: int | None = None
        if self.machine is not None:
            image_txid, state, damaged = load_newest_image(
                listing.images, self.machine, quarantine=True
            )
            base = image_txid or 0
        else:
            state = None
            base = listing.segments[0].first_txid - 1 if listing.segments else 0
        result = replay(listing.segments, machine=self.machine, state=state, base_txid=base)
        if result.torn_tail is not None:
            cut_torn_tail(result.torn_tail)
        next_txid = result.last_txid + 1
        # Finalize the recovered in-progress segment if it holds records; drop empty ones
        # that do not start at next_txid (the writer reuses or creates the one that does).
        for seg in listing.segments:
            if seg.finalized:
                continue
            if seg.first_txid <= result.last_txid:
                os.replace(
                    seg.path, seg.path.with_name(finalized_name(seg.first_txid, result.last_txid))
                )
            elif seg.first_txid != next_txid:
                seg.path.unlink()
        fsync_dir(self.directory)
        report = RecoveryReport(
            image_txid=image_txid,
            damaged_images=tuple(damaged),
            ops_replayed=result.ops_replayed,
            last_txid=result.last_txid,
            torn_tail=result.torn_tail,
            duration_s=time.monotonic() - started,
        )
        return result.state, next_txid, report

    # -- appending -----------------------------------------------------------------------

    def append_async(self, op: Any) -> Future[int]:
        """Queue ``op``; the future resolves to its txid once it is durable."""
        return self.append_batch_async([op])[0]

    def append(self, op: Any, *, timeout_s: float | None = None) -> int:
        """Append ``op`` and block until it is durable; return its txid."""
        return self.append_async(op).result(timeout_s)

    def append_batch_async(self, ops: Iterable[Any]) -> list[Future[int]]:
        """Queue ``ops`` with consecutive txids; one future per op.

        Each op is checked by ``apply`` in order; if one is rejected, the ops before it stay
        queued (and will be durable) and JournalError names the index of the rejected one.
        """
        payloads = [encode_op(op) for op in ops]
        decoded = [decode_op(p) for p in payloads] if self.machine is not None else []
        futures: list[Future[int]] = []
        writer = self._writer
        with writer.cond:
            writer.check_usable_locked()
            for index, payload in enumerate(payloads):
                if self.machine is not None:
                    try:
                        self._state = self.machine.apply(self._state, decoded[index])
                    except Exception as exc:
                        raise JournalError(
                            f"operation {index} of the batch was rejected by "
                            f"{self.machine.name}.apply and not logged: {exc}"
                        ) from exc
                futures.append(writer.enqueue_locked(payload))
        return futures

    def append_batch(self, ops: Iterable[Any], *, timeout_s: float | None = None) -> list[int]:
        """Append ``ops`` with consecutive txids, block until all are durable, return them."""
        futures = self.append_batch_async(ops)
        if futures:
            futures[-1].result(timeout_s)  # the last one is written in the last batch
        return [f.result(timeout_s) for f in futures]

    # -- reading -------------------------------------------------------------------------

    @property
    def state(self) -> Any:
        """The live state (state mode). Do not mutate it; read it with ``view`` while other
        threads append."""
        return self._state

    def view(self, fn: Callable[[Any], T]) -> T:
        """Call ``fn(state)`` while no append changes the state; return its result."""
        with self._writer.cond:
            return fn(self._state)

    @property
    def durable_txid(self) -> int:
        """The highest txid that is on disk."""
        return self._writer.durable_txid

    @property
    def last_txid(self) -> int:
        """The highest txid handed out (may not be durable yet)."""
        return self._writer.last_txid

    @property
    def image_txid(self) -> int:
        """The txid of the newest image written or loaded (0 if none)."""
        return self._image_txid

    @property
    def stats(self) -> WriterStats:
        """Counters of the group-commit writer (batches, fsyncs, ops, rolls)."""
        return self._writer.stats

    @property
    def checkpoint_runs(self) -> int:
        """How many checkpoints the background checkpointer has completed."""
        return 0 if self._checkpointer is None else self._checkpointer.runs

    @property
    def last_checkpoint_error(self) -> BaseException | None:
        """The error of the last failed background checkpoint, if any."""
        return None if self._checkpointer is None else self._checkpointer.last_error

    def read(self, from_txid: int = 1) -> Iterator[Record]:
        """Iterate the durable records with txid >= ``from_txid``, in order.

        Records still in the log only: edits merged into an image and removed by retention
        (state mode) or discarded (log mode) raise JournalError.
        """
        upto = self.durable_txid
        expected = from_txid
        while expected <= upto:
            listing = list_directory(self.directory)
            segs = [s for s in listing.segments if s.last_txid is None or s.last_txid >= expected]
            if not segs or segs[0].first_txid > expected:
                raise JournalError(
                    f"txid {expected} is no longer in the edit log of {self.directory} "
                    f"(oldest kept: {segs[0].first_txid if segs else 'none'}); it was merged "
                    "into an image or discarded"
                )
            try:
                for seg in segs:
                    for record in read_segment_records(seg.path, from_txid=expected, to_txid=upto):
                        yield record
                        expected = record.txid + 1
            except JournalError as exc:
                if isinstance(exc.__cause__, FileNotFoundError):
                    continue  # rolled or discarded under us: list again
                raise
            if expected <= upto:
                raise JournalError(f"edit log of {self.directory} ends before txid {upto}")

    # -- checkpoints and retention -------------------------------------------------------

    def roll(self) -> int:
        """Finalize the in-progress segment; return the last txid now in finalized segments."""
        return self._writer.request_roll().result()

    def checkpoint(self) -> int | None:
        """Roll, merge the newest image with the finalized edits into a new image, apply
        retention. Returns the new image's txid (None if nothing changed since the last)."""
        if self.machine is None:
            raise JournalError("a log-mode journal has no state to checkpoint; use roll()")
        with self._checkpoint_lock:
            upto = self.roll()
            if upto <= self._image_txid:
                return None
            if self._machine_ref is not None:
                self._merge_in_process(upto)
            else:
                merge_checkpoint(self.directory, self.machine, upto)
            self._image_txid = upto
            apply_retention(self.directory, self.config.images_kept)
            return upto

    def _merge_in_process(self, upto: int) -> None:
        assert self._machine_ref is not None
        cmd = [
            sys.executable,
            "-m",
            "snapline.journal._checkpoint_process",
            str(self.directory),
            str(upto),
            self._machine_ref,
        ]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=self.config.process_timeout_s
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise JournalError(f"checkpointer process failed to run: {exc}") from exc
        if done.returncode != 0:
            raise JournalError(
                f"checkpointer process exited {done.returncode}: {done.stderr.strip()[-2000:]}"
            )

    def discard_before(self, txid: int) -> list[Path]:
        """Log mode: delete finalized segments whose records are all < ``txid``."""
        if self.machine is not None:
            raise JournalError("state-mode journals discard edits by retention after checkpoints")
        doomed = [
            s.path
            for s in list_directory(self.directory).segments
            if s.last_txid is not None and s.last_txid < txid
        ]
        for path in doomed:
            path.unlink(missing_ok=True)
        if doomed:
            fsync_dir(self.directory)
        return doomed

    def _on_durable(self, last_txid: int, ops: int) -> None:
        if self._checkpointer is not None:
            self._checkpointer.note_durable(ops)

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the checkpointer, write what is queued, finalize the segment, release the lock."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._checkpointer is not None:
                self._checkpointer.stop()
        finally:
            self._writer.close()
            self._lock.release()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _is_empty_or_missing(directory: Path) -> bool:
    if not directory.exists():
        return True
    try:
        return all(p.name == LOCK_NAME for p in directory.iterdir())
    except OSError:
        return False
