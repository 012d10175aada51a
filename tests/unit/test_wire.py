"""wire: the handshake that admits only holders of the job secret, and the frame decoder's limits.

The crafted frames come from a report against the first handshake (length-prefixed msgpack):
``03000000 d40201`` (an ndarray extension with a 1-byte body) killed every acceptor thread
with ``struct.error``, and tuple extensions nested ~200 deep overflowed the C stack (SIGSEGV).
Those two run in a child process, so that a regression shows up as a failed test naming the
signal instead of taking the test run down with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from snapline.errors import ConfigError
from snapline.runtime.local import wire
from snapline.runtime.local.wire import (
    MAX_EXT_DEPTH,
    FrameReader,
    Hello,
    WireError,
    accept_handshake,
    connect_handshake,
    frame,
    pack,
    serve_handshakes,
    unpack,
)

SECRET = b"s" * 32

#: The reported 7-byte frame: u32 length 3, then fixext1 of type 2 (ndarray) with body 0x01.
SEVEN_BYTE_FRAME = bytes.fromhex("03000000d40201")


def nested_tuple_ext(depth: int, inner: bytes = b"\x90") -> bytes:
    """``depth`` nested 1-tuples (as raw extensions) around ``inner`` (one msgpack object)."""
    body = inner
    for _ in range(depth):
        body = msgpack.packb(msgpack.ExtType(1, b"\x91" + body))  # a 1-tuple of the level below
    return body


#: The reported crash: a length-prefixed handshake frame of tuple extensions 250 deep.
DEEP_BODY = nested_tuple_ext(250)
DEEP_FRAME = struct.pack("<I", len(DEEP_BODY)) + DEEP_BODY


_CHILD_ACCEPTOR = """
import socket, sys
from snapline.runtime.local.wire import WireError, accept_handshake
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(1)
print("ready", flush=True)
conn, _ = listener.accept()
try:
    accept_handshake(conn, b"s" * 32, "channel")
except WireError as exc:
    print("WireError:", exc, flush=True)
else:
    print("admitted", flush=True)
"""


@pytest.mark.parametrize("crafted", [SEVEN_BYTE_FRAME, DEEP_FRAME], ids=["7-byte", "deep"])
def test_crafted_handshake_reply_is_a_wire_error(tmp_path: Path, crafted: bytes) -> None:
    path = tmp_path / "acceptor.sock"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_ACCEPTOR, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.settimeout(10)
            assert sock.recv(4096)  # the challenge, whatever its layout
            sock.sendall(crafted)
            sock.shutdown(socket.SHUT_WR)
            out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, f"the acceptor died (exit {child.returncode}):\n{err}"
    assert out.startswith("WireError:"), out + err


_CHILD_READER = """
import sys
from snapline.runtime.local.wire import FrameReader, WireError
try:
    FrameReader().feed(sys.stdin.buffer.read())
except WireError as exc:
    print("WireError:", exc)
