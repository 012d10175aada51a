"""Reliable FIFO channels between the ranks of one job, over Unix or TCP stream sockets.

Theory of operation
-------------------
Each directed channel ``src -> dst`` is one stream socket that ``src`` opens to ``dst``'s
listening socket: by default the Unix socket ``<socket_dir>/rank-<dst>.sock`` (the directory
is 0700), or the address ``dst`` listens on (``endpoints``: ``tcp:HOST:PORT`` for ranks on
other hosts), which the supervisor hands out as a peer table with each ``connect`` (a rank
restarted elsewhere listens on a new address). The peer proves it holds the job secret (see
``wire``). A stream socket is already reliable and FIFO while both ends live; what it cannot
do is survive the death of an end. So:

* Application messages carry the engine's per-channel sequence number. The sender keeps every
  message the receiver has not yet *acknowledged* (the receiver acks cumulatively after handing
  messages to its engine). When the channel is reconnected -- the receiver restarted -- the
  sender resends every unacknowledged message, in order. The receiver drops any message whose
  sequence number it has already passed (duplicates), so resending is always safe.
* Every frame carries the job's *recovery epoch* when it was sent. After a recovery that rolled
  rank ``s`` back to a checkpoint whose ``sent[dst]`` is ``c``, the receiver drops frames of an
  older epoch from ``s`` with ``seq > c`` (they belong to the undone future of ``s``; the new
  incarnation will send its own) and drops old-epoch control frames from ``s``. A rank that was
  itself rolled back drops every old-epoch control frame addressed to its undone past.
* Control messages (markers, votes) share the socket, so they stay FIFO with the application
  messages they separate; they are not resent after a reconnect because a reconnect only
  happens across a recovery, which makes old control frames obsolete.

A frame that does not decode, or decodes to the wrong shape (a peer's bug: every frame is
checked as it arrives, before anything indexes into it), is logged and closes that one
connection, as the peer's death would; the rank's loop never sees it.

Writes are batched: frames queue in a per-channel buffer and go out in one ``send`` per loop
turn (non-blocking; a full socket buffer registers for write readiness instead of blocking the
rank). Connections are accepted and authenticated on a small acceptor thread so that a stranger
that connects and stays silent can never stall the rank's event loop.
"""

from __future__ import annotations

import contextlib
import errno
import queue
import select
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapline.runtime.local import endpoints
from snapline.runtime.local.wire import (
    FrameReader,
    Hello,
    WireError,
    connect_handshake,
    describe,
    frame,
    malformed,
    new_packer,
    serve_handshakes,
)

APP = 0
CONTROL = 1
ACK = 2
_RECV_BYTES = 256 * 1024
#: Most bytes taken from a socket being given up (far above any kernel socket buffer, which
#: is all a closed socket can hold; only a live peer writing on could send more).
_DRAIN_MAX_BYTES = 64 << 20
#: Longest wait for the EOF of a TCP socket being given up (see ``_drain_and_close_inbound``).
_TCP_DRAIN_S = 1.0


def rank_socket_path(socket_dir: Path, rank: int) -> Path:
    """The listening socket of ``rank``."""
    return socket_dir / f"rank-{rank}.sock"


@dataclass(slots=True)
class Outbound:
    """Our end of channel ``self -> dst``."""

    dst: int
    sock: socket.socket | None = None
    reader: FrameReader = field(default_factory=FrameReader)
    pending: bytearray = field(default_factory=bytearray)
    unacked: deque[tuple[int, bytes]] = field(default_factory=deque)
    writing: bool = False
    ever_connected: bool = False


@dataclass(slots=True)
class Inbound:
    """Our end of channel ``src -> self``: frames read but not yet handed to the engine."""

    src: int
    sock: socket.socket | None = None
    reader: FrameReader = field(default_factory=FrameReader)
    frames: deque[list[Any]] = field(default_factory=deque)
    expected_seq: int = 1
    acked_seq: int = 0
    ack_due: bool = False
    #: Ack bytes not yet taken by the socket (a partial send must never tear the ack stream).
    ack_out: bytearray = field(default_factory=bytearray)
    #: ``(epoch, cut)``: frames from an epoch before ``epoch`` with seq above ``cut`` are void.
    rolled_back: tuple[int, int] | None = None


@dataclass(slots=True, kw_only=True)
class TransportStats:
    """Counters for reports and the status line."""

    frames_sent: int = 0
    frames_received: int = 0
    duplicates_dropped: int = 0
    stale_dropped: int = 0
    gaps: int = 0
    rejected_connections: int = 0
    resent: int = 0


