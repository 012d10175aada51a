"""Where a job's sockets listen and how a peer reaches them: Unix paths on one host, TCP beyond.

Theory of operation
-------------------
Channels (rank -> rank) and control links (rank -> supervisor) are byte streams that carry
``wire`` frames after ``wire``'s handshake; what kind of stream does not matter to them. An
*address* names one listening socket as a string, so it can travel in boot data and control
messages and be shown in logs:

* ``unix:/path`` -- a Unix stream socket in the job's 0700 socket directory (one host; the
  local runtime's default; no port to open, and a 0700 directory keeps other users out);
* ``tcp:HOST:PORT`` -- a TCP socket on ``HOST`` (an IPv4 address or name; an IPv6 address in
  brackets). Listening on port 0 picks a free port; ``listen`` returns the address actually
  bound, which is what a rank reports to its supervisor for the peer table.

TCP sockets get ``TCP_NODELAY`` (frames are batched per loop turn already; Nagle's delay
would only add latency to a protocol's round trips) and ``SO_KEEPALIVE``. A connect has a
deadline: a peer whose host is gone must cost a retry, not the minutes of a SYN timeout (and
the rank's loop, which connects, must get back to its heartbeats well within their timeout).
Admission is the same on both: the HMAC handshake with the job's secret (``wire``).
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from snapline.errors import ConfigError

UNIX = "unix"
TCP = "tcp"
#: Longest wait for a TCP connect (the handshake that follows has its own deadline).
CONNECT_TIMEOUT_S = 1.0


def unix_address(path: Path | str) -> str:
    """The address of the Unix socket at ``path``."""
    return f"{UNIX}:{path}"


def tcp_address(host: str, port: int) -> str:
    """The address of TCP port ``port`` on ``host``."""
    shown = f"[{host}]" if ":" in host else host
    return f"{TCP}:{shown}:{port}"


def parse(address: str) -> tuple[str, str, int]:
    """``(kind, host_or_path, port)``; port 0 for a Unix socket. ``ConfigError`` if malformed."""
    kind, sep, rest = address.partition(":")
    if sep and kind == UNIX and rest:
        return UNIX, rest, 0
    if sep and kind == TCP:
        host, sep, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if sep and host and port.isdigit() and int(port) < 65536:
            return TCP, host, int(port)
    raise ConfigError(
        f"socket address {address!r}: expected unix:/path or tcp:HOST:PORT (e.g. tcp:10.0.0.5:0)"
    )


def host_of(address: str) -> str | None:
    """The host a TCP address names; None for a Unix socket."""
    kind, host, _ = parse(address)
    return host if kind == TCP else None


def listen(address: str, backlog: int = 128) -> tuple[socket.socket, str]:
    """A socket listening on ``address``, and the address it is bound to (port 0 resolved)."""
    kind, where, port = parse(address)
    if kind == UNIX:
        with contextlib.suppress(FileNotFoundError):
            Path(where).unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(where)
        sock.listen(backlog)
        return sock, address
    family = socket.AF_INET6 if ":" in where else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((where, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {address}: {exc}; is {where} an address of this host?"
        ) from exc
    return sock, tcp_address(where, sock.getsockname()[1])


def connect(address: str) -> socket.socket:
    """A blocking socket connected to ``address`` (``OSError`` if nobody listens there)."""
    kind, where, port = parse(address)
    if kind == UNIX:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(where)
        except OSError:
            sock.close()
            raise
        return sock
    sock = socket.create_connection((where, port), timeout=CONNECT_TIMEOUT_S)
    tune(sock)
    sock.settimeout(None)
    return sock


def tune(sock: socket.socket) -> None:
    """Options for a connected TCP socket (either end); nothing for a Unix socket."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