"""


def test_deeply_nested_tuples_on_an_authenticated_stream_are_a_wire_error() -> None:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD_READER],
        input=DEEP_BODY,
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == 0, f"the reader died (exit {child.returncode}): {child.stderr!r}"
    assert child.stdout.startswith(b"WireError: tuples/arrays nested more than")


# ------------------------------------------------------------------------------ handshake


def _pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)


def _accept_in_thread(sock: socket.socket, secret: bytes, outcome: dict[str, Any]) -> Any:
    def accept() -> None:
        try:
            outcome["hello"] = accept_handshake(sock, secret, "control")
        except BaseException as exc:  # handed to the test
            outcome["error"] = exc
            sock.shutdown(socket.SHUT_RDWR)  # hang up, as the acceptor loop does

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return thread


def test_handshake_admits_a_holder_of_the_secret_and_returns_its_hello() -> None:
    acceptor, connector = _pair()
    with acceptor, connector:
        outcome: dict[str, Any] = {}
        thread = _accept_in_thread(acceptor, SECRET, outcome)
        connect_handshake(connector, SECRET, "control", rank=3, pid=4242)
        thread.join(5)
        assert outcome == {"hello": Hello(rank=3, pid=4242)}
        # The stream is usable afterwards, and blocking again.
        assert acceptor.gettimeout() is None and connector.gettimeout() is None
        connector.sendall(frame({"op": "hb"}))
        assert FrameReader().feed(acceptor.recv(4096)) == [{"op": "hb"}]


def test_the_acceptor_refuses_a_connector_without_the_secret() -> None:
    acceptor, connector = _pair()
    with acceptor, connector:
        outcome: dict[str, Any] = {}
        thread = _accept_in_thread(acceptor, SECRET, outcome)
        with pytest.raises(WireError):
            connect_handshake(connector, b"y" * 32, "control", rank=0)
        thread.join(5)
        assert "MAC mismatch" in str(outcome["error"])


def test_the_connector_refuses_an_acceptor_without_the_secret() -> None:
    acceptor, connector = _pair()
    with acceptor, connector:
        # An impostor acceptor: a well-formed challenge, then a confirmation it cannot compute.
        acceptor.sendall(b"SNAPLINE" + struct.pack("<I", 2) + b"c" * 32 + b"z" * 32)
        with pytest.raises(WireError, match="acceptor does not hold"):
            connect_handshake(connector, SECRET, "control", rank=0)


def test_a_response_for_the_other_purpose_is_refused() -> None:
    acceptor, connector = _pair()
    with acceptor, connector:
        outcome: dict[str, Any] = {}
        thread = _accept_in_thread(acceptor, SECRET, outcome)  # a control socket
        with pytest.raises(WireError):
            connect_handshake(connector, SECRET, "channel", rank=0)
        thread.join(5)
        assert isinstance(outcome["error"], WireError)


def test_a_peer_speaking_the_old_or_another_protocol_gets_a_clear_error() -> None:
    acceptor, connector = _pair()
    with acceptor, connector:
        connector.sendall(b"GET / HTTP/1.1\r\n" * 8)
        with pytest.raises(WireError, match="does not speak snapline's handshake"):
            accept_handshake(acceptor, SECRET, "control")


def test_a_trickling_stranger_is_cut_off_by_one_overall_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "HANDSHAKE_TIMEOUT_S", 0.5)
    acceptor, connector = _pair()
    stop = threading.Event()

    def trickle() -> None:
        # One byte per 0.1 s: every single recv succeeds well within any per-read timeout.
        while not stop.is_set():
            try:
                connector.send(b"S")
            except OSError:
                return
            time.sleep(0.1)

    with acceptor, connector:
        threading.Thread(target=trickle, daemon=True).start()
        started = time.monotonic()
        try:
            with pytest.raises(WireError, match="timed out"):
                accept_handshake(acceptor, SECRET, "control")
        finally:
            stop.set()
        assert time.monotonic() - started < 2.0


def test_hello_fields_must_fit_the_fixed_layout() -> None:
    with pytest.raises(ConfigError):
        Hello(rank=-1)
    with pytest.raises(ConfigError):
        Hello(rank=0, pid=1 << 32)


# ------------------------------------------------------------------------------ acceptor loop


class Acceptor:
    """``serve_handshakes`` on a real listening Unix socket, on its own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(16)
        self.closing = False
        self.admitted: list[tuple[socket.socket, Hello]] = []
        self.rejected: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        serve_handshakes(
            self.listener,
            secret=SECRET,
            purpose="channel",
            admit=self._admit,
            reject=self.rejected.append,
            closing=lambda: self.closing,
        )

    def _admit(self, conn: socket.socket, hello: Hello) -> None:
        if hello.rank == 99:
            raise RuntimeError("a bug in admit")
        if hello.rank == 98:
            raise WireError("rank 98 has no channel here")
        self.admitted.append((conn, hello))

    def close(self) -> None:
        self.closing = True
        with contextlib.suppress(OSError):  # closed already
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


@pytest.fixture
def acceptor(tmp_path: Path) -> Iterator[Acceptor]:
    acc = Acceptor(tmp_path / "rank-0.sock")
    yield acc
    acc.close()
    for conn, _ in acc.admitted:
        conn.close()


