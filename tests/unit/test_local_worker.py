"""A worker's event loop, run in this process against real sockets (no supervisor process)."""

from __future__ import annotations

import json
import os
import secrets
import selectors
import socket
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from snapline.runtime.local.config import JobConfig
from snapline.runtime.local.ledger import LedgerWriter, ledger_path, read_ledger
from snapline.runtime.local.stable import SaveJob
from snapline.runtime.local.wire import FrameReader, frame
from snapline.runtime.local.worker import Worker

pytestmark = pytest.mark.timeout(60)


def make_worker(
    tmp_path: Path, *, heartbeat_interval_s: float = 0.2, n: int = 1, protocol: str = "none"
) -> Worker:
    config = JobConfig(
        app="bank",
        n=n,
        protocol=protocol,
        edges=[[s, d] for s in range(n) for d in range(n) if s != d],
        interval_s=0.05,
        store=str(tmp_path / "store"),
        heartbeat_interval_s=heartbeat_interval_s,
        heartbeat_timeout_s=2 * heartbeat_interval_s,
        trace=False,
    )
    boot: dict[str, Any] = {
        "config": config.to_json(),
        "rank": 0,
        "secret": secrets.token_bytes(32),
        "socket_dir": tempfile.mkdtemp(prefix="snapline-test-"),
        "t0": time.monotonic(),
    }
    return Worker(boot)


def close(worker: Worker) -> None:
    worker.transport.close()
    worker.writer.close()
    worker._wake_r.close()
    worker._wake_w.close()
    worker.sel.close()
    os.close(worker._log_fd)


def test_a_large_reply_goes_out_at_socket_speed_not_heartbeat_pace(tmp_path: Path) -> None:
    """A frozen rank's reply (message logging's volatile record holds the retransmission
    buffer: megabytes) must reach the supervisor while the rank waits, not one socket buffer
    per heartbeat: at that pace a 64 MiB record would outlast the recovery's step timeout.
    """
    # Heartbeats far apart: the loop's only reason to wake up is the socket taking more.
    worker = make_worker(tmp_path, heartbeat_interval_s=30.0)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    worker._control = ours
    worker.sel.register(ours, selectors.EVENT_READ, ("control", 0))
    record = {"retransmit": [[1, 5, np.arange(1024 * 1024, dtype=np.float64)]]}  # 8 MiB
    stop = threading.Event()

    def loop() -> None:
        worker._heartbeat()  # the first heartbeat is due at once; then none for 30 s
        worker._send_control_link({"op": "frozen", "rank": 0, "round": 3, "volatile": record})
        while not stop.is_set() and not worker.stopping:
            worker._turn()  # frozen: no engine, just the loop

    loop_thread = threading.Thread(target=loop, daemon=True)
    loop_thread.start()
    got: list[Any] = []
    reader = FrameReader()
    theirs.settimeout(10.0)
    try:
        while not any(m.get("op") == "frozen" for m in got):
            got.extend(reader.feed(theirs.recv(1 << 20)))
    except TimeoutError:
        pass
    finally:
        stop.set()
        theirs.close()  # ends a loop stuck in select (it sees the supervisor gone)
        loop_thread.join(35.0)
        close(worker)
        ours.close()
    frozen = [m for m in got if m.get("op") == "frozen"]
    assert frozen, "the frozen reply did not arrive within 10 s"
    assert np.array_equal(frozen[0]["volatile"]["retransmit"][0][2], record["retransmit"][0][2])


