"""Frames on the local runtime's sockets, and the handshake that admits only the job's processes.

Theory of operation
-------------------
Every socket of a job (rank-to-rank channels and rank-to-supervisor control links) carries a
stream of *frames*, one msgpack object each (msgpack is self-delimiting, so the stream needs no
length prefixes and msgpack's C unpacker does the framing). msgpack is fast, safe (decoding
never runs code) and already a dependency. Payloads keep their Python shape: tuples and numpy
arrays travel as msgpack extension types, so ``(1, 2)`` arrives as a tuple and an array
arrives as an array of the same dtype and shape (object arrays are refused).

Admission. A job has a random 32-byte secret that never touches disk: the supervisor hands it
to each worker through the worker's stdin. Before anything else on a socket, the two ends run
a handshake made of three fixed-size binary messages (little-endian):

==========  =====================  ===============================================================
CHALLENGE   acceptor -> connector  ``"SNAPLINE"`` | version u32 | challenge[32]           44 bytes
RESPONSE    connector -> acceptor  ``"SNAPLINE"`` | version u32 | nonce[32] | rank u32 |
                                   pid u32 | mac[32]                                     84 bytes
CONFIRM     acceptor -> connector  mac[32]                                               32 bytes
==========  =====================  ===============================================================

With ``[x]`` standing for ``x`` prefixed by its u32 length and ``hello`` for the 8 bytes
``rank | pid``, the RESPONSE's mac is ``HMAC-SHA256(secret, "snapline-handshake-v2" | [purpose]
| [challenge] | [nonce] | [hello])`` and proves the connector holds the secret; CONFIRM is
the same HMAC over ``[purpose + "/accept"] | [nonce] | [challenge] | [hello]`` and proves the
acceptor holds it too. The purpose (``channel`` or ``control``) keeps a response for one kind
of socket from being replayed at the other; fresh random challenges and nonces keep any
response from being replayed at all. Digests are compared with ``hmac.compare_digest``.

The acceptor reads exactly 84 bytes, under one overall deadline (a slow or silent stranger
holds it for at most ``HANDSHAKE_TIMEOUT_S``), and slices them at fixed offsets: no general
decoder ever sees a byte from a peer that has not proven it holds the secret, and the hello
(rank, pid) is read only after the MAC verified. Any failure closes that one connection and
is logged; the acceptor loop (``serve_handshakes``) survives anything a single connection can
do and keeps accepting. A stranger (no secret, wrong secret, garbage) is disconnected before
any of its bytes reach the job. Sockets also live in a 0700 directory, so other users cannot
even connect; the HMAC keeps out other jobs and other programs of the same user.

Limits on authenticated traffic. A peer that holds the secret is trusted not to lie, but a bug
must still give a clear error, never a crash: frames are at most ``MAX_FRAME_BYTES``; tuple and
array extensions may nest at most ``MAX_EXT_DEPTH`` deep (each level is a nested call into the
C unpacker, so unbounded nesting would overflow the C stack); an array's header must name a
plain numpy dtype (no objects, no zero-size items) and a shape whose element count matches the
bytes that follow. ``pack`` refuses what ``unpack`` would refuse, so an honest sender learns of
the limit at the sender, and a bad frame is a ``WireError`` that the runtime treats as that
connection's failure.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import hmac
import math
import os
import re
import reprlib
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from snapline.errors import ConfigError, SnaplineError
from snapline.runtime.local.endpoints import tune

_LEN = struct.Struct("<I")
#: Largest frame accepted; a guard against a corrupt or hostile length prefix (1 GiB).
MAX_FRAME_BYTES = 1 << 30
#: Deepest nesting of tuples and numpy arrays (msgpack extensions) in one message. Every level
#: costs a nested C unpacker call with ~40 KiB of C stack (about 200 levels overflowed the
#: 8 MiB main stack), so 32 levels stay near 1.3 MiB, inside any default Linux thread stack.
MAX_EXT_DEPTH = 32
#: Most dimensions an array may declare (numpy's own limit is 64 on numpy 2, 32 on numpy 1).
MAX_ARRAY_DIMS = 32
_EXT_TUPLE = 1
_EXT_NDARRAY = 2

HANDSHAKE_TIMEOUT_S = 2.0
HANDSHAKE_VERSION = 2
_HANDSHAKE_MAGIC = b"SNAPLINE"
_MAC_LABEL = b"snapline-handshake-v2"
_PREAMBLE = struct.Struct("<8sI")  # magic, version: how CHALLENGE and RESPONSE begin
_CHALLENGE = struct.Struct("<8sI32s")
_RESPONSE = struct.Struct("<8sI32sII32s")
_HELLO = struct.Struct("<II")
#: Where the hello (rank, pid) sits in a RESPONSE: it is MACed as these raw bytes.
_HELLO_IN_RESPONSE = slice(_RESPONSE.size - 32 - _HELLO.size, _RESPONSE.size - 32)
_CONFIRM_BYTES = 32
_U32_MAX = (1 << 32) - 1
#: accept() errors that concern one pending connection or a passing shortage, not the listener.
_TRANSIENT_ACCEPT_ERRNOS = frozenset(
    {errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EPROTO}
)
#: What ``numpy.dtype.str`` produces for plain dtypes: byte order, kind, item size, time unit.
_DTYPE_STR = re.compile(r"[<>|][biufcmMSUV][0-9]{1,9}(\[[0-9]{0,9}[a-zA-Z]{1,2}\])?")


class WireError(SnaplineError):
    """A peer sent bytes that are not a valid frame, a frame of the wrong shape, or failed the
    handshake."""


_short_repr = reprlib.Repr()
_short_repr.maxstring = 40
_short_repr.maxother = 40


def describe(value: object) -> str:
    """``value`` for an error message: its type and a short repr (a bad frame may be huge)."""
    return f"{type(value).__name__} {_short_repr.repr(value)}"


def malformed(what: str, why: str) -> WireError:
    """The error for a frame that decoded but does not have the shape its reader needs.

    Decoding proves nothing about shape: an authenticated peer with a bug can send any plain
    data, and the reader checks the shape before it indexes into it (see ``channels`` and
    ``control``).
    """
    return WireError(
        f"malformed {what}: {why}. The sending process has a bug, or runs another snapline "
        "version: run every process of a job from one installation, and report the bug"
    )


@dataclass(frozen=True, slots=True)
class Hello:
    """Who a connecting process says it is; believed only once its handshake MAC verified."""

    rank: int
    #: The connecting worker's pid (the supervisor matches it to the process it spawned); 0
    #: where nobody needs it (rank-to-rank channels).
    pid: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.rank <= _U32_MAX and 0 <= self.pid <= _U32_MAX):
            raise ConfigError(f"hello fields must fit in 32 unsigned bits, got {self!r}")


# ---------------------------------------------------------------------------------- encoding


def _too_deep_to_send() -> ConfigError:
    return ConfigError(
        f"a message nests tuples/arrays more than {MAX_EXT_DEPTH} deep; flatten it "
        "(e.g. use lists, which have no such limit below msgpack's own)"
    )


@functools.lru_cache(maxsize=256)
def _sendable_dtype(dtype: np.dtype[Any]) -> str:
    """``dtype.str`` if arrays of ``dtype`` may travel (what ``_wire_dtype`` accepts)."""
    if dtype.hasobject:
        raise ConfigError("numpy arrays of Python objects cannot be sent; use plain dtypes")
    if dtype.itemsize == 0 or not _DTYPE_STR.fullmatch(dtype.str):
        raise ConfigError(
            f"numpy arrays of dtype {dtype} cannot be sent; use a plain dtype "
            "(bool, ints, floats, complex, datetimes, bytes, str, void) of nonzero size"
        )
    return dtype.str


@functools.lru_cache(maxsize=256)
def _wire_dtype(dtype_str: str) -> np.dtype[Any]:
    """The dtype an array header names, if it is a plain one (cached: headers repeat)."""
    if not _DTYPE_STR.fullmatch(dtype_str):
        if dtype_str == "|O":
            raise WireError("refusing a numpy array of Python objects")
        raise WireError(f"array header names no plain numpy dtype: {dtype_str!r}")
    dtype = np.dtype(dtype_str)
    if dtype.hasobject or dtype.itemsize == 0:
        raise WireError(f"refusing a numpy array of dtype {dtype_str!r}")
    return dtype


def _encoder(depth: int) -> Callable[[object], object]:
    """The packer's ``default`` for objects inside ``depth`` enclosing extensions."""

    def default(obj: object) -> object:
        if isinstance(obj, tuple):
            if depth >= MAX_EXT_DEPTH:
                raise _too_deep_to_send()
            body = msgpack.packb(
                list(obj), default=_ENCODERS[depth + 1], strict_types=True, use_bin_type=True
            )
            return msgpack.ExtType(_EXT_TUPLE, body)
        if isinstance(obj, np.ndarray):
            if depth >= MAX_EXT_DEPTH:
                raise _too_deep_to_send()
            dtype_str = _sendable_dtype(obj.dtype)
            # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
            arr = obj if obj.flags.c_contiguous else obj.copy(order="C")
            header = msgpack.packb([dtype_str, list(arr.shape)])
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
            "(None, bool, int, float, str, bytes, lists, tuples, str/int-keyed dicts) and numpy "
            "arrays"
        )

    return default


