"""The supervisor's process management: spawning rank workers and noticing when they fail.

Theory of operation
-------------------
The ``snapline run`` process is the supervisor. It spawns one worker process per rank
(``python -m snapline.runtime.local.worker``; boot data and the job secret go through the
child's stdin), accepts each worker's authenticated control connection on
``<socket_dir>/control.sock`` (and on any address an engine adds with ``listen_also``: TCP
for ranks on other hosts), and is the job's failure detector:

* **Exit** -- a worker that exits or is killed (``kill -9`` from anywhere) is noticed at once:
  the supervisor holds a pidfd for each child in its selector (readable the moment the child
  dies) and also sees its control socket close.
* **Hang** -- a worker that stops sending heartbeats (an endless handler, ``SIGSTOP``) for
  ``heartbeat_timeout_s`` is declared failed and killed with SIGKILL, so a hang becomes a crash
  and can never come back to life behind the recovery's back.

Workers are children of the supervisor so their exit is observable without polling; if the
supervisor dies the workers see their control link close and exit, so nothing is orphaned.
This module only observes and reports; ``job`` decides what to do about failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapline.runtime.local.control import FROM_RANK, check_from_rank
from snapline.runtime.local.endpoints import listen as listen_endpoint
from snapline.runtime.local.endpoints import unix_address
from snapline.runtime.local.wire import (
    FrameReader,
    Hello,
    WireError,
    frame,
    pack,
    serve_handshakes,
)

#: How long a freshly spawned worker may take to connect before it counts as failed.
STARTUP_TIMEOUT_S = 30.0


@dataclass(slots=True)
class RankSlot:
    """The supervisor's view of one rank's current worker process."""

    rank: int
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    pidfd: int | None = None
    sock: socket.socket | None = None
    reader: FrameReader = field(default_factory=FrameReader)
    out: bytearray = field(default_factory=bytearray)
    #: True while the selector also waits for ``sock`` to take more of ``out``.
    writing: bool = False
    state: str = "starting"
    alive: bool = False
    last_hb_s: float = 0.0
    counters: dict[str, Any] = field(default_factory=dict)
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    restarts: int = 0
    incarnation: int = 0
    recent_failures: int = 0
    last_start_s: float = 0.0
    stopped: bool = False
    fatal: str | None = None
    #: The current worker's ``fatal`` message (kind, user traceback, signature), if it sent one.
    fatal_report: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    #: Why the supervisor killed the current worker, if it did (reported as the failure's cause).
    kill_reason: str | None = None
    #: Why the last worker of this rank failed (``exited``, ``no heartbeat``, a kill reason...).
    failure: str | None = None
    #: Where the current worker listens for its peers' channels (from its hello).
    address: str | None = None
    #: The host it runs on, where the engine tells (a Ray node's address), for ``ps``.
    node: str | None = None


class Supervisor:
    """Spawns workers, carries control messages, detects exits and hangs."""

    #: True when one death ends every rank (MPI): a restart is then a relaunch of the job.
    restarts_whole_job = False

    def __init__(
        self,
        *,
        n: int,
        socket_dir: Path,
        store_dir: Path,
        secret: bytes,
        heartbeat_timeout_s: float,
        log: Callable[..., None],
    ) -> None:
        self.n = n
        self.socket_dir = socket_dir
        self.store_dir = store_dir
        self.secret = secret
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.log = log
        self.slots = [RankSlot(r) for r in range(n)]
        self.sel = selectors.DefaultSelector()
        self.dead: list[int] = []
        self._accepted: queue.Queue[tuple[socket.socket, Hello]] = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", -1))
        self._closing = False
        self.rejected_connections = 0
        self._listeners: list[socket.socket] = []
        #: Where workers connect their control links (``endpoints``; ``listen_also`` adds more).
        self.control_address = self.listen_also(unix_address(socket_dir / "control.sock"))

    # ------------------------------------------------------------------ connections

    def listen_also(self, address: str) -> str:
        """Accept control links on ``address`` too (e.g. TCP for ranks on other hosts).

        Returns the address bound (a TCP port 0 resolved), for the workers' boot data.
        """
        listener, bound = listen_endpoint(address, backlog=256)
        self._listeners.append(listener)
        threading.Thread(
            target=self._accept_loop, args=(listener,), name="snapline-control", daemon=True
        ).start()
        return bound

    def _accept_loop(self, listener: socket.socket) -> None:
        serve_handshakes(
            listener,
            secret=self.secret,
            purpose="control",
            admit=self._admit,
            reject=self._reject,
            closing=lambda: self._closing,
        )

    def _admit(self, conn: socket.socket, hello: Hello) -> None:
        """Queue an authenticated control connection for the loop (acceptor thread)."""
        self._accepted.put((conn, hello))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _reject(self, why: str) -> None:
        self.rejected_connections += 1
        self.log("control_rejected", why=why)

    def _adopt(self) -> None:
        while True:
            try:
                conn, hello = self._accepted.get_nowait()
            except queue.Empty:
                return
            rank, pid = hello.rank, hello.pid
            slot = self.slots[rank] if 0 <= rank < self.n else None
            if slot is None or not self._expects(slot, pid):
                self.log("control_unexpected", rank=rank, pid=pid)
                conn.close()
                continue
            conn.setblocking(False)
            if slot.sock is not None:
                self._drop_sock(slot)
                slot.out.clear()  # the rest of a frame torn by the old link would corrupt this one
            slot.sock = conn
            slot.reader = FrameReader()
            slot.writing = False
            slot.last_hb_s = time.monotonic()
            self.sel.register(conn, selectors.EVENT_READ, ("ctl", slot.rank))

    def _expects(self, slot: RankSlot, pid: int) -> bool:
        """True when ``pid`` is the worker this supervisor started for ``slot``."""
        return slot.alive and slot.pid == pid

    def _drop_sock(self, slot: RankSlot) -> None:
        if slot.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(slot.sock)
            slot.sock.close()
            slot.sock = None
        slot.writing = False

    # ------------------------------------------------------------------ processes

    def spawn(self, rank: int, boot: dict[str, Any]) -> None:
        """Start a worker for ``rank`` (its boot data and the secret go through stdin)."""
        slot = self.slots[rank]
        logs = self.store_dir / "logs"
        with open(logs / f"rank-{rank}.stderr", "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "snapline.runtime.local.worker"],
                stdin=subprocess.PIPE,
                stdout=err,
                stderr=err,
                close_fds=True,
            )
        assert proc.stdin is not None
        proc.stdin.write(pack(boot))
        proc.stdin.close()
        self.starting(slot, proc.pid)
        slot.proc = proc
        self.watch_pid(slot)
        self.log("spawned", rank=rank, pid=proc.pid)

    def launch(self) -> None:
        """Start what ``spawn`` queued (each ``spawn`` here starts its worker at once)."""

    def starting(self, slot: RankSlot, pid: int | None) -> None:
        """Reset ``slot`` for a worker being started (``pid`` None: not known yet)."""
        slot.proc = None
        slot.pid = pid
        slot.alive = True
        slot.state = "starting"
        slot.counters = {}
        slot.replies = {}
        slot.stopped = False
        slot.kill_reason = None
        slot.fatal_report = None
        slot.address = None
        slot.node = None
        slot.last_start_s = time.monotonic()
        slot.last_hb_s = time.monotonic()

    def watch_pid(self, slot: RankSlot) -> None:
        """Put a pidfd of ``slot``'s worker in the selector: its exit is seen at once."""
        assert slot.pid is not None
        try:
            slot.pidfd = os.pidfd_open(slot.pid)
            self.sel.register(slot.pidfd, selectors.EVENT_READ, ("pid", slot.rank))
        except (AttributeError, OSError):
            slot.pidfd = None  # fall back to polling waitpid in check_children

    def send(self, rank: int, msg: dict[str, Any]) -> None:
        """Queue a control message to ``rank`` (dropped if it is not connected)."""
        slot = self.slots[rank]
        if slot.sock is None or not slot.alive:
            return
        slot.out += frame(msg)
        self._flush(slot)

    def _flush(self, slot: RankSlot) -> None:
        """Write what the socket takes now; wait for write readiness to send the rest.

        A control message can be far larger than the socket buffer (a ``restore`` carries the
        messages a rank must replay, a ``resume`` those it must re-receive): whatever one
        ``send`` leaves over must go out as soon as the worker reads, not wait for the next
        message to this rank, which never comes while we wait for the reply to this one.
        """
        sock = slot.sock
        if sock is None:
            return
        if slot.out:
            try:
                sent = sock.send(slot.out)
            except BlockingIOError:
                sent = 0
            except OSError:
                return  # the worker died: its pidfd (or the closed link) reports it
            del slot.out[:sent]
        want = bool(slot.out)
        if want != slot.writing:
            slot.writing = want
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            with contextlib.suppress(KeyError, ValueError):
                self.sel.modify(sock, events, ("ctl", slot.rank))

    def kill(self, rank: int, why: str) -> None:
        """SIGKILL the worker of ``rank`` (its death is then noticed like any other)."""
        pid = self.slots[rank].pid
        if pid is not None and self.slots[rank].alive:
            self.slots[rank].kill_reason = why
            self.log("kill", rank=rank, pid=pid, why=why)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _sigkill(self, slot: RankSlot) -> None:
        """SIGKILL ``slot``'s worker through its pidfd (a pid alone could name a reused process)."""
        if slot.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(slot.pidfd, signal.SIGKILL)
        elif slot.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(slot.pid, signal.SIGKILL)

    def _reap(self, rank: int, why: str) -> None:
        slot = self.slots[rank]
        if not slot.alive:
            return
        slot.alive = False
        code: int | None = None
        if slot.proc is not None:
            # SIGKILL first: a hung (SIGSTOPped) worker must not survive its replacement.
            with contextlib.suppress(ProcessLookupError):
                slot.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = slot.proc.wait(timeout=5.0)
        if slot.pidfd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(slot.pidfd)
            os.close(slot.pidfd)
            slot.pidfd = None
        # The exit may be noticed before the last frames were read: a worker that fails sends
        # why (``fatal``) just before it exits, and that is what the user needs to see.
        self._drain(slot)
        self._drop_sock(slot)
        slot.out.clear()
        slot.state = "finished" if slot.stopped else "failed"
        if not slot.stopped:
            if slot.kill_reason is not None:
                why = f"killed: {slot.kill_reason}"
            slot.failure = why
            self.dead.append(rank)
            self.log("rank_failed", rank=rank, pid=slot.pid, exit_code=code, why=why)

    # ------------------------------------------------------------------ polling

    def poll(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for anything, handle it, and check for hangs."""
        for key, mask in self.sel.select(max(0.0, timeout_s)):
            kind, rank = key.data
            if kind == "wake":
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
            elif kind == "pid":
                self._reap(rank, "exited")
            elif kind == "other":
                self._on_other(rank)
            else:
                if mask & selectors.EVENT_WRITE:
                    self._flush(self.slots[rank])
                if mask & selectors.EVENT_READ:
                    self._read(self.slots[rank])
        self._adopt()
        self.check_children()

    def _on_other(self, token: int) -> None:
        """A selector key an engine registered as ``("other", token)`` is ready."""

    def check_children(self) -> None:
        """Notice exits (when pidfds are unavailable) and hangs."""
        now = time.monotonic()
        for slot in self.slots:
            if not slot.alive:
                continue
            if slot.proc is not None and slot.pidfd is None and slot.proc.poll() is not None:
                self._reap(slot.rank, "exited")
            elif now - slot.last_hb_s > self._silence_limit_s(slot) and not slot.stopped:
                self.log("hang_detected", rank=slot.rank, silent_s=round(now - slot.last_hb_s, 3))
                self._reap(slot.rank, "no heartbeat")

    def _silence_limit_s(self, slot: RankSlot) -> float:
        # Until its control link is up a worker is still importing and booting, which takes
        # seconds on a loaded machine; heartbeats are only expected after that.
        return self.heartbeat_timeout_s if slot.sock is not None else STARTUP_TIMEOUT_S

    def _read(self, slot: RankSlot) -> None:
        sock = slot.sock
        if sock is None:
            return
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_sock(slot)
            if slot.alive and not slot.stopped:
                self._reap(slot.rank, "control link closed")
            return
        slot.last_hb_s = time.monotonic()
        try:
            self._take(slot, data)
        except WireError as exc:
            # Undecodable or wrongly shaped: a bug in that worker. It fails like a crash (and
            # is recovered like one); nothing after the bad frame is read, so the socket goes
            # first and ``_reap`` does not drain it.
            self.log("bad_control_frame", rank=slot.rank, why=str(exc))
            self._drop_sock(slot)
            self._reap(slot.rank, "bad control frame")

    def _take(self, slot: RankSlot, data: bytes) -> None:
        """Handle every message ``data`` completes, in order.

        ``WireError`` at the first frame that does not decode or has the wrong shape (those
        before it are handled): the link is unusable from there on.
        """
        for msg in slot.reader.feed(data):
            self._handle(slot, check_from_rank(msg))

    def _handle(self, slot: RankSlot, msg: dict[str, Any]) -> None:
        op = msg["op"]
        if op == "hb":
            slot.counters = msg
        elif op == "hello":
            slot.address = msg.get("address")
            slot.node = msg.get("node", slot.node)
            self.log("rank_listens", rank=slot.rank, address=slot.address, node=slot.node)
        elif op == "fatal":
            slot.fatal = str(msg.get("error"))
            slot.fatal_report = msg
            self.log("rank_fatal", rank=slot.rank, error=slot.fatal)
        elif op == "result":
            slot.result = msg
        elif op in FROM_RANK:
            slot.replies[op] = msg
        else:
            self.log("unknown_control", rank=slot.rank, op=op)

    def _drain(self, slot: RankSlot) -> None:
        """Handle what a dead worker's control link still holds (never blocks)."""
        sock = slot.sock
        while sock is not None:
            try:
                data = sock.recv(1 << 20)
            except OSError:  # BlockingIOError included: nothing more
                return
            if not data:
                return
            try:
                self._take(slot, data)
            except WireError as exc:
                self.log("bad_control_frame", rank=slot.rank, why=str(exc))
                return

    def reap_finished(self, timeout_s: float) -> None:
        """Wait for workers that reported their result to exit."""
        for slot in self.slots:
            if slot.alive and slot.stopped and slot.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    slot.proc.wait(timeout=timeout_s)
                if slot.proc.poll() is not None:
                    self._reap(slot.rank, "finished")

    def peer_table(self) -> dict[int, str]:
        """Where each live rank listens (sent with every ``connect``: a restarted rank moved)."""
        return {s.rank: s.address for s in self.slots if s.alive and s.address is not None}

    def take_dead(self) -> list[int]:
        """Ranks found dead since the last call."""
        dead, self.dead = self.dead, []
        return dead

    def close(self) -> None:
        """Kill whatever still runs and release sockets."""
        self._closing = True
        for slot in self.slots:
            if slot.alive:
                slot.stopped = True
                self.kill(slot.rank, "supervisor closing")
                self._reap(slot.rank, "closing")
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                listener.close()
        with contextlib.suppress(OSError):
            (self.socket_dir / "control.sock").unlink()
        self._wake_r.close()
        self._wake_w.close()
        self.sel.close()


def write_log_line(fd: int, event: str, **fields: object) -> None:
    """One JSON line in the supervisor's structured log."""
    line = {"ts": time.time(), "who": "supervisor", "event": event, **fields}
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(line, default=repr) + "\n").encode())
