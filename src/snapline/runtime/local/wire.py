"""Frames on the local runtime's sockets, and the handshake that admits only the job's processes.

Theory of operation
-------------------
Every socket of a job (rank-to-rank channels and rank-to-supervisor control links) carries a
stream of *frames*, one msgpack object each (msgpack is self-delimiting, so the stream needs no
length prefixes and msgpack's C unpacker does the framing). msgpack is fast, safe (decoding
never runs code) and already a dependency. The handshake, which runs before anything else on a
socket, uses 4-byte length-prefixed frames so it can read exactly one message at a time.
Payloads keep their Python shape: tuples and numpy arrays travel as msgpack extension
types, so ``(1, 2)`` arrives as a tuple and an array arrives as an array of the same dtype
and shape (object arrays are refused).

Admission. A job has a random 32-byte secret that never touches disk: the supervisor hands it
to each worker through the worker's stdin. Whoever accepts a connection sends a fresh 32-byte
challenge; the connecting side answers with ``HMAC-SHA256(secret, "snapline-v1" | purpose |
challenge | its own nonce | hello)`` and its own nonce, and the acceptor proves it knows the
secret too by answering the connector's nonce. Digests are compared with
``hmac.compare_digest``. A stranger (no secret, wrong secret, garbage) is disconnected before
any of its bytes reach the job. Sockets also live in a 0700 directory, so other users cannot
even connect; the HMAC keeps out other jobs and other programs of the same user.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from snapline.errors import ConfigError, SnaplineError

_LEN = struct.Struct("<I")
#: Largest frame accepted; a guard against a corrupt or hostile length prefix (1 GiB).
MAX_FRAME_BYTES = 1 << 30
_EXT_TUPLE = 1
_EXT_NDARRAY = 2
_MAGIC = b"snapline-v1"
HANDSHAKE_TIMEOUT_S = 2.0


class WireError(SnaplineError):
    """A peer sent bytes that are not a valid frame, or failed the handshake."""


def _default(obj: object) -> object:
    if isinstance(obj, tuple):
        return msgpack.ExtType(_EXT_TUPLE, pack(list(obj)))
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise ConfigError("numpy arrays of Python objects cannot be sent; use plain dtypes")
        arr = np.ascontiguousarray(obj)
        header = msgpack.packb([arr.dtype.str, list(arr.shape)])
        return msgpack.ExtType(_EXT_NDARRAY, _LEN.pack(len(header)) + header + arr.tobytes())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, frozenset | set):
        return sorted(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, list):  # a list subclass
        return list(obj)
    raise ConfigError(
        f"cannot send an object of type {type(obj).__name__}: messages carry plain data "
        "(None, bool, int, float, str, bytes, lists, tuples, str/int-keyed dicts) and numpy arrays"
    )


def _ext_hook(code: int, data: bytes) -> object:
    if code == _EXT_TUPLE:
        return tuple(unpack(data))
    if code == _EXT_NDARRAY:
        (hlen,) = _LEN.unpack_from(data)
        dtype, shape = msgpack.unpackb(data[4 : 4 + hlen])
        if np.dtype(dtype).hasobject:
            raise WireError("refusing a numpy array of Python objects")
        return np.frombuffer(data[4 + hlen :], dtype=np.dtype(dtype)).reshape(shape).copy()
    raise WireError(f"unknown msgpack extension type {code}")


def pack(obj: object) -> bytes:
    """Encode ``obj`` (plain data, tuples, numpy arrays) as msgpack."""
    data: bytes = msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)
    return data


def unpack(data: bytes | memoryview) -> Any:
    """Decode what ``pack`` produced (never executes code)."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, strict_map_key=False, raw=False)


def frame(obj: object) -> bytes:
    """One stream frame holding ``obj``: msgpack is self-delimiting, so no length prefix."""
    return pack(obj)


def new_packer() -> Any:
    """A reusable msgpack packer for frames (one per thread: packers are not thread-safe)."""
    return msgpack.Packer(default=_default, strict_types=True, use_bin_type=True, autoreset=True)


