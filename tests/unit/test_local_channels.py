"""A rank's channels (``Transport``), over real socket pairs (no other process needed)."""

from __future__ import annotations

import selectors
import socket
import time
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


def test_adopting_a_replacement_never_waits_for_a_live_old_connection(rank0: Rank0) -> None:
    """A new connection from rank 1 replaces the old one without blocking the rank's loop.

    The old connection's peer is alive and never closes (a predecessor that is not quite
    dead, a buggy peer): reading it until EOF blocked the loop -- heartbeats included --
    for as long as the peer kept it open. What it already held is still taken, in order,
    ahead of the new connection's frames.
    """
    transport = rank0.transport
    old = rank0.accept_inbound()
    old.sendall(frame([APP, 0, 1, "m1", None]) + frame([APP, 0, 2, "m2", None]))
    started = time.monotonic()
    new = rank0.accept_inbound()  # adopts the new one, giving up the old one (still open)
    took_s = time.monotonic() - started
    assert took_s < 0.3, f"adopt_accepted blocked {took_s:.2f}s on a live old connection"
    (logged,) = rank0.events("inbound_closed_while_open")
    assert logged["src"] == 1 and logged["bytes_read"] > 0
    # The new sender resends what it has not seen acknowledged (m2) and goes on (m3).
    new.sendall(frame([APP, 0, 2, "m2", None]) + frame([APP, 0, 3, "m3", None]))
    transport.on_event(("in", 1), selectors.EVENT_READ)
    handed = []
    while (f := transport.next_frame(1)) is not None:
        handed.append(f[3])
    assert handed == ["m1", "m2", "m3"]  # each once, in order: the resent m2 was a duplicate
    assert transport.stats.duplicates_dropped == 1 and transport.stats.gaps == 0
    old.settimeout(5.0)
    assert old.recv(1) == b"", "the old connection was not closed"


def test_a_closed_old_connection_is_read_to_its_end_before_the_new_one(rank0: Rank0) -> None:
    """A sender that died left frames and EOF in its socket: all are taken, nothing logged."""
    transport = rank0.transport
    old = rank0.accept_inbound()
    old.sendall(b"".join(frame([APP, 0, seq, f"m{seq}", None]) for seq in range(1, 101)))
    old.close()  # the sender dies; its replacement connects
    new = rank0.accept_inbound()
    assert not rank0.events("inbound_closed_while_open")
    new.sendall(frame([APP, 0, 101, "m101", None]))
    transport.on_event(("in", 1), selectors.EVENT_READ)
    seqs = []
    while (f := transport.next_frame(1)) is not None:
        seqs.append(f[2])
    assert seqs == list(range(1, 102))


def test_draining_a_failed_peer_that_is_still_alive_does_not_block(rank0: Rank0) -> None:
    """``freeze`` drains the ranks the recovery counts as failed; one may still run (a rank
    rebuilt by an aborted round counts as failed again): its socket must not hold the loop."""
    transport = rank0.transport
    peer = rank0.accept_inbound()
    peer.sendall(frame([APP, 0, 1, "m1", None]))
    started = time.monotonic()
    transport.drain_dead({1})
    took_s = time.monotonic() - started
    assert took_s < 0.3, f"drain_dead blocked {took_s:.2f}s on a live peer"
    assert transport.inn[1].sock is None
    assert transport.next_frame(1) == [APP, 0, 1, "m1", None]
