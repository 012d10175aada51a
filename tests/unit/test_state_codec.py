"""The safe codec: what it encodes, what it refuses (with the path), and that it never unpickles."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest

from snapline.errors import ConfigError, CorruptCheckpoint, EncodeError
from snapline.state.codec import BIG_BYTES, decode_tree, dtype_from_json, encode_tree


def roundtrip(state: object, *, allow_pickle: bool = False) -> Any:
    enc = encode_tree(state, allow_pickle=allow_pickle)
    leaves = [leaf.data.copy() for leaf in enc.leaves]

    def resolve(i: int) -> object:
        leaf = enc.leaves[i]
        if leaf.kind == "bytes":
            return leaves[i].tobytes()
        dtype = dtype_from_json(leaf.dtype)
        return (
            leaves[i].view(dtype).reshape(leaf.shape)
            if leaf.nbytes
            else np.zeros(leaf.shape, dtype)
        )

    return decode_tree(enc.skeleton, resolve, allow_pickle=allow_pickle)


def test_plain_values_and_tuple_list_distinction() -> None:
    state = {
        "a": (1, [2, (3,)]),
        "big": 2**100,
        "neg": -(2**80),
        "c": 1 + 2j,
        "f": float("inf"),
        "s": "héllo",
        "b": b"\x00\xff",
        "n": None,
        "t": True,
        1: "int key",
        (1, "x"): "tuple key",
        b"k": 0,
    }
    out = roundtrip(state)
    assert out == state
    assert type(out["a"]) is tuple and type(out["a"][1]) is list
    assert list(out.keys()) == list(state.keys())


def test_numpy_scalars_keep_their_type() -> None:
    out = roundtrip([np.float32(1.5), np.int8(-3), np.bool_(True), np.complex64(1 - 1j)])
    assert [type(x) for x in out] == [np.float32, np.int8, np.bool_, np.complex64]
    assert out[0] == np.float32(1.5) and out[3] == np.complex64(1 - 1j)


def test_arrays_strided_big_endian_and_structured() -> None:
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    structured = np.zeros(3, dtype=[("x", "<f4"), ("y", "<i2", (2,))])
    structured["x"] = [1, 2, 3]
    state = {
        "view": base[:, ::2],
        "be": np.arange(5, dtype=">f8"),
        "st": structured,
        "zero": np.zeros((0, 3)),
        "scalar": np.array(7.0),
    }
    out = roundtrip(state)
    np.testing.assert_array_equal(out["view"], base[:, ::2])
    np.testing.assert_array_equal(out["be"], np.arange(5.0))
    assert out["be"].dtype == np.dtype("<f8")  # stored little-endian
    assert out["st"].dtype == structured.dtype
    np.testing.assert_array_equal(out["st"], structured)
    assert out["zero"].shape == (0, 3) and out["scalar"].shape == ()


def test_large_bytes_become_leaves() -> None:
    blob = bytes(range(256)) * (BIG_BYTES // 256 + 1)
    enc = encode_tree({"blob": blob})
    assert [leaf.kind for leaf in enc.leaves] == ["bytes"]
    assert roundtrip({"blob": blob}) == {"blob": blob}


class Custom:
    def __init__(self, v: int) -> None:
        self.v = v


@pytest.mark.parametrize(
    ("state", "path"),
    [
        ({"model": {"w": [0, 1, 2, Custom(1)]}}, "state['model']['w'][3]"),
        ({"x": np.array([object()], dtype=object)}, "state['x']"),
        ([{"k": {1, 2}}], "state[0]['k']"),
        ({"b": bytearray(b"x")}, "state['b']"),
    ],
)
def test_unencodable_values_name_their_path(state: object, path: str) -> None:
    with pytest.raises(EncodeError) as err:
        encode_tree(state)
    assert path in str(err.value)
    assert "allow_pickle" in str(err.value)


def test_bad_dict_key_and_cycle() -> None:
    with pytest.raises(EncodeError, match=r"dict key"):
        encode_tree({"a": {frozenset(): 1}})
    cyclic: list[object] = []
    cyclic.append(cyclic)
    with pytest.raises(EncodeError, match="cycle"):
        encode_tree({"c": cyclic})


def test_pickle_needs_opt_in_on_both_sides() -> None:
    enc = encode_tree({"obj": Custom(5)}, allow_pickle=True)
    assert enc.uses_pickle
    with pytest.raises(ConfigError, match="allow_pickle"):
        decode_tree(enc.skeleton, lambda i: None)
    out = decode_tree(enc.skeleton, lambda i: None, allow_pickle=True)
    assert out["obj"].v == 5


def test_decode_never_unpickles_without_opt_in() -> None:
    # A hand-made skeleton whose pickle would run code if it were ever unpickled.
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (exec, ("raise SystemExit('code ran')",))

    enc = encode_tree([Boom()], allow_pickle=True)
    with pytest.raises(ConfigError):
        decode_tree(enc.skeleton, lambda i: None)
    shown = decode_tree(enc.skeleton, lambda i: None, pickle_placeholder=lambda b: "<pickled>")
    assert shown == ["<pickled>"]
    assert pickle.dumps(1)  # pickle itself is untouched


def test_garbage_skeleton_is_corrupt() -> None:
    with pytest.raises(CorruptCheckpoint):
        decode_tree(b"\xc1\xc1\xc1", lambda i: None)
    with pytest.raises(CorruptCheckpoint):
        decode_tree(b"\xd4\x63\x00", lambda i: None)  # unknown ext type 99


@pytest.mark.parametrize("bad", ["O", "|O", [["a", "|O"]], 5, "not-a-dtype"])
def test_dtype_from_json_refuses_objects_and_garbage(bad: object) -> None:
    with pytest.raises(CorruptCheckpoint):
        dtype_from_json(bad)
