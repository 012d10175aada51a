"""A rank's channels (``Transport``), over real socket pairs (no other process needed)."""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from snapline.runtime.local.channels import ACK, APP, CONTROL, Transport
from snapline.runtime.local.wire import frame

pytestmark = pytest.mark.timeout(60)

Logged = list[tuple[str, dict[str, Any]]]


class Rank0:
    """Rank 0's transport with channels ``1 -> 0`` and ``0 -> 1``, and what it logged."""

    def __init__(self, tmp_path: Path) -> None:
        self.logged: Logged = []
        self.selector = selectors.DefaultSelector()
        self.transport = Transport(
            rank=0,
            inbound=frozenset({1}),
            outbound=frozenset({1}),
            socket_dir=tmp_path,
            secret=bytes(32),
            selector=self.selector,
            wake=lambda: None,
            log=lambda event, **fields: self.logged.append((event, fields)),
        )
        self.peers: list[socket.socket] = []

    def accept_inbound(self) -> socket.socket:
        """Rank 1's end of a new connection ``1 -> 0``, adopted as the acceptor would."""
        ours, theirs = socket.socketpair()
        self.peers.append(theirs)
        self.transport._accepted.put((ours, 1))
        self.transport.adopt_accepted()
        return theirs

    def connect_outbound(self) -> socket.socket:
        """Rank 1's end of channel ``0 -> 1``, connected as ``connect`` would."""
        ours, theirs = socket.socketpair()
        self.peers.append(theirs)
        ours.setblocking(False)
        link = self.transport.out[1]
        link.sock = ours
        link.ever_connected = True
        self.selector.register(ours, selectors.EVENT_READ, ("out", 1))
        return theirs

    def events(self, name: str) -> list[dict[str, Any]]:
        return [fields for event, fields in self.logged if event == name]

    def close(self) -> None:
        self.transport.close()
        for peer in self.peers:
            peer.close()
        self.selector.close()


@pytest.fixture
def rank0(tmp_path: Path) -> Iterator[Rank0]:
    rank = Rank0(tmp_path)
    yield rank
    rank.close()


#: Frames that decode but are no ``[APP, epoch, seq, payload, piggyback]`` or
#: ``[CONTROL, epoch, control]``: each once crashed the reading rank (``f[0]`` on a number,
#: ``int(f[2])`` on a str, ``f[3]`` past the end ...) or was silently misread.
BAD_CHANNEL_FRAMES: list[Any] = [
    5,
    None,
    "text",
    [],
    [APP],
    [APP, 0, 1],
    [APP, 0, "2", "payload", None],
    [APP, 0.5, 2, "payload", None],
    [APP, 0, None, "payload", None],
    [CONTROL, 0],
    [CONTROL, "0", {"kind": "marker"}],
    [ACK, 3],
    [True, 0, {"kind": "marker"}],
    [7, 0, 2, "payload", None],
    {"kind": APP, "seq": 2},
    [np.arange(3), 0, 2, "payload", None],
]


@pytest.mark.parametrize("bad", BAD_CHANNEL_FRAMES, ids=repr)
def test_a_wrongly_shaped_frame_drops_that_connection_not_the_rank(
    rank0: Rank0, bad: object
) -> None:
    """An authenticated peer with a bug must not crash the receiving rank's loop.

    The frames before the bad one are kept and handed over in order; the bad one is logged
    with what was wrong, and that connection is closed -- what an undecodable frame does.
    """
    peer = rank0.accept_inbound()
    peer.sendall(frame([APP, 0, 1, "first", None]) + frame(bad) + frame([APP, 0, 2, "x", None]))
    transport = rank0.transport
    transport.on_event(("in", 1), selectors.EVENT_READ)
    good = transport.next_frame(1)
    assert good == [APP, 0, 1, "first", None]
    assert transport.next_frame(1) is None
    assert transport.inn[1].sock is None, "the connection that sent the bad frame stays open"
    (logged,) = rank0.events("bad_frame")
    assert logged["src"] == 1
    assert "malformed frame on channel 1 -> 0" in logged["why"]
    assert "expected [0, epoch, seq, payload, piggyback]" in logged["why"]


def test_well_shaped_frames_pass_the_check(rank0: Rank0) -> None:
    peer = rank0.accept_inbound()
    frames = [[APP, 0, 1, (1, 2), {"label": 3}], [CONTROL, 2, {"kind": "marker"}]]
    peer.sendall(b"".join(frame(f) for f in frames))
    transport = rank0.transport
    transport.on_event(("in", 1), selectors.EVENT_READ)
    assert [transport.next_frame(1), transport.next_frame(1)] == frames
    assert transport.inn[1].sock is not None and not rank0.events("bad_frame")


#: Frames on an outbound channel that are no ``[ACK, seq]``.
BAD_ACKS: list[Any] = [
    7,
    [],
    [ACK],
    [ACK, "3"],
    [ACK, None],
    [ACK, 1, 2],
    [APP, 0, 1, "payload", None],
    {"ack": 3},
]


@pytest.mark.parametrize("bad", BAD_ACKS, ids=repr)
def test_a_wrongly_shaped_ack_drops_the_connection_and_keeps_the_unacked(
    rank0: Rank0, bad: object
) -> None:
    peer = rank0.connect_outbound()
    transport = rank0.transport
    for seq in (1, 2, 3):
        transport.send_app(1, seq, f"m{seq}", None)
    peer.sendall(frame([ACK, 1]) + frame(bad))
    transport.on_event(("out", 1), selectors.EVENT_READ)
    link = transport.out[1]
    assert link.sock is None, "the connection that sent the bad ack stays open"
    # The good ack before it counted; the rest waits to be resent on the next connect.
    assert [seq for seq, _ in link.unacked] == [2, 3]
    (logged,) = rank0.events("bad_ack_frame")
    assert logged["dst"] == 1 and "malformed ack on channel 0 -> 1" in logged["why"]