def _stranger(path: Path, payload: bytes) -> None:
    """Connect, read the challenge, send ``payload``, and wait until the acceptor hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.settimeout(10)
        sock.recv(4096)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
            while sock.recv(4096):
                pass


def _connect(path: Path, hello: Hello, secret: bytes = SECRET) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    connect_handshake(sock, secret, "channel", rank=hello.rank, pid=hello.pid)
    return sock


def test_the_acceptor_survives_every_kind_of_bad_connection(acceptor: Acceptor) -> None:
    path = acceptor.path
    _stranger(path, SEVEN_BYTE_FRAME)
    _stranger(path, DEEP_FRAME)
    _stranger(path, b"")  # connects and hangs up
    right_layout = wire._RESPONSE.pack(
        b"SNAPLINE", wire.HANDSHAKE_VERSION, b"n" * 32, 1, 2, b"m" * 32
    )
    _stranger(path, right_layout)  # the right layout, a forged MAC
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        with pytest.raises(WireError):
            connect_handshake(sock, b"x" * 32, "channel", rank=1)
    for bad_rank in (99, 98):  # the secret is right; admit raises
        with _connect(path, Hello(rank=bad_rank)) as sock:
            sock.settimeout(10)
            assert sock.recv(4096) == b""  # closed by the acceptor
    # After all that, a genuine peer is still admitted and its stream works.
    with _connect(path, Hello(rank=1, pid=7)) as sock:
        deadline = time.monotonic() + 10
        while not acceptor.admitted and time.monotonic() < deadline:
            time.sleep(0.01)
        [(conn, hello)] = acceptor.admitted
        assert hello == Hello(rank=1, pid=7)
        sock.sendall(frame([0, 0, 1, "payload", None]))
        conn.settimeout(10)
        assert FrameReader().feed(conn.recv(4096)) == [[0, 0, 1, "payload", None]]
    reasons = acceptor.rejected
    assert len(reasons) == 7, reasons
    assert "closed during the handshake" in reasons[0]
    assert "does not speak snapline's handshake" in reasons[1]
    assert "closed during the handshake" in reasons[2]
    assert "MAC mismatch" in reasons[3] and "MAC mismatch" in reasons[4]
    assert reasons[5] == "RuntimeError: a bug in admit"
    assert reasons[6] == "rank 98 has no channel here"


def test_the_acceptor_loop_ends_when_its_listener_closes(acceptor: Acceptor) -> None:
    acceptor.close()
    assert not acceptor.thread.is_alive()


_CHILD_OUT_OF_FDS = """
import errno, os, resource, socket, sys, threading, time
from snapline.runtime.local.wire import Hello, connect_handshake, serve_handshakes
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(sys.argv[1])
listener.listen(4)
admitted, rejected = [], []
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
hogs = []
try:
    while True:
        hogs.append(os.open(os.devnull, os.O_RDONLY))
except OSError as exc:
    assert exc.errno == errno.EMFILE
client.connect(sys.argv[1])  # queued: the acceptor will have no descriptor to accept it with
threading.Thread(
    target=serve_handshakes,
    args=(listener,),
    kwargs=dict(secret=b"s" * 32, purpose="channel", admit=lambda c, h: admitted.append(h),
                reject=rejected.append, closing=lambda: False),
    daemon=True,
).start()
deadline = time.monotonic() + 10
while not rejected and time.monotonic() < deadline:
    time.sleep(0.01)
for fd in hogs:
    os.close(fd)
connect_handshake(client, b"s" * 32, "channel", rank=1)
while not admitted and time.monotonic() < deadline:
    time.sleep(0.01)