# One hook per nesting level, built once: the depth rides in the hook itself, so counting
# levels costs nothing per message and needs no shared (thread-unsafe) counter.
_ENCODERS = [_encoder(depth) for depth in range(MAX_EXT_DEPTH + 1)]


def pack(obj: object) -> bytes:
    """Encode ``obj`` (plain data, tuples, numpy arrays) as msgpack."""
    data: bytes = msgpack.packb(obj, default=_ENCODERS[0], strict_types=True, use_bin_type=True)
    return data


def frame(obj: object) -> bytes:
    """One stream frame holding ``obj``: msgpack is self-delimiting, so no length prefix."""
    return pack(obj)


def new_packer() -> Any:
    """A reusable msgpack packer for frames (one per thread: packers are not thread-safe)."""
    return msgpack.Packer(
        default=_ENCODERS[0], strict_types=True, use_bin_type=True, autoreset=True
    )


# ---------------------------------------------------------------------------------- decoding


def _decode_ndarray(data: bytes) -> np.ndarray[Any, Any]:
    """An array from its extension body: u32 header length, header [dtype, shape], raw bytes."""
    if len(data) < _LEN.size:
        raise WireError(f"array extension of {len(data)} bytes is shorter than its header")
    (hlen,) = _LEN.unpack_from(data)
    if hlen > len(data) - _LEN.size:
        raise WireError(f"array header of {hlen} bytes overruns its {len(data)}-byte extension")
    # The header is plain msgpack: no extension hook, so it cannot nest any further.
    header = msgpack.unpackb(data[_LEN.size : _LEN.size + hlen], raw=False)
    if not (isinstance(header, list) and len(header) == 2):
        raise WireError("array header is not [dtype, shape]")
    dtype_str, shape = header
    if type(dtype_str) is not str:
        raise WireError(f"array header names no plain numpy dtype: {dtype_str!r}")
    dtype = _wire_dtype(dtype_str)
    if type(shape) is not list or len(shape) > MAX_ARRAY_DIMS:
        raise WireError(f"array header has a bad shape: {shape!r}")
    for dim in shape:  # a loop, not all(...): this runs for every array received
        if type(dim) is not int or dim < 0:
            raise WireError(f"array header has a bad shape: {shape!r}")
    count = math.prod(shape)
    offset = _LEN.size + hlen
    if count * dtype.itemsize != len(data) - offset:
        raise WireError(
            f"array of shape {tuple(shape)} and dtype {dtype_str} needs "
            f"{count * dtype.itemsize} bytes, its extension holds {len(data) - offset}"
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(tuple(shape)).copy()


def _decoder(depth: int) -> Callable[[int, bytes], object]:
    """The unpacker's ``ext_hook`` for extensions inside ``depth`` enclosing extensions."""

    def ext_hook(code: int, data: bytes) -> object:
        if depth >= MAX_EXT_DEPTH:
            raise WireError(f"tuples/arrays nested more than {MAX_EXT_DEPTH} deep")
        if code == _EXT_TUPLE:
            items = msgpack.unpackb(
                data, ext_hook=_DECODERS[depth + 1], strict_map_key=False, raw=False
            )
            if not isinstance(items, list):
                raise WireError(f"tuple extension holds a {type(items).__name__}, not a list")
            return tuple(items)
        if code == _EXT_NDARRAY:
            return _decode_ndarray(data)
        raise WireError(f"unknown msgpack extension type {code}")

    return ext_hook


_DECODERS = [_decoder(depth) for depth in range(MAX_EXT_DEPTH + 1)]


def _undecodable(exc: Exception) -> WireError:
    if isinstance(exc, WireError):
        return exc
    return WireError(f"undecodable frame ({type(exc).__name__}): {exc}")


def unpack(data: bytes | memoryview) -> Any:
    """Decode what ``pack`` produced (never executes code); bad bytes raise ``WireError``."""
    try:
        return msgpack.unpackb(data, ext_hook=_DECODERS[0], strict_map_key=False, raw=False)
    except Exception as exc:  # any failure to decode, whatever raised it, is a bad frame
        raise _undecodable(exc) from exc


class FrameReader:
    """Splits a byte stream into decoded frames (bytes may arrive in any pieces).

    msgpack's streaming unpacker does the framing in C; a frame larger than
    ``MAX_FRAME_BYTES``, nested too deep, or otherwise undecodable raises ``WireError``, after
    which the stream is unusable (close the connection).
    """

    __slots__ = ("_unpacker",)

    def __init__(self) -> None:
        self._unpacker = msgpack.Unpacker(
            ext_hook=_DECODERS[0],
            strict_map_key=False,
            raw=False,
            max_buffer_size=MAX_FRAME_BYTES,
        )

    def feed(self, data: bytes) -> list[Any]:
        """Add received bytes; return every frame now complete, in order."""
        try:
            self._unpacker.feed(data)
            return list(self._unpacker)
        except Exception as exc:  # whatever a bad frame makes msgpack or numpy raise
            raise _undecodable(exc) from exc


# ---------------------------------------------------------------------------------- handshake


def _recv_exact(sock: socket.socket, size: int, deadline_s: float) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        left_s = deadline_s - time.monotonic()
        if left_s <= 0:
            raise WireError(f"handshake timed out after {len(chunks)} of {size} bytes")
        sock.settimeout(left_s)
        got = sock.recv(size - len(chunks))
        if not got:
            raise WireError(
                f"connection closed during the handshake ({len(chunks)} of {size} bytes)"
            )
        chunks += got
    return bytes(chunks)


def _check_preamble(magic: bytes, version: int, what: str) -> None:
    if magic != _HANDSHAKE_MAGIC:
        raise WireError(f"the {what} does not speak snapline's handshake (magic {magic!r})")
    if version != HANDSHAKE_VERSION:
        raise WireError(
            f"the {what} speaks handshake version {version}, this snapline speaks "
            f"{HANDSHAKE_VERSION}: run every process of a job from the same installation"
        )


def _mac(secret: bytes, purpose: str, *parts: bytes) -> bytes:
    h = hmac.new(secret, _MAC_LABEL, hashlib.sha256)
    for part in (purpose.encode(), *parts):
        h.update(_LEN.pack(len(part)))
        h.update(part)
    return h.digest()


def accept_handshake(sock: socket.socket, secret: bytes, purpose: str) -> Hello:
    """Authenticate the peer that connected to us; return its hello, or raise ``WireError``.

    Runs on a blocking socket under one overall deadline so a silent or trickling stranger
    cannot hold us. Only ``WireError`` comes out, whatever the peer sent.
    """
    deadline_s = time.monotonic() + HANDSHAKE_TIMEOUT_S
    try:
        challenge = os.urandom(32)
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        sock.sendall(_CHALLENGE.pack(_HANDSHAKE_MAGIC, HANDSHAKE_VERSION, challenge))
        # The preamble first, so that a peer speaking something else is turned away at once.
        preamble = _recv_exact(sock, _PREAMBLE.size, deadline_s)
        magic, version = _PREAMBLE.unpack(preamble)
        _check_preamble(magic, version, "connecting peer")
        response = preamble + _recv_exact(sock, _RESPONSE.size - _PREAMBLE.size, deadline_s)
        _, _, nonce, _, _, mac = _RESPONSE.unpack(response)
        hello_bytes = response[_HELLO_IN_RESPONSE]
        expected = _mac(secret, purpose, challenge, nonce, hello_bytes)
        if not hmac.compare_digest(mac, expected):
            raise WireError("handshake MAC mismatch: the peer does not hold this job's secret")
        sock.sendall(_mac(secret, purpose + "/accept", nonce, challenge, hello_bytes))
        rank, pid = _HELLO.unpack(hello_bytes)
        return Hello(rank=rank, pid=pid)
    except WireError:
        raise
    except Exception as exc:  # OSError, timeouts: all mean this peer failed the handshake
        raise WireError(f"handshake failed ({type(exc).__name__}): {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)


def connect_handshake(
    sock: socket.socket, secret: bytes, purpose: str, *, rank: int, pid: int = 0
) -> None:
    """Prove we hold the job's secret to the acceptor and check that it holds it too.

    ``rank`` and ``pid`` are our hello: what the acceptor's ``accept_handshake`` returns.
    """
    hello = Hello(rank=rank, pid=pid)
    deadline_s = time.monotonic() + HANDSHAKE_TIMEOUT_S
    hello_bytes = _HELLO.pack(hello.rank, hello.pid)
    try:
        magic, version, challenge = _CHALLENGE.unpack(
            _recv_exact(sock, _CHALLENGE.size, deadline_s)
        )
        _check_preamble(magic, version, "acceptor")
        nonce = os.urandom(32)
        mac = _mac(secret, purpose, challenge, nonce, hello_bytes)
        sock.settimeout(max(deadline_s - time.monotonic(), 0.001))
        sock.sendall(
            _RESPONSE.pack(_HANDSHAKE_MAGIC, HANDSHAKE_VERSION, nonce, hello.rank, hello.pid, mac)
        )
        theirs = _recv_exact(sock, _CONFIRM_BYTES, deadline_s)
        expected = _mac(secret, purpose + "/accept", nonce, challenge, hello_bytes)
        if not hmac.compare_digest(theirs, expected):
            raise WireError("the acceptor does not hold this job's secret")
    except WireError:
        raise
    except Exception as exc:
        raise WireError(f"handshake failed ({type(exc).__name__}): {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)


def serve_handshakes(
    listener: socket.socket,
    *,
    secret: bytes,
    purpose: str,
    admit: Callable[[socket.socket, Hello], None],
    reject: Callable[[str], None],
    closing: Callable[[], bool],
) -> None:
    """Accept and authenticate connections on ``listener`` until it closes (an acceptor loop).

    ``admit(conn, hello)`` takes each authenticated connection (it may raise ``WireError`` to
    turn a hello away); ``reject(why)`` hears about every connection that failed, for the log.
    Nothing one connection does -- garbage, a bug in ``admit``, any exception -- stops the
    loop: that connection is closed and the next one accepted. Only the listener's own end
    (``closing()`` true, or an error that is not transient) ends it.
    """
    while not closing():
        try:
            conn, _ = listener.accept()
            tune(conn)
        except OSError as exc:
            if closing() or exc.errno not in _TRANSIENT_ACCEPT_ERRNOS:
                return
            with contextlib.suppress(Exception):
                reject(f"accept failed, retrying: {exc}")
            time.sleep(0.05)  # e.g. out of file descriptors: let some close before retrying
            continue
        try:
            admit(conn, accept_handshake(conn, secret, purpose))
        except Exception as exc:  # one connection's failure must never stop the acceptor
            why = str(exc) if isinstance(exc, WireError) else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(OSError):
                conn.close()
            with contextlib.suppress(Exception):
                reject(why)