class Transport:
    """All channels of one rank; driven by the rank's single-threaded event loop."""

    def __init__(
        self,
        *,
        rank: int,
        inbound: frozenset[int],
        outbound: frozenset[int],
        socket_dir: Path,
        secret: bytes,
        selector: selectors.BaseSelector,
        wake: Callable[[], None],
        log: Callable[..., None],
        listen_address: str | None = None,
    ) -> None:
        self.rank = rank
        self.socket_dir = socket_dir
        #: Where this rank listens (default: its Unix socket in ``socket_dir``); after
        #: ``listen``, the address bound (a TCP port 0 resolved), which peers connect to.
        self.address = listen_address or endpoints.unix_address(rank_socket_path(socket_dir, rank))
        #: Where each peer listens, as the supervisor last said (``set_peers``).
        self.peers: dict[int, str] = {}
        self.secret = secret
        self.selector = selector
        self.epoch = 0
        self.self_restored_epoch = 0
        self.stats = TransportStats()
        self.out = {d: Outbound(d) for d in sorted(outbound)}
        self.inn = {s: Inbound(s) for s in sorted(inbound)}
        self._wake = wake
        self._log = log
        self._accepted: queue.Queue[tuple[socket.socket, int]] = queue.Queue()
        self._listener: socket.socket | None = None
        self._closing = False
        self._pack = new_packer().pack  # the loop thread's own packer (reused: fast)

    # ---------------------------------------------------------------- listening / accepting

    def listen(self) -> None:
        """Bind our socket and start the acceptor thread."""
        self._listener, self.address = endpoints.listen(self.address)
        threading.Thread(target=self._accept_loop, name="snapline-accept", daemon=True).start()

    def _accept_loop(self) -> None:
        listener = self._listener
        assert listener is not None
        serve_handshakes(
            listener,
            secret=self.secret,
            purpose="channel",
            admit=self._admit,
            reject=self._reject,
            closing=lambda: self._closing,
        )

    def _admit(self, conn: socket.socket, hello: Hello) -> None:
        """Queue an authenticated connection for the event loop (acceptor thread)."""
        if hello.rank not in self.inn:
            raise WireError(f"rank {hello.rank} has no channel to rank {self.rank}")
        self._accepted.put((conn, hello.rank))
        self._wake()

    def _reject(self, why: str) -> None:
        self.stats.rejected_connections += 1
        self._log("connection_rejected", why=why)

    def adopt_accepted(self) -> None:
        """Register connections the acceptor authenticated (called on the event loop)."""
        while True:
            try:
                conn, src = self._accepted.get_nowait()
            except queue.Empty:
                return
            link = self.inn[src]
            if link.sock is not None:
                # The previous connection from ``src``: take what it holds, then replace it.
                self._drain_and_close_inbound(link)
            conn.setblocking(False)
            link.sock = conn
            link.reader = FrameReader()
            self.selector.register(conn, selectors.EVENT_READ, ("in", src))

    def _drain_and_close_inbound(self, link: Inbound, tcp_deadline_s: float | None = None) -> None:
        """Take the frames ``link``'s socket already holds, then close it; never wait.

        The socket is being given up: its sender died (``drain_dead``) or a new connection
        from the same rank replaces it (``adopt_accepted``). Its frames may be messages that
        exist nowhere else (the sender's checkpoint counts them as sent, so its replacement
        will not resend them): they go to the engine first, ahead of the new connection's,
        and sequence numbers drop whatever is resent twice.

        Nothing more is coming by then: the kernel closed a dead sender's sockets before the
        supervisor saw it exit (it reaps a rank before it freezes the others or respawns it),
        a sender rolled back in place closes its old streams before it reconnects, and a
        closed Unix socket holds everything written to it, then EOF, all readable at once.
        So reading what is readable now loses nothing,
        while waiting for EOF (a blocking read, as this once did) froze the rank's loop --
        heartbeats included -- for as long as a peer that is not dead after all kept its end
        open. Such a peer's socket is closed all the same (its sender is being replaced) and
        logged; the read is bounded too, or a live peer writing as fast as we read would
        hold the loop.

        A TCP socket is the exception: the dead sender's kernel may still be sending what it
        wrote (another host's, over a network), so its EOF is waited for until
        ``tcp_deadline_s`` (default: ``_TCP_DRAIN_S`` from now; one deadline for all the peers
        a failure took, so the loop's heartbeats pause once). A host that is gone sends nothing
        more: what it had not sent is lost with it (see ``docs/howto/ray.md``, limits).
        """
        sock = link.sock
        assert sock is not None
        taken = 0
        at_eof = False
        tcp = sock.family != socket.AF_UNIX
        deadline_s = tcp_deadline_s or time.monotonic() + _TCP_DRAIN_S
        while link.sock is sock and taken < _DRAIN_MAX_BYTES:
            try:
                data = sock.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
            except BlockingIOError:
                left_s = deadline_s - time.monotonic()
                if tcp and left_s > 0:
                    with contextlib.suppress(OSError, ValueError):
                        select.select([sock], [], [], left_s)
                    continue
                break
            except OSError:
                at_eof = True  # reset by the peer: nothing more to read either
                break
            if not data:
                at_eof = True
                break
            taken += len(data)
            self._take_inbound(link, data)  # closes the link on a bad frame
        if link.sock is sock and not at_eof:
            self._log("inbound_closed_while_open", src=link.src, bytes_read=taken)
        self._close_inbound(link)

    # ---------------------------------------------------------------- connecting

    def connect(self, dst: int) -> str | None:
        """(Re)connect channel ``self -> dst``, resending unacked messages.

        None when connected; otherwise why not (the peer is not listening, or died during the
        handshake). The caller retries and decides what to log: a peer being replaced refuses
        connections until its replacement listens, which is no reason to fill the logs.
        """
        link = self.out[dst]
        if link.sock is not None:
            return None
        address = self.peers.get(dst) or endpoints.unix_address(
            rank_socket_path(self.socket_dir, dst)
        )
        try:
            sock = endpoints.connect(address)
        except OSError as exc:
            return f"{address}: {exc}"
        try:
            connect_handshake(sock, self.secret, "channel", rank=self.rank)
        except (OSError, WireError) as exc:
            sock.close()
            return f"{address}: {exc}"
        sock.setblocking(False)
        link.sock = sock
        link.reader = FrameReader()
        if link.ever_connected:
            # Reconnect: whatever was queued for the dead socket is obsolete except the
            # unacknowledged application messages, which go out again in order.
            link.pending = bytearray(b"".join(f for _, f in link.unacked))
            self.stats.resent += len(link.unacked)
        link.ever_connected = True
        link.writing = False
        self.selector.register(sock, selectors.EVENT_READ, ("out", dst))
        return None

    def set_peers(self, peers: dict[int, str]) -> None:
        """Where the peers listen now (the supervisor's table; a restarted peer moved)."""
        self.peers.update(peers)

    def poll_interval_s(self) -> float:
        """Sockets wake the loop's selector themselves: no polling."""
        return float("inf")

    def pump(self) -> None:
        """Nothing to poll (see ``poll_interval_s``)."""

    def connected_all(self) -> bool:
        """True when every outbound channel is connected."""
        return all(link.sock is not None for link in self.out.values())

    # ---------------------------------------------------------------- sending

    def send_app(self, dst: int, seq: int, payload: object, piggyback: object) -> None:
        """Queue an application message (kept until acknowledged)."""
        link = self.out[dst]
        data = self._pack([APP, self.epoch, seq, payload, piggyback])
        link.unacked.append((seq, data))
        link.pending += data
        self.stats.frames_sent += 1

    def send_control(self, dst: int, control: object) -> None:
        """Queue a protocol control message (FIFO with the application messages)."""
        link = self.out[dst]
        link.pending += self._pack([CONTROL, self.epoch, control])

    def flush(self) -> None:
        """Write as much of every channel's queued bytes as the sockets take right now."""
        for link in self.out.values():
            if link.pending and link.sock is not None:
                self._write(link)
        for inb in self.inn.values():
            if inb.sock is None:
                continue
            if inb.ack_due:
                inb.ack_due = False
                inb.ack_out += frame([ACK, inb.acked_seq])
            if inb.ack_out:
                try:
                    sent = inb.sock.send(inb.ack_out)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    continue  # the sender died; its replacement connects anew
                del inb.ack_out[:sent]

    def flush_blocking(self, timeout_s: float) -> bool:
        """Push every queued byte into the kernel (before a checkpoint counts the sends).

        Messages a checkpoint counts as sent must survive this process: if it dies later, a
        receiver that is not rolled back gets them from its socket, not from us. While waiting
        for a full socket we keep reading our inbound sockets, so two ranks flushing to each
        other at once cannot deadlock. False (logged) if the time ran out.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            waiting = [link for link in self.out.values() if link.pending and link.sock]
            for link in waiting:
                self._write(link)
            waiting = [link for link in waiting if link.pending and link.sock is not None]
            if not waiting:
                return True
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                self._log("flush_timeout", dsts=[link.dst for link in waiting])
                return False
            readers = [inb.sock for inb in self.inn.values() if inb.sock is not None]
            writers = [link.sock for link in waiting if link.sock is not None]
            with contextlib.suppress(OSError, ValueError):
                readable, _, _ = select.select(readers, writers, [], min(left_s, 0.05))
                for inb in self.inn.values():
                    if inb.sock is not None and inb.sock in readable:
                        self.on_event(("in", inb.src), selectors.EVENT_READ)

    def _write(self, link: Outbound) -> None:
        sock = link.sock
        assert sock is not None
        try:
            sent = sock.send(link.pending)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lost_outbound(link)
            return
        del link.pending[:sent]
        self._set_writing(link, bool(link.pending))

    def _set_writing(self, link: Outbound, on: bool) -> None:
        if link.sock is None or link.writing == on:
            return
        link.writing = on
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        self.selector.modify(link.sock, events, ("out", link.dst))

    # ---------------------------------------------------------------- receiving

    def on_event(self, tag: tuple[str, int], mask: int) -> None:
        """A registered socket is readable or writable."""
        kind, peer = tag
        if kind == "out":
            link = self.out[peer]
            if mask & selectors.EVENT_WRITE and link.sock is not None:
                self._write(link)
            if mask & selectors.EVENT_READ and link.sock is not None:
                self._read_acks(link)
        else:
            inb = self.inn[peer]
            if inb.sock is None:
                return
            try:
                data = inb.sock.recv(_RECV_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_inbound(inb)
                return
            self._take_inbound(inb, data)

    def _take_inbound(self, inb: Inbound, data: bytes) -> None:
        try:
            frames = inb.reader.feed(data)
            for count, f in enumerate(frames):
                if not is_channel_frame(f):
                    # The frames before it are good and in order: keep them.
                    inb.frames.extend(frames[:count])
                    self.stats.frames_received += count
                    raise malformed(
                        f"frame on channel {inb.src} -> {self.rank}",
                        f"expected [{APP}, epoch, seq, payload, piggyback] or "
                        f"[{CONTROL}, epoch, control], got {describe(f)}",
                    )
        except WireError as exc:
            # That sender's bug: drop its connection (as for any dead peer), never the rank.
            self._log("bad_frame", src=inb.src, why=str(exc))
            self._close_inbound(inb)
            return
        inb.frames.extend(frames)
        self.stats.frames_received += len(frames)

    def _read_acks(self, link: Outbound) -> None:
        sock = link.sock
        assert sock is not None
        try:
            data = sock.recv(_RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost_outbound(link)
            return
        try:
            for f in link.reader.feed(data):
                if not _is_ack(f):
                    raise malformed(
                        f"ack on channel {self.rank} -> {link.dst}",
                        f"expected [{ACK}, seq], got {describe(f)}",
                    )
                upto = f[1]
                while link.unacked and link.unacked[0][0] <= upto:
                    link.unacked.popleft()
        except WireError as exc:
            # The receiver's bug: drop the connection as if it had died. The unacknowledged
            # messages stay queued and are resent when the channel is next reconnected.
            self._log("bad_ack_frame", dst=link.dst, why=str(exc))
            self._lost_outbound(link)

    def _lost_outbound(self, link: Outbound) -> None:
        if link.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(link.sock)
            link.sock.close()
            link.sock = None
        link.writing = False

    def _close_inbound(self, inb: Inbound) -> None:
        if inb.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(inb.sock)
            inb.sock.close()
            inb.sock = None

    def disconnected_outbound(self) -> list[int]:
        """Outbound channels with no live socket."""
        return [d for d, link in self.out.items() if link.sock is None]

    # ---------------------------------------------------------------- handing frames over

    def next_frame(self, src: int) -> list[Any] | None:
        """The next frame from ``src`` that the engine should see, or None.

        Applies the recovery-epoch filter and drops duplicate application messages.
        """
        inb = self.inn[src]
        frames = inb.frames
        while frames:
            f = frames.popleft()
            kind, epoch = f[0], f[1]
            if kind == CONTROL:
                if epoch < self.self_restored_epoch or (
                    inb.rolled_back is not None and epoch < inb.rolled_back[0]
                ):
                    self.stats.stale_dropped += 1
                    continue
                return f
            if kind != APP:
                continue
            seq = int(f[2])
            if (
                inb.rolled_back is not None
                and epoch < inb.rolled_back[0]
                and seq > inb.rolled_back[1]
            ):
                self.stats.stale_dropped += 1
                continue
            if seq < inb.expected_seq:
                self.stats.duplicates_dropped += 1
                continue
            if seq > inb.expected_seq:
                # A message the channel should have carried never came: count it loudly (the
                # checkers will report the loss) rather than stall the channel forever.
                self.stats.gaps += 1
                self._log("channel_gap", src=src, expected=inb.expected_seq, got=seq)
            inb.expected_seq = seq + 1
            inb.acked_seq = seq
            inb.ack_due = True
            return f
        return None

    def has_frames(self) -> bool:
        """True if some inbound channel holds frames not yet handed over."""
        return any(inb.frames for inb in self.inn.values())

    # ---------------------------------------------------------------- recovery

    def restart_outbound(self, sent_cut: dict[int, int]) -> None:
        """This rank was rolled back to having sent ``sent_cut[dst]``: restart every stream.

        Queued messages beyond the cut are void. Call before reconnecting, while the engine
        is not running; ``connect`` then resends the still valid unacknowledged messages.
        """
        for dst, link in self.out.items():
            cut = sent_cut.get(dst, 0)
            link.unacked = deque(item for item in link.unacked if item[0] <= cut)
            # Unsent bytes belong to the undone past, but the socket may hold the first part
            # of one of their frames: rewriting the queue into the same stream would tear it
            # (the receiver would read garbage and drop the channel for good). Start a new
            # stream instead; the receiver drops what it already has.
            link.pending.clear()
            self._lost_outbound(link)

    def begin_recovery(
        self, *, epoch: int, self_restored: bool, rolled_back: dict[int, int]
    ) -> None:
        """Enter recovery epoch ``epoch`` (before the engine resumes and sends anything new).

        A rolled-back rank (``self_restored``) has restarted its streams already
        (``restart_outbound``). ``rolled_back[src]`` is ``sent[self]`` of each rolled-back
        peer's restored checkpoint: older-epoch frames beyond it are void.
        """
        self.epoch = epoch
        if self_restored:
            self.self_restored_epoch = epoch
        for src, inb in self.inn.items():
            if src in rolled_back:
                inb.rolled_back = (epoch, rolled_back[src])

    def set_expected(
        self, received: dict[int, int], *, all_sources: bool, only: dict[int, int]
    ) -> None:
        """After a restore or replay: the next sequence number each channel must carry."""
        for src, inb in self.inn.items():
            if all_sources or src in only:
                inb.expected_seq = received.get(src, 0) + 1
                inb.acked_seq = received.get(src, 0)

    def drain_dead(self, dead: set[int]) -> None:
        """Take what dead peers left in our sockets, then close them (TCP: see the drain)."""
        deadline_s = time.monotonic() + _TCP_DRAIN_S
        for src in dead:
            inb = self.inn.get(src)
            if inb is not None and inb.sock is not None:
                self._drain_and_close_inbound(inb, deadline_s)
        for dst in dead:
            link = self.out.get(dst)
            if link is not None:
                self._lost_outbound(link)

    def close(self) -> None:
        """Close every socket and stop accepting."""
        self._closing = True
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            if endpoints.host_of(self.address) is None:
                with contextlib.suppress(OSError):
                    rank_socket_path(self.socket_dir, self.rank).unlink()
        for link in self.out.values():
            self._lost_outbound(link)
        for inb in self.inn.values():
            self._close_inbound(inb)


def is_channel_frame(f: object) -> bool:
    """``[APP, epoch, seq, payload, piggyback]`` or ``[CONTROL, epoch, control]``.

    What ``next_frame`` and the worker index into, checked once per frame as it arrives (the
    hot path: type tests only). ``bool`` is no ``int`` here: msgpack never turns one into
    the other.
    """
    if type(f) is not list:
        return False
    size = len(f)
    if size == 5:
        return type(f[0]) is int and f[0] == APP and type(f[1]) is int and type(f[2]) is int
    if size == 3:
        return type(f[0]) is int and f[0] == CONTROL and type(f[1]) is int
    return False


def _is_ack(f: object) -> bool:
    """``[ACK, seq]``: a receiver's cumulative acknowledgement."""
    return (
        type(f) is list and len(f) == 2 and type(f[0]) is int and f[0] == ACK and type(f[1]) is int
    )


def is_retryable(exc: OSError) -> bool:
    """Connection errors that mean 'the peer is not listening yet'."""
    return exc.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN)