print(rejected[0])
print(admitted)
"""


def test_the_acceptor_outlives_running_out_of_file_descriptors(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", _CHILD_OUT_OF_FDS, str(tmp_path / "a.sock")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    why, admitted = child.stdout.splitlines()
    assert why.startswith("accept failed, retrying") and "Too many open files" in why
    assert admitted == "[Hello(rank=1, pid=0)]"


# ------------------------------------------------------------------------------ frame limits


def _ndarray_ext(header: object, body: bytes, *, hlen: int | None = None) -> bytes:
    head = msgpack.packb(header)
    size = len(head) if hlen is None else hlen
    return msgpack.packb(msgpack.ExtType(2, struct.pack("<I", size) + head + body))


BAD_FRAMES = {
    "nested too deep": (nested_tuple_ext(MAX_EXT_DEPTH + 1), "nested more than 32 deep"),
    "array ext of 1 byte": (bytes.fromhex("d40201"), "shorter than its header"),
    "array header overruns": (_ndarray_ext(["<i4", [1]], b"", hlen=99), "overruns"),
    "object dtype": (_ndarray_ext(["|O", [1]], b"\0" * 8), "Python objects"),
    "structured dtype string": (_ndarray_ext(["i4,O", [1]], b"\0" * 12), "no plain numpy"),
    "subarray dtype": (_ndarray_ext(["(1000000000000,)i4", [1]], b""), "no plain numpy"),
    "dtype not a string": (_ndarray_ext([7, [1]], b"\0"), "no plain numpy"),
    "dtype a list": (_ndarray_ext([["<i4"], [1]], b"\0" * 4), "no plain numpy"),
    "zero-size items": (_ndarray_ext(["|V0", [4]], b""), "refusing"),
    "shape vs bytes": (_ndarray_ext(["<i4", [3]], b"\0" * 8), "needs 12 bytes"),
    "huge shape": (_ndarray_ext(["<f8", [1 << 62, 1 << 62]], b""), "holds 0"),
    "negative dim": (_ndarray_ext(["<i4", [-1]], b""), "bad shape"),
    "bool dim": (_ndarray_ext(["<i4", [True]], b"\0" * 4), "bad shape"),
    "too many dims": (_ndarray_ext(["<i4", [1] * 33], b"\0" * 4), "bad shape"),
    "header not a pair": (_ndarray_ext("<i4", b"\0" * 4), "not [dtype, shape]"),
    "tuple of a non-list": (msgpack.packb(msgpack.ExtType(1, msgpack.packb(5))), "holds a int"),
    "unknown extension": (msgpack.packb(msgpack.ExtType(7, b"")), "extension type 7"),
    "invalid utf-8": (b"\xa1\xff", "UnicodeDecodeError"),
    "unhashable map key": (b"\x81\x90\x01", "TypeError"),
    "reserved byte": (b"\xc1", "undecodable"),
    "trailing bytes in a tuple": (
        msgpack.packb(msgpack.ExtType(1, b"\x90\x90")),
        "undecodable",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_a_bad_frame_is_a_wire_error_with_a_clear_message(name: str) -> None:
    data, message = BAD_FRAMES[name]
    with pytest.raises(WireError, match=re.escape(message)):
        FrameReader().feed(data)
    with pytest.raises(WireError):
        unpack(data)


@pytest.mark.parametrize(
    "value",
    [
        np.arange(12, dtype="<i4").reshape(3, 4),
        np.arange(6, dtype=">i8")[::2],
        np.array(["2026-12-01T00:00:00"], dtype="<M8[s]"),
        np.array([1, 2], dtype="<m8[25ms]"),
        np.array([b"ab", b"c"], dtype="S3"),
        np.array(["é", "xy"], dtype="<U2"),
        np.zeros(2, dtype="V8"),
        np.array([True, False]),
        np.array(1.5 + 2j, dtype="<c16"),
        np.zeros((2, 0), dtype="<f4"),
    ],
    ids=lambda v: f"{v.dtype.str}{list(v.shape)}",
)
def test_arrays_round_trip_with_dtype_and_shape(value: np.ndarray[Any, Any]) -> None:
    [got] = FrameReader().feed(frame(value))
    assert got.dtype == value.dtype and got.shape == value.shape
    assert got.tobytes() == np.ascontiguousarray(value).tobytes()


def test_nesting_up_to_the_limit_round_trips_and_beyond_it_fails_at_the_sender() -> None:
    deepest: object = "leaf"
    for _ in range(MAX_EXT_DEPTH):
        deepest = (deepest,)
    assert unpack(pack(deepest)) == deepest
    assert FrameReader().feed(frame([deepest])) == [[deepest]]
    with pytest.raises(ConfigError, match="more than 32 deep"):
        pack((deepest,))
    with pytest.raises(ConfigError, match="more than 32 deep"):
        pack(_wrap(np.zeros(1), MAX_EXT_DEPTH))


def _wrap(value: object, depth: int) -> object:
    for _ in range(depth):
        value = (value,)
    return value


def test_the_sender_refuses_arrays_the_receiver_would_refuse() -> None:
    with pytest.raises(ConfigError, match="Python objects"):
        pack(np.array([object()]))
    with pytest.raises(ConfigError, match="nonzero size"):
        pack(np.zeros(2, dtype="V0"))


def test_frames_split_anywhere_reassemble() -> None:
    frames = [[0, 1, 2, (3, np.arange(4)), {"k": b"v"}], (), {"op": "hb", 1: [1.5]}]
    data = b"".join(frame(f) for f in frames)
    for cut in range(len(data) + 1):
        reader = FrameReader()
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert len(got) == 3
        assert got[0][:3] == [0, 1, 2] and got[0][3][0] == 3
        assert got[0][3][1].tolist() == [0, 1, 2, 3] and got[1:] == frames[1:]


def test_the_mac_covers_every_field_of_the_documented_layout() -> None:
    """Build a RESPONSE from the theory of operation alone: the acceptor must admit it."""
    acceptor, connector = _pair()
    with acceptor, connector:
        outcome: dict[str, Any] = {}
        thread = _accept_in_thread(acceptor, SECRET, outcome)
        first = connector.recv(44)
        magic, version, challenge = struct.unpack("<8sI32s", first)
        assert (magic, version) == (b"SNAPLINE", 2)
        nonce, hello = b"n" * 32, struct.pack("<II", 5, 6)

        def mac(*parts: bytes) -> bytes:
            h = hmac.new(SECRET, b"snapline-handshake-v2", hashlib.sha256)
            for part in parts:
                h.update(struct.pack("<I", len(part)) + part)
            return h.digest()

        connector.sendall(
            magic + struct.pack("<I", 2) + nonce + hello + mac(b"control", challenge, nonce, hello)
        )
        assert connector.recv(32) == mac(b"control/accept", nonce, challenge, hello)
        thread.join(5)
        assert outcome == {"hello": Hello(rank=5, pid=6)}
