"""Fuzzing the local runtime's wire: whatever a peer sends, the answer is WireError, never a crash.

Bounded (a few hundred examples each, a few seconds in all) so it runs on every CI build.
The handshake runs over a real socketpair; the frame decoder gets arbitrary bytes, mutated
genuine frames, and extension trees nested at random depths.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import struct
import threading
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from snapline.runtime.local.wire import (
    MAX_EXT_DEPTH,
    FrameReader,
    Hello,
    WireError,
    accept_handshake,
    connect_handshake,
    frame,
    unpack,
)

SECRET = bytes(range(32))
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _accept_bytes(sent: bytes) -> Exception | Hello:
    """What ``accept_handshake`` makes of a connector that sends ``sent`` and hangs up."""
    acceptor, connector = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with acceptor, connector:
        connector.sendall(sent)
        connector.shutdown(socket.SHUT_WR)
        try:
            return accept_handshake(acceptor, SECRET, "channel")
        except Exception as exc:
            return exc


@SETTINGS
@given(st.binary(max_size=300))
def test_the_acceptor_turns_arbitrary_bytes_away_with_a_wire_error(sent: bytes) -> None:
    outcome = _accept_bytes(sent)
    assert isinstance(outcome, WireError), repr(outcome)


@SETTINGS
@given(
    nonce=st.binary(min_size=32, max_size=32),
    rank=st.integers(0, 2**32 - 1),
    pid=st.integers(0, 2**32 - 1),
    mac=st.binary(min_size=32, max_size=32),
    tail=st.binary(max_size=64),
)
def test_a_well_formed_response_with_a_forged_mac_is_refused(
    nonce: bytes, rank: int, pid: int, mac: bytes, tail: bytes
) -> None:
    sent = b"SNAPLINE" + struct.pack("<I32sII32s", 2, nonce, rank, pid, mac) + tail
    outcome = _accept_bytes(sent)
    assert isinstance(outcome, WireError) and "MAC mismatch" in str(outcome), repr(outcome)


def _mac(*parts: bytes) -> bytes:
    h = hmac.new(SECRET, b"snapline-handshake-v2", hashlib.sha256)
    for part in parts:
        h.update(struct.pack("<I", len(part)) + part)
    return h.digest()


@SETTINGS
@given(position=st.integers(0, 83), flip=st.integers(1, 255), rank=st.integers(0, 1000))
def test_any_changed_byte_of_a_genuine_response_is_refused(
    position: int, flip: int, rank: int
) -> None:
    acceptor, connector = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    outcome: dict[str, Any] = {}

    def accept() -> None:
        try:
            outcome["hello"] = accept_handshake(acceptor, SECRET, "control")
        except Exception as exc:
            outcome["error"] = exc
        acceptor.shutdown(socket.SHUT_RDWR)

    with acceptor, connector:
        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        challenge = connector.recv(44)[12:]
        nonce, hello = b"\x07" * 32, struct.pack("<II", rank, 1234)
        response = bytearray(
            b"SNAPLINE"
            + struct.pack("<I", 2)
            + nonce
            + hello
            + _mac(b"control", challenge, nonce, hello)
        )
        response[position] ^= flip
        connector.sendall(response)
        thread.join(10)
    assert set(outcome) == {"error"} and isinstance(outcome["error"], WireError), outcome


@SETTINGS
@given(st.binary(max_size=300))
def test_the_connector_turns_an_impostor_acceptor_away(sent: bytes) -> None:
    acceptor, connector = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with acceptor, connector:
        acceptor.sendall(sent)
        acceptor.shutdown(socket.SHUT_WR)
        try:
            connect_handshake(connector, SECRET, "channel", rank=1)
        except WireError:
            return
        raise AssertionError("an acceptor without the secret was believed")


# ---------------------------------------------------------------------------------- frames


def _feed_in_pieces(data: bytes, cuts: list[int]) -> list[Any]:
    reader = FrameReader()
    frames: list[Any] = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        frames += reader.feed(data[start:cut])
        start = max(start, cut)
    return frames


@SETTINGS
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=4))
def test_arbitrary_bytes_decode_or_raise_wire_error(data: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(WireError):  # the only way a frame may fail
        _feed_in_pieces(data, cuts)


def _ext_trees() -> st.SearchStrategy[object]:
    """msgpack trees whose extensions (tuple, ndarray, unknown) hold random or nested bodies."""
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=5)
    )

    def extend(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
        return st.one_of(
            st.lists(children, max_size=3),
            st.builds(
                msgpack.ExtType,
                st.sampled_from([1, 2, 5]),
                st.one_of(
                    st.binary(max_size=40),
                    children.map(msgpack.packb),
                    st.tuples(st.text(max_size=6), st.lists(st.integers(-2, 9), max_size=4)).map(
                        lambda h: (
                            struct.pack("<I", len(msgpack.packb(list(h)))) + msgpack.packb(list(h))
                        )
                    ),
                ),
            ),
        )

    return st.recursive(leaves, extend, max_leaves=12)


@SETTINGS
@given(_ext_trees(), st.lists(st.integers(0, 4000), max_size=3))
def test_random_extension_trees_decode_or_raise_wire_error(tree: object, cuts: list[int]) -> None:
    data = msgpack.packb(tree)
    with contextlib.suppress(WireError):  # the only way a frame may fail
        _feed_in_pieces(data, cuts)


@SETTINGS
@given(st.integers(0, 3 * MAX_EXT_DEPTH), st.sampled_from([b"\x90", b"\x93\x01\x02\x03"]))
def test_nesting_decodes_up_to_the_limit_and_is_refused_beyond(depth: int, inner: bytes) -> None:
    body = inner
    for _ in range(depth):
        body = msgpack.packb(msgpack.ExtType(1, b"\x91" + body))  # a 1-tuple of the level below
    if depth <= MAX_EXT_DEPTH:
        value = unpack(body)
        for _ in range(depth):
            assert isinstance(value, tuple) and len(value) == 1
            value = value[0]
        assert value == msgpack.unpackb(inner)
    else:
        try:
            FrameReader().feed(body)
        except WireError as exc:
            assert "nested more than" in str(exc)
        else:
            raise AssertionError(f"tuples nested {depth} deep were decoded")


@SETTINGS
@given(st.binary(min_size=1, max_size=400), st.data())
def test_a_mutated_genuine_frame_decodes_or_raises_wire_error(
    noise: bytes, data: st.DataObject
) -> None:
    genuine = frame(
        [0, 3, 17, ("payload", (1, 2.5), np.arange(6, dtype="<i4").reshape(2, 3)), {"k": b"v"}]
    )
    mutated = bytearray(genuine)
    for byte in noise[:8]:
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = byte
    if data.draw(st.booleans()):
        mutated = mutated[: data.draw(st.integers(0, len(mutated)))] + noise
    with contextlib.suppress(WireError):  # the only way a frame may fail
        FrameReader().feed(bytes(mutated))


_PLAIN_DTYPES = st.sampled_from(
    ["?", "i1", "<i2", ">i4", "<i8", "u1", "<u4", "<f2", ">f4", "<f8", "<c8", "S3", "<U2", "<M8[s]"]
)
_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=8),
        st.binary(max_size=8),
        _PLAIN_DTYPES.flatmap(
            lambda dt: hnp.arrays(
                np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=3, max_side=3)
            )
        ),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=4), children, max_size=3),
    ),
    max_leaves=15,
)


def _same(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_values, min_size=1, max_size=3), st.lists(st.integers(0, 5000), max_size=3))
def test_whatever_pack_sends_arrives_the_same(values: list[object], cuts: list[int]) -> None:
    data = b"".join(frame(v) for v in values)
    got = _feed_in_pieces(data, cuts)
    assert len(got) == len(values)
    assert all(map(_same, values, got))
