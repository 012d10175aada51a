"""snapline's virtual network: an Ethernet switch made of host Unix datagram sockets.

Theory of operation
-------------------
Each guest has one virtio network card whose QEMU backend is ``-netdev dgram``: QEMU binds
``vm-<rank>.sock`` and sends every frame the guest transmits, as one datagram, to
``hub-<rank>.sock``, which the switch binds. The switch reads a frame from port ``r``, looks
up its destination MAC (snapline assigns them, ``mac_of(rank)``) and sends it from hub ``d``'s
socket to ``vm-<d>.sock``; broadcast and multicast frames go to every other port. No frame
passes between guests except through this process, so snapline knows what is in flight.

The cut (``Switch.hold`` ... ``Switch.release``) makes in-flight frames part of a checkpoint:

1. ``hold()``: from now on frames read from guests are queued in the switch, not delivered.
2. ``wait_consumed()``: waits until QEMU has read every frame the switch delivered before the
   hold. A Unix datagram stays charged to its sender's socket until the receiver reads it, so
   the send queue of hub ``d``'s socket (``SIOCOUTQ``) is 0 exactly when QEMU ``d`` has taken
   them all. (A frame QEMU reads while the guest's receive ring is full waits in QEMU's own
   queue, which migration does not save; the guest's TCP retransmits it. With the ping-pong's
   one segment in flight the ring is never full.)
3. The supervisor stops every VM; frames a guest sent before its stop are then in the hub
   sockets, and ``cut()`` reads them all into the queue. The queue is the channel state of the
   cut: frames sent before it, not received before it. They are saved with the checkpoint,
   per destination.
4. ``release()`` delivers the queue in order and ends the hold. After a restore,
   ``hold()``, ``inject(frames)`` and ``release()`` put the saved frames back in flight.

**Buffering.** The kernel queues at most ``net.unix.max_dgram_qlen`` datagrams (10 by
default) on a QEMU's socket; a QEMU that the host does not schedule for a while fills it. The
switch then keeps the frames for that guest in its own backlog (up to ``BACKLOG_MAX``) and sends
them, in order, as the guest reads, as a switch's port buffer would. At ``hold`` the backlogs
join the held queue ahead of later frames: they too are in flight. (Guest to switch needs no
such care: QEMU itself waits when the switch's socket is full.) A frame to a guest whose QEMU
is not running (its socket missing or refusing), or beyond a full backlog, is dropped and
counted (``dropped``), like a cable to a switched-off machine.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
import termios
import threading
import time
from pathlib import Path

Frame = tuple[int, bytes]  # (destination port, Ethernet frame)

MAX_FRAME = 65536
BACKLOG_MAX = 4096
"""Frames the switch keeps for one guest that is not reading (then it drops, and counts)."""
_SIOCOUTQ = termios.TIOCOUTQ


def mac_of(rank: int) -> str:
    """The MAC address snapline gives guest ``rank``'s network card."""
    return f"52:54:00:5e:{rank >> 8:02x}:{rank & 0xFF:02x}"


def ip_of(rank: int) -> str:
    """The IPv4 address guest ``rank`` gets on ``eth0`` (10.77.0.0/24, from .1)."""
    if not 0 <= rank < 250:
        raise ValueError("snapline's virtual network holds at most 250 guests")
    return f"10.77.0.{rank + 1}"


