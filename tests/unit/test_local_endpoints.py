"""Socket addresses (``endpoints``), and a rank's channels over TCP between loopback addresses."""

from __future__ import annotations

import selectors
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snapline.errors import ConfigError
from snapline.runtime.local import endpoints
from snapline.runtime.local.channels import APP, Transport
from snapline.runtime.local.control import check_from_rank, check_from_supervisor
from snapline.runtime.local.wire import WireError

pytestmark = pytest.mark.timeout(60)


def test_addresses_parse_and_print() -> None:
    assert endpoints.parse("unix:/tmp/x/rank-0.sock") == ("unix", "/tmp/x/rank-0.sock", 0)
    assert endpoints.parse("tcp:10.0.0.5:7000") == ("tcp", "10.0.0.5", 7000)
    assert endpoints.parse(endpoints.tcp_address("::1", 9)) == ("tcp", "::1", 9)
    assert endpoints.tcp_address("::1", 9) == "tcp:[::1]:9"
    assert endpoints.host_of("tcp:node-3:0") == "node-3"
    assert endpoints.host_of("unix:/s") is None


@pytest.mark.parametrize("bad", ["", "tcp:", "tcp:host", "tcp::80", "tcp:h:99999", "udp:h:1", "/x"])
def test_a_bad_address_says_what_is_expected(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"unix:/path or tcp:HOST:PORT"):
        endpoints.parse(bad)


def test_listening_on_port_0_reports_the_port_bound_and_connects_without_nagle() -> None:
    listener, bound = endpoints.listen("tcp:127.0.0.2:0")
    try:
        kind, host, port = endpoints.parse(bound)
        assert (kind, host) == ("tcp", "127.0.0.2") and port > 0
        client = endpoints.connect(bound)
        server, _ = listener.accept()
        endpoints.tune(server)
        for sock in (client, server):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert sock.gettimeout() is None
            sock.close()
    finally:
        listener.close()


def test_listening_on_an_address_of_another_host_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"is 192\.0\.2\.77 an address of this host"):
        endpoints.listen("tcp:192.0.2.77:0")


def test_nobody_listening_is_an_os_error_for_the_caller_to_retry() -> None:
    listener, bound = endpoints.listen("tcp:127.0.0.1:0")
    listener.close()
    with pytest.raises(OSError):
        endpoints.connect(bound)


def test_the_peer_table_and_a_ranks_address_are_checked_on_the_control_link() -> None:
    check_from_rank({"op": "hello", "rank": 1, "pid": 5, "address": "tcp:h:1", "node": "h"})
    check_from_supervisor({"op": "connect", "round": 2, "peers": {0: "tcp:h:1"}})
    with pytest.raises(WireError, match="peers"):
        check_from_supervisor({"op": "connect", "peers": {"0": "tcp:h:1"}})
    with pytest.raises(WireError, match="address"):
        check_from_rank({"op": "hello", "rank": 1, "pid": 5, "address": 7})


# ---------------------------------------------------------------------------- channels over TCP


class Rank:
    """One rank's real ``Transport``, listening on TCP at ``host``, and its own selector."""

    def __init__(self, tmp_path: Path, rank: int, host: str) -> None:
        self.rank = rank
        self.selector = selectors.DefaultSelector()
        self.logged: list[tuple[str, dict[str, Any]]] = []
        self.transport = Transport(
            rank=rank,
            inbound=frozenset({1 - rank}),
            outbound=frozenset({1 - rank}),
            socket_dir=tmp_path,
            secret=b"s" * 32,
            selector=self.selector,
            wake=lambda: None,
            log=lambda event, **fields: self.logged.append((event, fields)),
            listen_address=endpoints.tcp_address(host, 0),
        )
        self.transport.listen()
        self.got: list[int] = []

    def turn(self) -> None:
        """One turn of a rank's loop, as the worker runs it (frames handed over, acks out)."""
        for key, mask in self.selector.select(0.01):
            self.transport.on_event(key.data, mask)
        self.transport.adopt_accepted()
        src = 1 - self.rank
        while (f := self.transport.next_frame(src)) is not None:
            if f[0] == APP:
                self.got.append(int(f[3]))
        self.transport.flush()

    def close(self) -> None:
        self.transport.close()
        self.selector.close()


