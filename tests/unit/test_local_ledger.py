"""A rank's ledger writer: group commit of fsyncs shared by the stable thread and the loop."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapline.runtime.local.ledger import LedgerWriter, _scan

pytestmark = pytest.mark.timeout(60)


class GatedFsync:
    """The real ``os.fsync``, held at a gate until the test opens it (a slow disk on demand;
    no real disk is slow on cue). Counts the fsyncs that ran."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        self._real(fd)


@pytest.fixture
def fsync(monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedFsync]:
    gated = GatedFsync()
    monkeypatch.setattr(os, "fsync", gated)  # the ledger calls os.fsync
    try:
        yield gated
    finally:
        gated.gate.set()


def records(path: Path) -> list[object]:
    return [record for _, record in _scan(path.read_bytes())]


def in_thread(fn: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=fn, daemon=True)
    thread.start()
    return thread


def test_an_append_does_not_wait_for_an_fsync_in_flight(tmp_path: Path, fsync: GatedFsync) -> None:
    """The loop appends commit markers while the stable thread syncs; it must not stall."""
    writer = LedgerWriter(tmp_path / "ledger.log")
    writer.append({"k": "a"})
    syncing = in_thread(writer.sync)
    assert fsync.entered.wait(10)
    appending = in_thread(lambda: writer.append({"k": "b"}))
    appending.join(10)
    assert not appending.is_alive(), "append waited for the fsync in flight"
    assert syncing.is_alive()  # the fsync is still held at the gate
    fsync.gate.set()
    syncing.join(10)
    writer.close()
    assert records(tmp_path / "ledger.log") == [{"k": "a"}, {"k": "b"}]


def test_a_record_appended_during_an_fsync_is_synced_by_the_next_sync(
    tmp_path: Path, fsync: GatedFsync
) -> None:
    """The fsync in flight may not cover it, so the next sync must fsync again."""
    writer = LedgerWriter(tmp_path / "ledger.log")
    writer.append({"k": "a"})
    syncing = in_thread(writer.sync)
    assert fsync.entered.wait(10)
    writer.append({"k": "b"})
    fsync.gate.set()
    syncing.join(10)
    assert fsync.calls == 1
    writer.sync()
    assert fsync.calls == 2
    writer.sync()  # nothing new: no fsync
    assert fsync.calls == 2
    writer.close()


def test_a_sync_covered_by_the_fsync_in_flight_does_not_fsync_again(
    tmp_path: Path, fsync: GatedFsync
) -> None:
    """Group commit: two syncers of the same records share one fsync."""
    writer = LedgerWriter(tmp_path / "ledger.log")
    writer.append({"k": "a"})
    first = in_thread(writer.sync)
    assert fsync.entered.wait(10)
    second = in_thread(writer.sync)  # its records are all in the fsync in flight
    fsync.gate.set()
    first.join(10)
    second.join(10)
    assert not first.is_alive() and not second.is_alive()
    assert fsync.calls == 1
    writer.close()
    assert records(tmp_path / "ledger.log") == [{"k": "a"}]
