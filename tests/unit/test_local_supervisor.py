"""The supervisor's control links, over real Unix sockets (no worker processes needed)."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from snapline.runtime.local.supervisor import Supervisor
from snapline.runtime.local.wire import FrameReader, connect_handshake, frame

pytestmark = pytest.mark.timeout(60)


def control_link(
    tmp_path: Path, log: Callable[..., None] = lambda *a, **k: None
) -> tuple[Supervisor, socket.socket]:
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
        log=log,
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
        # close() leaves a live slot's control link to _reap, which it skips now: close it
        # here, or the unclosed socket's ResourceWarning fails some later test at random.
        sup._drop_sock(slot)
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


_COUNTERS = {
    "ready": True,
    "frozen": False,
    "done": False,
    "requested": 3,
    "delivered": 2,
    "sent": 3,
    "undelivered": 0,
    "unsent": 0,
    "timers": 1,
    "activity": 2,
    "committed": 0,
    "gaps": 0,
    "sent_to": {1: 3},
    "received_from": {1: 2},
}

#: Control messages a worker with a bug could send: each once crashed the supervisor (``.get``
#: on a list, ``int()`` of a dict key ...) at once or later in the recovery coordinator.
BAD_FROM_RANK: list[Any] = [
    [1, 2],
    "hb",
    None,
    {"rank": 0},
    {"op": 3},
    {"op": "hb", "rank": 0, "ready": True},  # counters missing: read by termination detection
    {"op": "hb", "rank": 0, **_COUNTERS, "requested": "3"},
    {"op": "hb", "rank": 0, **_COUNTERS, "sent_to": [3]},
    {"op": "probe_reply", "seq": [1], **_COUNTERS},
    {"op": "ready", "rank": 0, "round": np.arange(2)},  # compared with == to the round id
    {"op": "connected", "rank": "0", "round": 1},
    {"op": "frozen", "rank": 0, "round": 1, "volatile": [1, 2]},
    {"op": "frozen", "rank": 0, "round": 1, "volatile": {"rank": 0, "index": -1}},
    {"op": "resumed", "round": 1, "sent": {"1": 2}, "received": {}},
    {"op": "resumed", "round": 1, "sent": {}},
    {"op": "result", "rank": 0, "result": None, "stats": [], "held_outputs": []},
    {"op": "result", "rank": 0, "result": None, "stats": {}, "held_outputs": [[1]]},
    {"op": "fatal", "rank": 0, "error": "boom"},
]


@pytest.mark.parametrize("bad", BAD_FROM_RANK, ids=repr)
def test_a_wrongly_shaped_control_message_fails_that_rank_not_the_supervisor(
    tmp_path: Path, bad: object
) -> None:
    """A worker with a bug must not take the supervisor (and the job) down with it.

    The message decodes, so it is no stranger's: it is treated like an undecodable frame from
    that rank -- logged with what was wrong, and the rank counts as failed (it is recovered
    like a crash). Messages before it are handled.
    """
    logged: list[tuple[str, dict[str, Any]]] = []
    sup, link = control_link(tmp_path, lambda event, **fields: logged.append((event, fields)))
    slot = sup.slots[0]
    try:
        link.sendall(frame({"op": "hb", "rank": 0, **_COUNTERS}) + frame(bad))
        deadline = time.monotonic() + 10
        while slot.alive and time.monotonic() < deadline:
            sup.poll(0.05)
        assert not slot.alive, "the rank that sent a malformed message is not counted failed"
        assert sup.take_dead() == [0]
        assert slot.failure == "bad control frame"
        assert slot.counters["requested"] == 3  # the heartbeat before it was taken
        whys = [f["why"] for event, f in logged if event == "bad_control_frame"]
        assert len(whys) == 1 and "malformed control message from a rank" in whys[0]
    finally:
        link.close()
        release(sup)


def test_well_shaped_control_messages_are_taken(tmp_path: Path) -> None:
    sup, link = control_link(tmp_path)
    slot = sup.slots[0]
    volatile = {
        "rank": 0,
        "index": -1,
        "forced": False,
        "sent": {1: 3},
        "received": {},
        "meta": {"log": {"1": [[1, (2, 3)]]}},
        "attachments": {},
    }
    try:
        link.sendall(
            frame({"op": "hb", "rank": 0, "ready": False})
            + frame({"op": "frozen", "rank": 0, "round": 4, "volatile": volatile})
            + frame({"op": "resumed", "round": 4, "sent": {1: 3}, "received": {1: 0}})
            + frame({"op": "something_new", "x": 1})  # an unknown op is logged and ignored
        )
        deadline = time.monotonic() + 10
        while "resumed" not in slot.replies and time.monotonic() < deadline:
            sup.poll(0.05)
        assert slot.alive and slot.counters == {"op": "hb", "rank": 0, "ready": False}
        assert slot.replies["frozen"]["volatile"]["sent"] == {1: 3}
        assert slot.replies["resumed"]["round"] == 4
        assert "something_new" not in slot.replies
    finally:
        link.close()
        release(sup)
