"""The checkpointer: merges the newest image and the finalized edits into a new image.

Theory of operation
-------------------
As HDFS's Secondary NameNode does, the checkpointer works *apart from the writer* and only on
files that no longer change: the newest intact image and the finalized segments after it. A
checkpoint is

1. **roll** -- the writer thread finalizes the in-progress segment between two batches and
   reports the durable txid ``T`` (appends wait only for this step);
2. **merge** -- load the newest image ``I``, replay the finalized records ``I+1..T`` and write
   ``image_<T>`` atomically (``merge_checkpoint``). This runs in the checkpointer's thread, or,
   with ``checkpointer="process"``, in a separate Python process (``python -m
   snapline.journal._checkpoint_process``) so that the merge's CPU and memory do not compete
   with the writer's process at all; it reads only immutable files, so it needs no lock;
3. **retention** -- keep the newest ``images_kept`` images and the finalized segments holding
   txids after the oldest kept image; delete the rest (``apply_retention``), so recovery can
   still fall back to any kept image.

A crash at any step is harmless: an image is visible only once complete, and retention deletes
only what a newer complete image has made unnecessary.

``Checkpointer`` is the trigger: a thread that starts a checkpoint every ``period_s`` seconds
and whenever ``every_ops`` operations became durable since the last one (either may be None).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from snapline._durable import fsync_dir
from snapline.journal._image import ImageInfo, write_image
from snapline.journal._layout import list_directory
from snapline.journal._machines import StateMachine
from snapline.journal._recovery import load_newest_image, replay

_log = logging.getLogger(__name__)


def merge_checkpoint(directory: Path, machine: StateMachine, upto_txid: int) -> ImageInfo | None:
    """Write ``image_<upto_txid>`` from the newest image and finalized segments (None if the
    newest image already covers ``upto_txid``)."""
    listing = list_directory(directory)
    base_txid, state, _ = load_newest_image(listing.images, machine, quarantine=True)
    base = 0 if base_txid is None else base_txid
    if base >= upto_txid:
        return None
    finalized = [s for s in listing.segments if s.finalized and s.first_txid <= upto_txid]
    result = replay(finalized, machine=machine, state=state, base_txid=base, upto_txid=upto_txid)
    return write_image(
        directory, upto_txid, result.state, entries=machine.count_entries(result.state)
    )


def apply_retention(directory: Path, images_kept: int) -> list[Path]:
    """Delete images beyond the newest ``images_kept`` and the segments no kept image needs."""
    listing = list_directory(directory)
    if not listing.images:
        return []
    kept = listing.images[-images_kept:]
    oldest_kept_txid = kept[0][0]
    doomed = [path for _, path in listing.images[:-images_kept]]
    doomed += [
        s.path
        for s in listing.segments
        if s.last_txid is not None and s.last_txid <= oldest_kept_txid
    ]
    doomed += [p for p in directory.glob("image_*.tmp")]  # left by a crash mid-write
    for path in doomed:
        path.unlink(missing_ok=True)
    if doomed:
        fsync_dir(directory)
    return doomed


class Checkpointer:
    """Runs ``run_checkpoint`` on a period and after a number of durable operations."""

    def __init__(
        self,
        run_checkpoint: Callable[[], object],
        *,
        period_s: float | None,
        every_ops: int | None,
    ) -> None:
        self._run_checkpoint = run_checkpoint
        self._period_s = period_s
        self._every_ops = every_ops
        self._cond = threading.Condition()
        self._ops_since = 0
        self._last_start = time.monotonic()
        self._stop = False
        self.runs = 0
        self.last_error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="journal-checkpointer", daemon=True)
        self._thread.start()

    def note_durable(self, ops: int) -> None:
        """Count operations made durable (called by the writer thread after each batch)."""
        if self._every_ops is None:
            return
        with self._cond:
            self._ops_since += ops
            if self._ops_since >= self._every_ops:
                self._cond.notify_all()

    def stop(self) -> None:
        """Stop the thread, waiting for a running checkpoint to finish."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()

    def _due_in_s(self) -> float | None:
        """0 when a checkpoint is due, else seconds until the period fires (None: never)."""
        if self._every_ops is not None and self._ops_since >= self._every_ops:
            return 0.0
        if self._period_s is None:
            return None
        return max(0.0, self._last_start + self._period_s - time.monotonic())

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (wait_s := self._due_in_s()) != 0.0:
                    self._cond.wait(wait_s)
                if self._stop:
                    return
                self._ops_since = 0
                self._last_start = time.monotonic()
            try:
                self._run_checkpoint()
                self.runs += 1
            except Exception as exc:
                # A failed checkpoint loses nothing (the log still holds every op); keep
                # appending and report it through last_error and the log.
                self.last_error = exc
                _log.warning("journal checkpoint failed: %s", exc)
