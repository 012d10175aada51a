"""snapline's virtual switch, with real Unix datagram sockets standing in for two QEMUs."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapline.levels.system.network import Switch, mac_of


def _mac(rank: int) -> bytes:
    return bytes.fromhex(mac_of(rank).replace(":", ""))


def _frame(dst: bytes, src: int, body: bytes) -> bytes:
    return dst + _mac(src) + b"\x08\x00" + body


class Guest:
    """One end of a cable, as QEMU's ``-netdev dgram`` is."""

    def __init__(self, switch: Switch, rank: int) -> None:
        self.rank = rank
        self.switch = switch
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(switch.vm_path(rank)))
        self.sock.settimeout(2.0)

    def send(self, dst: bytes, body: bytes) -> None:
        self.sock.sendto(_frame(dst, self.rank, body), str(self.switch.hub_path(self.rank)))

    def recv(self) -> bytes:
        return self.sock.recv(65536)[14:]

    def nothing(self) -> bool:
        self.sock.settimeout(0.2)
        try:
            self.sock.recv(65536)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(2.0)
        return False


@pytest.fixture
def net(tmp_path: Path) -> Iterator[tuple[Switch, Guest, Guest, Guest]]:
    switch = Switch(tmp_path, 3)
    guests = [Guest(switch, r) for r in range(3)]
    try:
        yield switch, guests[0], guests[1], guests[2]
    finally:
        for g in guests:
            g.sock.close()
        switch.close()


def test_unicast_goes_to_its_port_and_broadcast_to_all_others(net: tuple) -> None:
    _, a, b, c = net
    a.send(_mac(1), b"to b")
    assert b.recv() == b"to b"
    assert c.nothing()
    a.send(b"\xff" * 6, b"everyone")
    assert b.recv() == b"everyone"
    assert c.recv() == b"everyone"
    assert a.nothing()


def test_frames_sent_before_the_cut_are_recorded_and_put_back_in_order(net: tuple) -> None:
    switch, a, b, _ = net
    switch.hold()
    assert switch.wait_consumed(1.0)
    for i in range(5):
        a.send(_mac(1), b"seq %d" % i)  # in flight: sent, not received
    time.sleep(0.05)
    recorded = switch.cut()
    assert [f[14:] for f in recorded[1]] == [b"seq %d" % i for i in range(5)]
    assert b.nothing()  # held, not delivered
    # A restore: the switch forgets its queue; the recorded frames come back on inject.
    switch.discard()
    switch.hold()
    switch.inject(recorded)
    switch.release()
    assert [b.recv() for _ in range(5)] == [b"seq %d" % i for i in range(5)]


def test_wait_consumed_sees_a_guest_that_has_not_read_its_frames(net: tuple) -> None:
    switch, a, b, _ = net
    a.send(_mac(1), b"unread")
    time.sleep(0.05)
    switch.hold()
    assert not switch.wait_consumed(0.1)  # b has not read it: still charged to the switch
    assert b.recv() == b"unread"
    assert switch.wait_consumed(1.0)
    switch.release()


def test_a_frame_for_a_guest_that_is_not_running_is_dropped(net: tuple) -> None:
    switch, a, b, _ = net
    b.sock.close()
    switch.vm_path(1).unlink()
    a.send(_mac(1), b"lost")
    deadline = time.monotonic() + 2
    while switch.dropped == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert switch.dropped == 1


def test_a_guest_that_does_not_read_gets_its_frames_later_in_order(net: tuple) -> None:
    switch, a, b, _ = net
    count = 200  # far more than the kernel queues on one Unix datagram socket (10)
    for i in range(count):
        a.send(_mac(1), b"n %d" % i)
    time.sleep(0.2)
    assert [b.recv() for _ in range(count)] == [b"n %d" % i for i in range(count)]
    assert switch.dropped == 0


def test_a_backlog_at_the_cut_is_in_flight(net: tuple) -> None:
    switch, a, b, _ = net
    for i in range(50):
        a.send(_mac(1), b"n %d" % i)
    time.sleep(0.2)
    switch.hold()
    queued = [f[14:] for f in switch.cut().get(1, [])]
    # The kernel queued the first few on b's socket: delivered. The backlog is in flight.
    delivered = []
    while len(delivered) + len(queued) < 50:
        delivered.append(b.recv())
    assert delivered + queued == [b"n %d" % i for i in range(50)]
    assert len(queued) >= 50 - 11
    assert b.nothing()
    switch.release()