def test_basic_checkpoints_wait_for_the_pending_save(tmp_path: Path) -> None:
    """A disk slower than the checkpoint interval must not queue checkpoints without bound.

    Behind them, message-log writes (and with them deliveries) and commit markers would wait
    ever longer: with large states the rank stalled. While a save is in flight, a basic
    checkpoint that falls due is taken once the save is durable, not queued.
    """
    worker = make_worker(tmp_path, n=2, protocol="message-logging")
    disk = Future[None]()
    try:
        worker._on_control({"op": "init"})
        engine = worker.engine
        assert engine is not None
        # A slow disk: the stable thread is busy with an earlier save until we say so.
        worker.writer.put(SaveJob(generation=-1, index=-1, pending=disk, record={}))
        for _ in range(5):  # five intervals go by
            worker._next_checkpoint_s = min(worker._next_checkpoint_s, time.monotonic())
            worker._fire_timers()
            worker._run_completions()
        assert engine.stats["checkpoints_basic"] == 1
        disk.set_result(None)
        deadline = time.monotonic() + 10
        while engine.stats["checkpoints_basic"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
            worker._run_completions()  # the save is persisted: the deferred one is due now
            worker._fire_timers()
        assert engine.stats["checkpoints_basic"] == 2
    finally:
        if not disk.done():
            disk.set_result(None)  # let the stable thread finish so the worker can close
        close(worker)


#: Control messages a supervisor with a bug could send: each once crashed the rank's loop
#: (``.get`` on a list, ``int()`` of a str, a missing key) or was silently misread.
BAD_FROM_SUPERVISOR: list[Any] = [
    [1, 2],
    "init",
    7,
    {"round": 1},
    {"op": None},
    {"op": "restore", "round": 1},
    {"op": "restore", "index": "3", "epoch": 1},
    {"op": "restore", "index": 3, "epoch": 1, "replay": [["m", 1]]},
    {"op": "freeze", "round": 1, "failed": "1"},
    {"op": "freeze", "round": 1, "failed": [1], "newly_failed": [None]},
    {"op": "resume", "epoch": 1, "cuts": [1, 2]},
    {"op": "resume", "epoch": 1, "rearrive": [["t"]]},
    {"op": "connect", "round": "r"},
    {"op": "probe", "seq": [1]},
]


@pytest.mark.parametrize("bad", BAD_FROM_SUPERVISOR, ids=repr)
def test_a_wrongly_shaped_control_message_is_logged_and_ends_the_rank_cleanly(
    tmp_path: Path, bad: object
) -> None:
    """Treated like an undecodable control frame: logged with what was wrong, and the rank
    stops (its supervisor then recovers it) instead of dying of an exception in its loop."""
    worker = make_worker(tmp_path)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    worker._control = ours
    worker.sel.register(ours, selectors.EVENT_READ, ("control", 0))
    try:
        theirs.sendall(frame(bad))
        worker._read_control()
        assert worker.stopping, "the rank went on after a malformed control message"
        assert worker.engine is None and worker._connecting is None  # nothing was acted on
    finally:
        close(worker)
        ours.close()
        theirs.close()
    log = tmp_path / "store" / "logs" / "rank-0.jsonl"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    (bad_frame,) = [e for e in events if e["event"] == "bad_control_frame"]
    assert "malformed control message from the supervisor" in bad_frame["why"]


def test_release_output_counts_only_ids_the_ledger_has_not_released(tmp_path: Path) -> None:
    """A restored rank releases again what its checkpoint held; an earlier incarnation may
    have released some of it already (the ledger says so): only new ids count as released."""
    ledger = ledger_path(tmp_path / "store", 0)
    ledger.parent.mkdir(parents=True)
    writer = LedgerWriter(ledger)
    for output_id, item in ((1, "a"), (2, "b")):
        writer.append({"k": "output", "id": output_id, "item": item})
    writer.close()
    worker = make_worker(tmp_path)  # a new incarnation: it reads the ledger
    try:
        assert worker.release_output(0, 1, ["a", "b", "c"]) == 1
        assert worker.release_output(0, 3, ["c", "d"]) == 1
        assert worker.release_output(0, 5, ["e"]) == 1
        assert worker.writer.drain()
    finally:
        close(worker)
    released = read_ledger(ledger, 0)
    assert released.released_outputs == 5 and list(released.outputs) == ["a", "b", "c", "d", "e"]


def test_a_checkpoint_discarded_while_it_is_saved_is_not_reported_persisted(
    tmp_path: Path,
) -> None:
    """Two-phase aborts its round when a peer fails, discarding a tentative checkpoint whose
    save may still be in flight. Its ``persisted`` completion reached the protocol after the
    recovery, for a round long gone ("checkpoint 1 is not pending"), and killed the rank."""
    worker = make_worker(tmp_path, n=2, protocol="two-phase")
    try:
        worker._on_control({"op": "init"})
        worker._on_control({"op": "resume", "epoch": 0, "recovery": False})
        engine = worker.engine
        assert engine is not None
        engine.checkpoint_requested()  # rank 0 starts a round: tentative checkpoint 1 ...
        # ... and rank 1 fails before the loop has seen that checkpoint persisted.
        worker._on_control({"op": "freeze", "round": 1, "failed": [1], "newly_failed": [1]})
        resume = {"op": "resume", "round": 1, "epoch": 1, "recovery": True}
        worker._on_control({**resume, "restored": [1], "cuts": {1: 0}})
        worker._run_completions()  # the save finished during the freeze: its completion
        assert engine.protocol.stats["rounds_aborted"] == 1
        assert not worker._saving and not worker._discarded_saving
        # The next round is not disturbed: its checkpoint persists and commits.
        engine.checkpoint_requested()
        deadline = time.monotonic() + 10
        while engine.protocol.stats["rounds_committed"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
            worker._run_completions()
        assert engine.protocol.stats["rounds_committed"] == 1
    finally:
        close(worker)


class _SlowSave:
    """A save the test ends from another thread; ``result`` blocks like ``PendingSave``'s."""

    def __init__(self) -> None:
        self.future = Future[None]()
        self.waits = 0

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout_s: float | None = None) -> None:
        self.waits += 1
        self.future.result(timeout=timeout_s)


def test_waiting_for_the_previous_save_blocks_on_it_and_keeps_heartbeating(
    tmp_path: Path,
) -> None:
    """A checkpoint taken while the previous save is still being written waits for that save
    on the save itself (it goes on as soon as the save ends, with no poll interval) and keeps
    heartbeating meanwhile, so a slow disk does not look like a hung rank."""
    worker = make_worker(tmp_path, heartbeat_interval_s=0.05)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    worker._control = ours
    save = _SlowSave()
    ended_at: list[float] = []

    def end_save() -> None:
        time.sleep(0.3)
        ended_at.append(time.monotonic())
        save.future.set_result(None)

    ender = threading.Thread(target=end_save)
    try:
        worker._hb_due_s = time.monotonic()
        ender.start()
        worker._wait_for_save(save)
        returned_at = time.monotonic()
        assert save.done() and ended_at and returned_at >= ended_at[0]
        # One blocking wait per heartbeat interval, not one per 2 ms poll.
        assert save.waits <= 0.3 / 0.05 + 3
        reader = FrameReader()
        theirs.setblocking(False)
        beats = [m for m in reader.feed(theirs.recv(1 << 20)) if m.get("op") == "hb"]
        assert len(beats) >= 3, f"only {len(beats)} heartbeats in 0.3 s of waiting"
    finally:
        ender.join()
        close(worker)
        ours.close()
        theirs.close()