class FrameReader:
    """Splits a byte stream into decoded frames (bytes may arrive in any pieces).

    msgpack's streaming unpacker does the framing in C; a frame larger than
    ``MAX_FRAME_BYTES`` (a corrupt or hostile stream) raises ``WireError``.
    """

    __slots__ = ("_unpacker",)

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(
            ext_hook=_ext_hook,
            strict_map_key=False,
            raw=False,
            max_buffer_size=MAX_FRAME_BYTES,
        )

    def feed(self, data: bytes) -> list[Any]:
        """Add received bytes; return every frame now complete, in order."""
        try:
            self._unpacker.feed(data)
            return list(self._unpacker)
        except (msgpack.UnpackException, ValueError, TypeError) as exc:
            raise WireError(f"undecodable frame: {exc}") from exc


def send_frame(sock: socket.socket, obj: object) -> None:
    """Write one length-prefixed frame on a blocking socket (handshakes only)."""
    body = pack(obj)
    sock.sendall(_LEN.pack(len(body)) + body)


def recv_frame(sock: socket.socket) -> Any:
    """Read exactly one frame from a blocking socket (used only during handshakes)."""
    header = _recv_exact(sock, 4)
    (size,) = _LEN.unpack(header)
    if size > 64 * 1024:
        raise WireError(f"handshake frame of {size} bytes is too large")
    return unpack(_recv_exact(sock, size))


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        got = sock.recv(size - len(chunks))
        if not got:
            raise WireError("connection closed during the handshake")
        chunks += got
    return bytes(chunks)


def _mac(secret: bytes, purpose: str, *parts: bytes) -> bytes:
    h = hmac.new(secret, _MAGIC + purpose.encode(), hashlib.sha256)
    for part in parts:
        h.update(_LEN.pack(len(part)))
        h.update(part)
    return h.digest()


def accept_handshake(sock: socket.socket, secret: bytes, purpose: str) -> dict[str, Any]:
    """Authenticate the peer that connected to us; return its hello, or raise ``WireError``.

    Runs on a blocking socket with a short timeout so a silent stranger cannot hold us.
    """
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        challenge = os.urandom(32)
        send_frame(sock, {"challenge": challenge})
        reply = recv_frame(sock)
        if not isinstance(reply, dict):
            raise WireError("handshake reply is not a map")
        hello, nonce, mac = reply.get("hello"), reply.get("nonce"), reply.get("mac")
        if not isinstance(hello, dict) or not isinstance(nonce, bytes):
            raise WireError("handshake reply lacks hello or nonce")
        if not isinstance(mac, bytes):
            raise WireError("handshake reply lacks its MAC")
        expected = _mac(secret, purpose, challenge, nonce, pack(hello))
        if not hmac.compare_digest(mac, expected):
            raise WireError("handshake MAC mismatch: the peer does not hold this job's secret")
        send_frame(sock, {"mac": _mac(secret, purpose + "/accept", nonce, challenge)})
        return hello
    except (OSError, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireError(f"handshake failed: {exc}") from exc
    finally:
        sock.settimeout(None)


def connect_handshake(
    sock: socket.socket, secret: bytes, purpose: str, hello: dict[str, Any]
) -> None:
    """Prove we hold the job's secret to the acceptor and check that it holds it too."""
    sock.settimeout(HANDSHAKE_TIMEOUT_S)
    try:
        first = recv_frame(sock)
        challenge = first.get("challenge") if isinstance(first, dict) else None
        if not isinstance(challenge, bytes):
            raise WireError("acceptor sent no challenge")
        nonce = os.urandom(32)
        mac = _mac(secret, purpose, challenge, nonce, pack(hello))
        send_frame(sock, {"hello": hello, "nonce": nonce, "mac": mac})
        answer = recv_frame(sock)
        theirs = answer.get("mac") if isinstance(answer, dict) else None
        expected = _mac(secret, purpose + "/accept", nonce, challenge)
        if not isinstance(theirs, bytes) or not hmac.compare_digest(theirs, expected):
            raise WireError("the acceptor does not hold this job's secret")
    except (OSError, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireError(f"handshake failed: {exc}") from exc
    finally:
        sock.settimeout(None)
