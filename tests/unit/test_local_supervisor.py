"""The supervisor's control links, over real Unix sockets (no worker processes needed)."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from snapline.runtime.local.supervisor import Supervisor
from snapline.runtime.local.wire import FrameReader, connect_handshake

pytestmark = pytest.mark.timeout(60)


def control_link(tmp_path: Path) -> tuple[Supervisor, socket.socket]:
    """A supervisor with rank 0's control link connected from this process."""
    socket_dir = Path(tempfile.mkdtemp(prefix="snapline-test-"))
    (tmp_path / "logs").mkdir()
    secret = secrets.token_bytes(32)
    sup = Supervisor(
        n=1,
        socket_dir=socket_dir,
        store_dir=tmp_path,
        secret=secret,
        heartbeat_timeout_s=60.0,
        log=lambda *a, **k: None,
    )
    # Pose as the worker of rank 0 (the supervisor admits only the pid it spawned).
    slot = sup.slots[0]
    slot.pid, slot.alive = os.getpid(), True
    link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    link.connect(str(socket_dir / "control.sock"))
    connect_handshake(link, secret, "control", rank=0, pid=os.getpid())
    deadline = time.monotonic() + 10
    while slot.sock is None and time.monotonic() < deadline:
        sup.poll(0.05)
    assert slot.sock is not None
    return sup, link


def release(sup: Supervisor) -> None:
    """Close the supervisor without letting it SIGKILL the "worker" (this very process)."""
    for slot in sup.slots:
        slot.alive, slot.pid = False, None
    sup.close()


def test_a_control_message_larger_than_the_socket_buffer_arrives_whole(tmp_path: Path) -> None:
    """A ``restore`` carrying a large replay must reach the worker while the supervisor waits.

    The worker reads only after the supervisor queued the message, so the first ``send`` can
    take just one socket buffer's worth; the rest must follow while the supervisor waits for
    the reply (``poll``), without any further message to that rank.
    """
    sup, link = control_link(tmp_path)
    payload = np.arange(1024 * 1024, dtype=np.float64)  # 8 MiB: ~40 socket buffers
    try:
        sup.send(0, {"op": "restore", "round": 7, "replay": [[1, 2, payload]]})
        assert sup.slots[0].out, "the message should exceed what one send takes"
        got: list[Any] = []

        def read() -> None:
            reader = FrameReader()
            link.settimeout(20.0)
            while not got:
                try:
                    data = link.recv(1 << 20)
                except OSError:  # timed out: the test fails below
                    return
                if not data:
                    return
                got.extend(reader.feed(data))

        reader_thread = threading.Thread(target=read, daemon=True)
        reader_thread.start()
        deadline = time.monotonic() + 20
        while reader_thread.is_alive() and time.monotonic() < deadline:
            sup.poll(0.05)  # what the recovery does while it waits for the reply
        reader_thread.join(1.0)
        assert got, "the worker never received the whole control message"
        msg = got[0]
        assert msg["op"] == "restore" and msg["round"] == 7
        assert np.array_equal(msg["replay"][0][2], payload)
        assert not sup.slots[0].out
    finally:
        link.close()
        release(sup)