class Switch:
    """The switch between ``n`` guests; sockets live in ``directory`` (see module docstring)."""

    def __init__(self, directory: Path, n: int) -> None:
        self.directory = directory
        self.n = n
        self._macs = {bytes.fromhex(mac_of(r).replace(":", "")): r for r in range(n)}
        self._socks: list[socket.socket] = []
        for rank in range(n):
            path = self.hub_path(rank)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(str(path))
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            self._socks.append(sock)
        self._lock = threading.Lock()
        self._holding = False
        self._queue: list[Frame] = []
        self._backlog: list[collections.deque[bytes]] = [collections.deque() for _ in range(n)]
        self.forwarded = 0
        self.dropped = 0
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, name="snapline-vm-switch", daemon=True)
        self._thread.start()

    def hub_path(self, rank: int) -> Path:
        """The switch's end of guest ``rank``'s cable (QEMU's ``remote.path``)."""
        return self.directory / f"hub-{rank}.sock"

    def vm_path(self, rank: int) -> Path:
        """Guest ``rank``'s end of the cable (QEMU's ``local.path``)."""
        return self.directory / f"vm-{rank}.sock"

    def netdev_args(self, rank: int) -> list[str]:
        """The QEMU arguments that plug guest ``rank`` into this switch."""
        vm = self.vm_path(rank)
        with contextlib.suppress(FileNotFoundError):
            vm.unlink()  # left by a QEMU that was killed
        return [
            "-netdev",
            f"dgram,id=snet,local.type=unix,local.path={vm},"
            f"remote.type=unix,remote.path={self.hub_path(rank)}",
            "-device",
            f"virtio-net-pci,netdev=snet,mac={mac_of(rank)},romfile=",
        ]

    # -- the cut ----------------------------------------------------------------------------
    def hold(self) -> None:
        """Queue frames from now on instead of delivering them (backlogs included)."""
        with self._lock:
            self._holding = True
            for dst, backlog in enumerate(self._backlog):
                self._queue.extend((dst, f) for f in backlog)
                backlog.clear()

    def wait_consumed(self, timeout_s: float) -> bool:
        """Wait until every guest has read all frames delivered to it; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            if all(self._unread(sock) == 0 for sock in self._socks):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)

    def cut(self) -> dict[int, list[bytes]]:
        """Read what guests sent before they stopped; the queue by destination (in order)."""
        with self._lock:
            assert self._holding, "cut() outside hold()"
            for port in range(self.n):
                self._read_port(port)
            out: dict[int, list[bytes]] = {}
            for dst, frame in self._queue:
                out.setdefault(dst, []).append(frame)
            return out

    def inject(self, frames: dict[int, list[bytes]]) -> None:
        """Queue saved in-flight frames (while holding) to be delivered at ``release``."""
        with self._lock:
            assert self._holding, "inject() outside hold()"
            for dst in sorted(frames):
                self._queue.extend((dst, f) for f in frames[dst])

    def release(self) -> None:
        """Deliver the queue in order and stop holding."""
        with self._lock:
            queue, self._queue = self._queue, []
            self._holding = False
            for dst, frame in queue:
                self._send(dst, frame)

    def discard(self) -> None:
        """Forget queued and unread frames (before a restore: they belong to a lost future)."""
        with self._lock:
            self._holding = False
            for port in range(self.n):
                self._read_port(port)
                self._backlog[port].clear()
            self._queue = []

    def close(self) -> None:
        """Stop the switch and remove its sockets."""
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        for rank, sock in enumerate(self._socks):
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.hub_path(rank).unlink()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- internals --------------------------------------------------------------------------
    @staticmethod
    def _unread(sock: socket.socket) -> int:
        buf = fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0\0\0\0")
        return int(struct.unpack("i", buf)[0])

    def _serve(self) -> None:
        fds = [s.fileno() for s in self._socks]
        port_of = {fd: port for port, fd in enumerate(fds)}
        while not self._stop.is_set():
            # A backlog is retried every millisecond (a Unix datagram socket that is not
            # connected cannot be polled for the receiver's room).
            waiting = any(self._backlog)
            ready, _, _ = select.select([*fds, self._wake_r], [], [], 0.001 if waiting else 0.5)
            with self._lock:
                for fd in ready:
                    if fd in port_of:
                        self._read_port(port_of[fd])
                for dst in range(self.n):
                    self._flush(dst)

    def _read_port(self, port: int) -> None:
        # Caller holds the lock.
        sock = self._socks[port]
        while True:
            try:
                frame = sock.recv(MAX_FRAME)
            except BlockingIOError:
                return
            self._route(port, frame)

    def _route(self, src: int, frame: bytes) -> None:
        if len(frame) < 14:
            self.dropped += 1
            return
        dst = self._macs.get(frame[:6])
        targets = [dst] if dst is not None else [p for p in range(self.n) if p != src]
        if frame[0] & 1 == 0 and dst is None:
            targets = []  # unicast to a MAC nobody has
        for target in targets:
            if self._holding:
                self._queue.append((target, frame))
            else:
                self._send(target, frame)

    def _send(self, dst: int, frame: bytes) -> None:
        # Caller holds the lock. Frames wait behind an earlier backlog: order is kept.
        backlog = self._backlog[dst]
        if backlog or not self._try_send(dst, frame):
            if len(backlog) >= BACKLOG_MAX:
                self.dropped += 1
                return
            backlog.append(frame)
            self._flush(dst)

    def _flush(self, dst: int) -> None:
        backlog = self._backlog[dst]
        while backlog and self._try_send(dst, backlog[0]):
            backlog.popleft()

    def _try_send(self, dst: int, frame: bytes) -> bool:
        """True: sent or dropped for good; False: the guest's queue is full, try later."""
        try:
            self._socks[dst].sendto(frame, str(self.vm_path(dst)))
            self.forwarded += 1
            return True
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOBUFS):
                raise
            self.dropped += 1
            return True
