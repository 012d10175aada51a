"""A rank's channels over MPI point-to-point: non-blocking sends, polled receives.

Theory of operation
-------------------
Channel ``src -> dst`` is MPI traffic from rank ``src`` to rank ``dst`` of ``COMM_WORLD``
(snapline rank = MPI rank). Frames are the local runtime's (``[APP, epoch, seq, payload,
piggyback]``, ``[CONTROL, epoch, control]``, msgpack through ``wire``: payloads keep their
Python shape on both engines, and nothing is unpickled). Frames queued for one destination
during one turn of the rank's loop go out together as one ``Isend`` of bytes, tagged
``TAG_APP``; a control frame first sends what is queued before it, then goes alone, tagged
``TAG_CONTROL``. The receiver takes messages with ``Improbe(ANY_SOURCE, ANY_TAG)``: both tags
match that probe, so MPI's non-overtaking rule keeps them in the order each sender sent them,
and a channel stays FIFO across application and control traffic (Chandy-Lamport's markers
need that); the tag only says what a message holds.

What the local transport does and this one does not: acknowledgements, resending and
recovery epochs. MPI ends the whole job when a rank dies, so no channel outlives a failure:
every recovery on this engine restarts every rank from stable storage in a new MPI job, and
no frame of an earlier incarnation can ever arrive. ``flush_blocking`` has nothing to wait
for either: a message a checkpoint counts as sent is recovered from stable storage (recorded
channel state, message logs, or the sender's re-execution) whenever its job dies, never from
a surviving receiver.

MPI has no file descriptor for the rank's selector, so the loop polls: ``poll_interval_s``
is zero for ``_SPIN_S`` after the last message sent or received (a reply usually follows
within microseconds: a round trip must not wait for a sleep), then backs off, doubling up to
``_POLL_MAX_S``, while the rank is idle; ``pump`` takes every message that has arrived and
reaps completed sends.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from snapline.runtime.local.channels import APP, CONTROL, TransportStats, is_channel_frame
from snapline.runtime.local.wire import FrameReader, WireError, describe, malformed, new_packer

TAG_APP = 1
TAG_CONTROL = 2
#: How long after the last traffic the loop polls without sleeping.
_SPIN_S = 0.002
_POLL_FIRST_S = 50e-6
_POLL_MAX_S = 0.002
#: Most MPI messages taken by one ``pump`` (the loop must get back to its timers).
_MESSAGES_PER_PUMP = 1024


class _Inbound:
    __slots__ = ("expected_seq", "frames", "reader", "src")

    def __init__(self, src: int) -> None:
        self.src = src
        self.reader = FrameReader()
        self.frames: deque[list[Any]] = deque()
        self.expected_seq = 1


class MpiTransport:
    """All channels of one MPI rank; driven by the rank's single-threaded loop."""

    def __init__(
        self,
        *,
        comm: Any,
        mpi: Any,
        rank: int,
        inbound: frozenset[int],
        outbound: frozenset[int],
        log: Callable[..., None],
        **_unused: object,
    ) -> None:
        self.rank = rank
        self.epoch = 0
        self.stats = TransportStats()
        self.out: dict[int, bytearray] = {d: bytearray() for d in sorted(outbound)}
        self.inn: dict[int, _Inbound] = {s: _Inbound(s) for s in sorted(inbound)}
        self._comm = comm
        self._mpi = mpi
        self._byte = mpi.BYTE
        self._status = mpi.Status()
        self._log = log
        self._pack = new_packer().pack
        #: Sends in flight: (request, buffer); a buffer must live until its send completes.
        self._sending: deque[tuple[Any, bytes]] = deque()
        #: When traffic last flowed, and how long the loop sleeps once the spin is over.
        self._active_s = 0.0
        self._poll_s = _POLL_FIRST_S

    # ---------------------------------------------------------------- life cycle

    @property
    def address(self) -> str:
        """None to report: MPI ranks reach each other by rank."""
        return ""

    def listen(self) -> None:
        """MPI connects every pair of ranks already."""

    def set_peers(self, peers: dict[int, str]) -> None:
        """No addresses: MPI ranks reach each other by rank."""

    def close(self) -> None:
        """Wait (briefly) for sends in flight; MPI itself is finalized at exit."""
        for _ in range(2000):
            self._reap_sends()
            if not self._sending:
                return
            self.pump()
        self._log("mpi_sends_unfinished", count=len(self._sending))

    def adopt_accepted(self) -> None:
        """No connections to accept."""

    def on_event(self, tag: tuple[str, int], mask: int) -> None:
        """No sockets in the selector."""

    def connect(self, dst: int) -> str | None:
        """Always connected."""
        return None

    def disconnected_outbound(self) -> list[int]:
        """None: MPI channels cannot break without ending the job."""
        return []

    # ---------------------------------------------------------------- sending

    def send_app(self, dst: int, seq: int, payload: object, piggyback: object) -> None:
        """Queue an application message (sent at the end of the loop's turn)."""
        self.out[dst] += self._pack([APP, self.epoch, seq, payload, piggyback])
        self.stats.frames_sent += 1

    def send_control(self, dst: int, control: object) -> None:
        """Send a protocol control message now, after what is queued for ``dst``."""
        self._send(dst, TAG_APP)
        data = self._pack([CONTROL, self.epoch, control])
        self._isend(dst, data, TAG_CONTROL)

    def flush(self) -> None:
        """Start one send per destination with everything queued for it."""
        for dst in self.out:
            self._send(dst, TAG_APP)
        if self._sending:
            self._reap_sends()

    def flush_blocking(self, timeout_s: float) -> bool:
        """Start the sends (see the module docstring: nothing to wait for)."""
        self.flush()
        return True

    def _send(self, dst: int, tag: int) -> None:
        pending = self.out[dst]
        if pending:
            data = bytes(pending)
            pending.clear()
            self._isend(dst, data, tag)

    def _isend(self, dst: int, data: bytes, tag: int) -> None:
        request = self._comm.Isend([data, self._byte], dest=dst, tag=tag)
        self._sending.append((request, data))
        self._active_s = time.monotonic()
        self._poll_s = _POLL_FIRST_S

    def _reap_sends(self) -> None:
        sending = self._sending
        while sending and sending[0][0].Test():
            sending.popleft()

    # ---------------------------------------------------------------- receiving

    def poll_interval_s(self) -> float:
        """How long the loop may sleep before the next ``pump``."""
        if time.monotonic() - self._active_s < _SPIN_S:
            return 0.0
        poll_s = self._poll_s
        self._poll_s = min(2 * poll_s, _POLL_MAX_S)
        return poll_s

    def pump(self) -> None:
        """Take every message that has arrived (up to a bound) into its channel's frames."""
        comm, status, byte = self._comm, self._status, self._byte
        any_source, any_tag = self._mpi.ANY_SOURCE, self._mpi.ANY_TAG
        got = 0
        while got < _MESSAGES_PER_PUMP:
            message = comm.Improbe(any_source, any_tag, status)
            if message is None:
                break
            buffer = bytearray(status.Get_count(byte))
            message.Recv([buffer, byte])
            got += 1
            self._take(status.Get_source(), buffer)
        if got:
            self._active_s = time.monotonic()
            self._poll_s = _POLL_FIRST_S
        if self._sending:
            self._reap_sends()

    def _take(self, src: int, data: bytearray) -> None:
        inb = self.inn.get(src)
        if inb is None:
            self._log("mpi_message_without_channel", src=src, bytes=len(data))
            return
        try:
            frames = inb.reader.feed(bytes(data))
            for f in frames:
                if not is_channel_frame(f):
                    raise malformed(
                        f"frame on channel {src} -> {self.rank}",
                        f"expected [{APP}, epoch, seq, payload, piggyback] or "
                        f"[{CONTROL}, epoch, control], got {describe(f)}",
                    )
        except WireError as exc:
            # A peer's bug: on MPI there is no connection to drop, so the rank fails (and the
            # job is relaunched from stable storage) rather than run on with a broken channel.
            self._log("bad_frame", src=src, why=str(exc))
            raise
        inb.frames.extend(frames)
        self.stats.frames_received += len(frames)

    def next_frame(self, src: int) -> list[Any] | None:
        """The next frame from ``src`` for the engine, or None (duplicates dropped)."""
        inb = self.inn[src]
        frames = inb.frames
        while frames:
            f = frames.popleft()
            if f[0] != APP:
                return f
            seq = int(f[2])
            if seq < inb.expected_seq:
                self.stats.duplicates_dropped += 1
                continue
            if seq > inb.expected_seq:
                self.stats.gaps += 1
                self._log("channel_gap", src=src, expected=inb.expected_seq, got=seq)
            inb.expected_seq = seq + 1
            return f
        return None

    def has_frames(self) -> bool:
        """True if some channel holds frames not yet handed over."""
        return any(inb.frames for inb in self.inn.values())

    # ---------------------------------------------------------------- recovery

    def restart_outbound(self, sent_cut: dict[int, int]) -> None:
        """A restore (at the start of a relaunched job): nothing queued survives it."""
        for pending in self.out.values():
            pending.clear()

    def begin_recovery(
        self, *, epoch: int, self_restored: bool, rolled_back: dict[int, int]
    ) -> None:
        """Frames carry the epoch for the trace; no older epoch exists in this MPI job."""
        self.epoch = epoch

    def set_expected(
        self, received: dict[int, int], *, all_sources: bool, only: dict[int, int]
    ) -> None:
        """After a restore or replay: the next sequence number each channel must carry."""
        for src, inb in self.inn.items():
            if all_sources or src in only:
                inb.expected_seq = received.get(src, 0) + 1

    def drain_dead(self, dead: set[int]) -> None:
        """Never called with a dead peer on MPI: a death ends every rank."""
