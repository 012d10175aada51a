"""A worker's event loop, run in this process against real sockets (no supervisor process)."""

from __future__ import annotations

import os
import secrets
import selectors
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from snapline.runtime.local.config import JobConfig
from snapline.runtime.local.wire import FrameReader
from snapline.runtime.local.worker import Worker

pytestmark = pytest.mark.timeout(60)


def make_worker(tmp_path: Path, *, heartbeat_interval_s: float) -> Worker:
    config = JobConfig(
        app="bank",
        n=1,
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