def spin(ranks: list[Rank], done: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, [r.logged for r in ranks]
        for rank in ranks:
            rank.turn()


@pytest.fixture
def ranks(tmp_path: Path) -> Iterator[list[Rank]]:
    made = [Rank(tmp_path, 0, "127.0.0.1"), Rank(tmp_path, 1, "127.0.0.2")]
    yield made
    for rank in made:
        rank.close()


def test_a_rank_restarted_on_another_address_gets_every_message_once_in_order(
    tmp_path: Path, ranks: list[Rank]
) -> None:
    sender, receiver = ranks
    assert endpoints.host_of(receiver.transport.address) == "127.0.0.2"
    table = {r.rank: r.transport.address for r in ranks}
    for rank in ranks:
        rank.transport.set_peers(table)
    assert sender.transport.connect(1) is None
    for seq in range(1, 6):
        sender.transport.send_app(1, seq, seq, None)
    spin(ranks, lambda: receiver.got == [1, 2, 3, 4, 5] and not sender.transport.out[1].unacked)
    # Then messages 6-8 reach a receiver that dies before it reads them (its checkpoint has
    # received 1-5): the sender keeps them, unacknowledged.
    for seq in range(6, 9):
        sender.transport.send_app(1, seq, seq, None)
    sender.transport.flush()
    receiver.close()
    ranks[1] = moved = Rank(tmp_path, 1, "127.0.0.3")
    moved.transport.set_expected({0: 5}, all_sources=True, only={})
    assert moved.transport.address != receiver.transport.address
    sender.transport.drain_dead({1})
    sender.transport.set_peers({1: moved.transport.address})
    spin(ranks, lambda: sender.transport.connect(1) is None)
    sender.transport.send_app(1, 9, 9, None)
    spin(ranks, lambda: moved.got == [6, 7, 8, 9] and not sender.transport.out[1].unacked)
    assert sender.transport.stats.resent == 3
    assert moved.transport.stats.duplicates_dropped == 0


def test_a_dead_tcp_senders_frames_are_taken_and_a_silent_one_costs_one_bounded_wait(
    ranks: list[Rank],
) -> None:
    sender, receiver = ranks
    table = {r.rank: r.transport.address for r in ranks}
    for rank in ranks:
        rank.transport.set_peers(table)
    assert sender.transport.connect(1) is None
    spin(ranks, lambda: receiver.transport.inn[0].sock is not None)
    # A sender that wrote and died: what it wrote is taken, without waiting.
    for seq in (1, 2):
        sender.transport.send_app(1, seq, seq, None)
    sender.transport.flush()
    assert sender.transport.out[1].sock is not None
    sender.transport.out[1].sock.shutdown(socket.SHUT_WR)
    t0 = time.monotonic()
    receiver.transport.drain_dead({0})
    assert time.monotonic() - t0 < 0.5
    assert [f[2] for f in receiver.transport.inn[0].frames] == [1, 2]
    # A sender that is declared dead but keeps its end open (hung, or its host vanished):
    # the receiver waits for its EOF once, up to the bound, then gives the socket up.
    sender.transport.drain_dead({1})
    assert sender.transport.connect(1) is None
    spin(ranks, lambda: receiver.transport.inn[0].sock is not None)
    t0 = time.monotonic()
    receiver.transport.drain_dead({0})
    waited_s = time.monotonic() - t0
    assert 0.9 < waited_s < 2.0, waited_s
    assert receiver.transport.inn[0].sock is None
    # (It had resent 1 and 2 on reconnecting: never acknowledged.)
    assert ("inbound_closed_while_open", {"src": 0, "bytes_read": 12}) in receiver.logged
