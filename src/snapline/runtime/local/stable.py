"""A rank's stable-storage writer: checkpoints, ledger records and output, in one FIFO thread.

Theory of operation
-------------------
Persistence is asynchronous for the protocol (``TakeCheckpoint`` now, ``CheckpointPersisted``
later) and its order matters: a commit marker must be durable before the output it releases,
an attachment before the commit that makes it count. So every stable write of a rank goes
through one queue served by one thread, in the order the protocol issued them:

* the rank's event loop captures a checkpoint's state at the ``TakeCheckpoint`` action with
  ``Store.save_async`` (encoding and copying happen on the loop thread, so the process may run
  on at once), and queues the pending save; the thread waits for it, appends the checkpoint's
  record to the ledger, and reports ``persisted``;
* ledger records (attachments, commits, discards, message-log entries) are appended in order;
* released output is appended to the ledger as numbered records -- the ledger *is* the output
  channel -- skipping any number already released, so re-executed output after a rollback is
  not released twice (exactly-once);
* states below the gc horizon (durable in the ledger before the job is queued) are deleted
  from the store, after the saves queued before them.

The thread takes every queued job at once, runs them, then fsyncs the ledger once and only then
posts their completions to the loop (group commit), which is what keeps fsyncs per second low
under message logging.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from snapline.errors import SnaplineError
from snapline.protocols.base import PlainData
from snapline.runtime.local.ledger import LedgerWriter, read_ledger


@dataclass(frozen=True, slots=True, kw_only=True)
class SaveJob:
    """Wait for a captured checkpoint to commit in the store, then record it in the ledger."""

    generation: int
    index: int
    pending: Any  # snapline.store.PendingSave
    record: dict[str, PlainData]


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerJob:
    """Append one ledger record; if ``entry_id`` is set, report ``logged`` once durable."""

    generation: int
    record: dict[str, PlainData]
    entry_id: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputJob:
    """Release outputs ``first_id, first_id+1, ...`` (ids already released are skipped)."""

    first_id: int
    items: list[object]


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectJob:
    """Delete the rank's stored states below ``before`` (the gc horizon, already durable).

    Here rather than on the loop: each deletion is a rename or unlink and a directory fsync,
    which on the loop held up deliveries (about a tenth of an FDAS rank's loop time, which
    collects after most forced checkpoints). ``store`` is the rank's ``Store`` or
    ``MultiLevelStore``; its ``discard`` may run while the loop saves the next checkpoint.
    """

    before: int
    store: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class BarrierJob:
    """Set ``done`` once everything queued before it is durable."""

    done: threading.Event


Job: TypeAlias = SaveJob | LedgerJob | OutputJob | CollectJob | BarrierJob

Completion: TypeAlias = tuple[Any, ...]
"""``("persisted", gen, index)``, ``("write_failed", gen, index, reason)``,
``("logged", gen, entry_id)``, ``("released", count)``, ``("gc_failed", step, reason)``."""


class StableWriter:
    """One rank's FIFO writer thread (see the module docstring)."""

    def __init__(
        self, ledger_file: Path, rank: int, post: Callable[[list[Completion]], None]
    ) -> None:
        self.ledger = LedgerWriter(ledger_file)
        self.released = read_ledger(ledger_file, rank).released_outputs
        self._post = post
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="snapline-stable", daemon=True)
        self._thread.start()
        # Records the loop must make durable *now* (commit markers, attachments) are fsynced
        # on their own thread: behind the FIFO queue they would wait for checkpoint saves.
        self._syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapline-sync")

    def put(self, job: Job) -> None:
        """Queue a job (any thread)."""
        self._queue.put(job)

    def barrier(self) -> threading.Event:
        """An event that is set once everything queued so far is durable."""
        done = threading.Event()
        self._queue.put(BarrierJob(done=done))
        return done

    def append_now(self, record: dict[str, PlainData]) -> Future[None]:
        """Append ``record`` to the ledger at once; the future is done when it is durable.

        The record goes ahead of queued jobs (a checkpoint save still in progress records
        itself later), which is what the loop's ``append durably now`` calls need.
        """
        self.ledger.append(record)
        return self._syncer.submit(self.ledger.sync)

    def append_later(self, record: dict[str, PlainData]) -> None:
        """Append ``record`` to the ledger at once; it becomes durable with the next fsync.

        For a record that only counts once a later durable one says so (a checkpoint's
        attachment, read only for a checkpoint whose commit marker is in the ledger): the one
        file's fsync for that marker makes every earlier record durable too.
        """
        self.ledger.append(record)

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Block until everything queued so far is durable; False on timeout."""
        return self.barrier().wait(timeout_s)

    def close(self) -> None:
        """Finish queued work and stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout=30.0)
        self._syncer.shutdown(wait=True)
        self.ledger.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [first]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            completions: list[Completion] = []
            barriers: list[threading.Event] = []
            stop = False
            for job in batch:
                if job is None:
                    stop = True
                    continue
                self._run_job(job, completions, barriers)
            self.ledger.sync()
            if completions:
                self._post(completions)
            for barrier in barriers:
                barrier.set()
            if stop:
                return

    def _run_job(
        self, job: Job, completions: list[Completion], barriers: list[threading.Event]
    ) -> None:
        match job:
            case SaveJob(generation=gen, index=index, pending=pending, record=record):
                try:
                    info = pending.result()
                except (SnaplineError, OSError) as exc:
                    completions.append(("write_failed", gen, index, str(exc)))
                    return
                self.ledger.append({**record, **_level_fields(info)})
                completions.append(("persisted", gen, index))
            case LedgerJob(generation=gen, record=record, entry_id=entry_id):
                self.ledger.append(record)
                if entry_id is not None:
                    completions.append(("logged", gen, entry_id))
            case OutputJob(first_id=first_id, items=items):
                for offset, item in enumerate(items):
                    output_id = first_id + offset
                    if output_id <= self.released:
                        continue  # released before a rollback re-executed it
                    self.ledger.append({"k": "output", "id": output_id, "item": item})
                    self.released = output_id
                completions.append(("released", self.released))
            case CollectJob(before=before, store=store):
                try:
                    doomed = [step for step in store.steps() if 0 < step < before]
                except (SnaplineError, OSError) as exc:
                    completions.append(("gc_failed", before, str(exc)))
                    return
                for step in doomed:
                    try:
                        store.discard(step)
                    except (SnaplineError, OSError) as exc:
                        # Left for the next horizon: the ledger says it is not needed.
                        completions.append(("gc_failed", step, str(exc)))
            case BarrierJob(done=done):
                barriers.append(done)


def _level_fields(info: Any) -> dict[str, PlainData]:
    """On a multi-level store, which levels hold the checkpoint, and its id (else nothing)."""
    meta = getattr(info, "meta", None) or {}
    if "levels" not in meta:
        return {}
    return {"levels": list(meta["levels"]), "checkpoint_id": str(meta["checkpoint_id"])}


def wait_beating(
    is_done: Callable[[float], bool],
    *,
    interval_s: float,
    timeout_s: float,
    beat: Callable[[], None],
    why: str,
) -> None:
    """Wait until ``is_done(interval_s)`` is true, calling ``beat`` after each interval.

    A rank's loop that waits for an fsync is blocked on purpose but not hung; on a busy disk
    the wait can outlast the supervisor's heartbeat timeout, so it keeps heartbeating.
    ``is_done`` waits up to its argument in seconds and says whether the work finished.
    Raises ``SnaplineError`` naming ``why`` after ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not is_done(interval_s):
        if time.monotonic() > deadline:
            raise SnaplineError(
                f"stable writes did not become durable within {timeout_s:g}s ({why}); "
                "check the store's disk"
            )
        beat()
