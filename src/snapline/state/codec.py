"""The safe state codec: a msgpack skeleton of the tree plus raw array leaves.

Theory of operation
-------------------
A state is a tree of dicts, lists and tuples whose leaves are numpy arrays, numbers, ``str``,
``bytes``, ``bool`` and ``None``. :func:`encode_tree` walks it once and splits it in two:

* the **skeleton** -- the tree's shape and every small leaf, packed with msgpack. Types msgpack
  cannot tell apart are wrapped in ext types: tuples (so tuple vs list survives), ints beyond
  64 bits, complex numbers, numpy scalars, and -- only with ``allow_pickle=True`` -- pickled
  objects. Each array (and each ``bytes`` of at least ``BIG_BYTES``) becomes an ext
  reference to a numbered **leaf**.
* the **leaves** -- one C-contiguous, little-endian byte buffer per array. They are not copied
  when they already are contiguous and little-endian (the store hashes and writes them in
  place); big-endian or strided arrays are copied once into that form.

:func:`decode_tree` is the inverse. It never executes code: msgpack only builds plain values,
the ext hook accepts only the codes above, dtypes are rebuilt from their string or descr form
and object dtypes are refused. A pickle ext is decoded only with ``allow_pickle=True``, which
is unsafe for untrusted checkpoints (unpickling runs arbitrary code).

Errors name the place in the tree (``state['model']['w'][3]``) so users can find the value.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
import numpy as np

from snapline.errors import ConfigError, CorruptCheckpoint, EncodeError

BIG_BYTES = 64 * 1024
"""``bytes`` values at least this long are stored as leaves (chunked, deduplicated)."""

_EXT_TUPLE = 1
_EXT_BIGINT = 2
_EXT_COMPLEX = 3
_EXT_NPSCALAR = 4
_EXT_LEAF = 5
_EXT_PICKLE = 6

_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1
_MAX_DEPTH = 500
_ARRAY_KINDS = frozenset("biufcmMSUV")


class Leaf(NamedTuple):
    """One array (or large ``bytes``) leaf of an encoded state.

    ``data`` is a 1-D ``uint8`` view of the leaf's little-endian C-order bytes; it may share
    memory with the caller's array, so it is only valid until the caller mutates that array.
    An immutable ``NamedTuple`` rather than a frozen dataclass: a state may hold thousands of
    small arrays, and building a frozen dataclass costs several times more per leaf.
    """

    path: str
    kind: str  # "array" or "bytes"
    dtype: str | list[Any]  # dtype.str, or a descr list for structured dtypes
    shape: tuple[int, ...]
    data: np.ndarray[Any, np.dtype[np.uint8]]
    owned: bool = False
    """True when ``data`` cannot change under the caller (a private copy, or immutable bytes)."""

    @property
    def nbytes(self) -> int:
        """Size of the leaf's data in bytes."""
        return int(self.data.nbytes)


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodedTree:
    """The result of :func:`encode_tree`: the skeleton bytes and the leaves it references."""

    skeleton: bytes
    leaves: list[Leaf]
    uses_pickle: bool


def path_str(parts: list[str]) -> str:
    """Render a path in the tree the way Python would index it: ``state['a'][3]``."""
    return "state" + "".join(parts)


def dtype_to_json(dtype: np.dtype[Any]) -> str | list[Any]:
    """A JSON-able form of a (little-endian) dtype, safe to rebuild with :func:`dtype_from_json`."""
    if dtype.fields is not None:
        descr = np.lib.format.dtype_to_descr(dtype)
        return _listify(descr)  # type: ignore[no-any-return]
    return dtype.str


def _listify(obj: Any) -> Any:
    if isinstance(obj, list | tuple):
        return [_listify(x) for x in obj]
    return obj


def _tuplify_descr(obj: Any) -> Any:
    # A descr is a list of (name, type[, shape]) tuples; JSON turned the tuples into lists.
    if isinstance(obj, list):
        out: list[Any] = []
        for field in obj:
            if not isinstance(field, list) or not 2 <= len(field) <= 3:
                raise ValueError(f"bad field {field!r}")
            name, sub = field[0], field[1]
            sub = _tuplify_descr(sub) if isinstance(sub, list) else sub
            rest = [tuple(field[2])] if len(field) == 3 else []
            out.append((name, sub, *rest))
        return out
    return obj


def dtype_from_json(value: Any) -> np.dtype[Any]:
    """Rebuild a dtype written by :func:`dtype_to_json`; refuses object dtypes."""
    try:
        if isinstance(value, str):
            dtype = np.dtype(value)
        elif isinstance(value, list):
            dtype = np.lib.format.descr_to_dtype(_tuplify_descr(value))
        else:
            raise ValueError(f"not a dtype description: {value!r}")
    except (TypeError, ValueError) as exc:
        raise CorruptCheckpoint(f"bad dtype {value!r} in checkpoint: {exc}") from exc
    if dtype.hasobject or dtype.kind not in _ARRAY_KINDS:
        raise CorruptCheckpoint(f"dtype {value!r} in checkpoint is not a plain data dtype")
    return dtype


def _plain_dtype(dtype: np.dtype[Any]) -> bool:
    """Whether arrays of ``dtype`` are plain data the codec stores as leaves."""
    return not dtype.hasobject and dtype.kind in _ARRAY_KINDS


def _little_endian(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype.fields is not None:
        return dtype.newbyteorder("<") if not dtype.isnative else dtype
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


class _Encoder:
    def __init__(self, *, allow_pickle: bool) -> None:
        self.allow_pickle = allow_pickle
        self.leaves: list[Leaf] = []
        self.uses_pickle = False
        self._on_stack: set[int] = set()
        # dtype -> (little-endian dtype, its JSON form): states often hold thousands of
        # arrays of a few dtypes, and working these out is most of a small leaf's cost.
        # The third item: whether the dtype is little-endian already (no copy needed).
        self._dtypes: dict[np.dtype[Any], tuple[np.dtype[Any], str | list[Any], bool]] = {}

    def _pickled(self, obj: object, parts: list[str], why: str) -> msgpack.ExtType:
        if not self.allow_pickle:
            raise EncodeError(
                f"cannot encode {path_str(parts)}: {why}. Convert it to plain data (dict, list, "
                "tuple, numpy array, number, str, bytes, bool, None), or pass allow_pickle=True "
                "on save and load (unsafe for untrusted checkpoints)"
            )
        try:
            blob = pickle.dumps(obj, protocol=5)
        except Exception as exc:
            raise EncodeError(f"cannot pickle {path_str(parts)}: {exc}") from exc
        self.uses_pickle = True
        return msgpack.ExtType(_EXT_PICKLE, blob)

    def _leaf(self, arr: np.ndarray[Any, Any], path: str, kind: str) -> msgpack.ExtType:
        known = self._dtypes.get(arr.dtype)
        if known is None:
            little = _little_endian(arr.dtype)
            known = self._dtypes[arr.dtype] = (little, dtype_to_json(little), little == arr.dtype)
        dtype, dtype_json, is_little = known
        owned = kind == "bytes"
        if not is_little or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr, dtype=dtype)
            owned = True
        if not arr.size:
            data = np.empty(0, np.uint8)
        else:
            data = (arr if arr.ndim == 1 else arr.reshape(-1)).view(np.uint8)
        index = len(self.leaves)
        # Positional: this runs once per array, and states may hold thousands of small ones.
        self.leaves.append(Leaf(path, kind, dtype_json, arr.shape, data, owned))
        return _leaf_reference(index)

    def walk(self, obj: object, parts: list[str]) -> Any:
        if len(parts) > _MAX_DEPTH:
            raise EncodeError(f"cannot encode {path_str(parts)}: tree deeper than {_MAX_DEPTH}")
        t = type(obj)
        if obj is None or t is bool or t is str or t is float:
            return obj
        if t is int:
            assert isinstance(obj, int)
            if _INT64_MIN <= obj <= _UINT64_MAX:
                return obj
            length = (obj.bit_length() + 8) // 8
            return msgpack.ExtType(_EXT_BIGINT, obj.to_bytes(length, "little", signed=True))
        if t is bytes or t is bytearray:
            assert isinstance(obj, bytes | bytearray)
            if t is bytes and len(obj) < BIG_BYTES:
                return obj
            if t is bytearray:
                return self._pickled(obj, parts, "bytearray is not supported (use bytes)")
            return self._leaf(np.frombuffer(obj, np.uint8), path_str(parts), "bytes")
        if t is complex:
            assert isinstance(obj, complex)
            return msgpack.ExtType(_EXT_COMPLEX, msgpack.packb([obj.real, obj.imag]))
        if t is np.ndarray:
            assert isinstance(obj, np.ndarray)
            if not _plain_dtype(obj.dtype):
                return self._pickled(obj, parts, f"numpy dtype {obj.dtype} holds Python objects")
            return self._leaf(obj, path_str(parts), "array")
        if isinstance(obj, np.generic) and t.__module__ == "numpy":
            dtype = obj.dtype
            if dtype.hasobject or dtype.kind not in _ARRAY_KINDS:
                return self._pickled(obj, parts, f"numpy scalar of dtype {dtype}")
            arr = np.asarray(obj).astype(_little_endian(dtype))
            return msgpack.ExtType(
                _EXT_NPSCALAR, msgpack.packb([dtype_to_json(arr.dtype), arr.tobytes()])
            )
        if t is dict or t is list or t is tuple:
            key = id(obj)
            if key in self._on_stack:
                raise EncodeError(f"cannot encode {path_str(parts)}: the tree contains a cycle")
            self._on_stack.add(key)
            try:
                return self._container(obj, parts)
            finally:
                self._on_stack.discard(key)
        return self._pickled(obj, parts, f"type {t.__module__}.{t.__qualname__} is not plain data")

    def _container(self, obj: object, parts: list[str]) -> Any:
        if isinstance(obj, dict):
            out: dict[Any, Any] = {}
            # Arrays held by a dict go straight to _leaf (the common leaf of big states, once
            # per array): no sub-path list, the path string built once per container.
            arrays_inline = len(parts) < _MAX_DEPTH
            prefix = path_str(parts)
            known = self._dtypes
            for k, v in obj.items():
                kt = type(k)
                if kt is str and type(v) is np.ndarray and arrays_inline and v.dtype in known:
                    out[k] = self._leaf(v, f"{prefix}[{k!r}]", "array")
                    continue
                if not (k is None or kt in (str, int, bool, float, bytes, tuple)):
                    raise EncodeError(
                        f"cannot encode {prefix}: dict key {k!r} of type "
                        f"{kt.__qualname__} (keys must be str, int, float, bool, bytes, tuple "
                        "or None)"
                    )
                sub = [*parts, f"[{k!r}]"]
                ek = k if kt is str else self._key(k, sub)
                out[ek] = self.walk(v, sub)
            return out
        assert isinstance(obj, list | tuple)
        items = [self.walk(v, [*parts, f"[{i}]"]) for i, v in enumerate(obj)]
        if isinstance(obj, tuple):
            return msgpack.ExtType(_EXT_TUPLE, _packb(items))
        return items

    def _key(self, k: object, parts: list[str]) -> Any:
        if isinstance(k, tuple):
            return msgpack.ExtType(_EXT_TUPLE, _packb([self._key(x, parts) for x in k]))
        if isinstance(k, bytes) and len(k) >= BIG_BYTES:
            raise EncodeError(f"cannot encode {path_str(parts)}: bytes dict key too long")
        if isinstance(k, int) and not isinstance(k, bool) and not _INT64_MIN <= k <= _UINT64_MAX:
            return msgpack.ExtType(
                _EXT_BIGINT, k.to_bytes((k.bit_length() + 8) // 8, "little", signed=True)
            )
        if not (k is None or type(k) in (str, int, bool, float, bytes)):
            raise EncodeError(f"cannot encode {path_str(parts)}: unsupported key part {k!r}")
        return k


_LEAF_REFERENCES: list[msgpack.ExtType] = []
_LEAF_REFERENCES_GROW = threading.Lock()


def _leaf_reference(index: int) -> msgpack.ExtType:
    """The skeleton's reference to leaf ``index``, built once per index and then shared.

    The list only grows, under the lock, each entry built from its own position, so a reader
    on another thread never sees a wrong entry; the entries are immutable.
    """
    refs = _LEAF_REFERENCES
    if index >= len(refs):
        with _LEAF_REFERENCES_GROW:
            while len(refs) <= index:
                refs.append(msgpack.ExtType(_EXT_LEAF, msgpack.packb(len(refs))))
    return refs[index]


def _packb(obj: Any) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True, strict_types=True)
    assert isinstance(data, bytes)
    return data


def encode_tree(state: object, *, allow_pickle: bool = False) -> EncodedTree:
    """Split ``state`` into a msgpack skeleton and its array leaves (see the module docstring).

    Raises ``EncodeError`` naming the path of the first value the codec cannot encode.
    """
    encoder = _Encoder(allow_pickle=allow_pickle)
    try:
        skeleton = encoder.walk(state, [])
        blob = _packb(skeleton)
    except RecursionError as exc:
        raise EncodeError(f"cannot encode state: tree too deep ({exc})") from exc
    return EncodedTree(skeleton=blob, leaves=encoder.leaves, uses_pickle=encoder.uses_pickle)


def decode_tree(
    skeleton: bytes | memoryview,
    resolve_leaf: Callable[[int], object],
    *,
    allow_pickle: bool = False,
    pickle_placeholder: Callable[[bytes], object] | None = None,
) -> Any:
    """Rebuild a tree from its skeleton; ``resolve_leaf(i)`` returns the object for leaf ``i``.

    Pickled values raise ``ConfigError`` unless ``allow_pickle`` (or ``pickle_placeholder``,
    used by ``snapline inspect`` to show them without unpickling) is given. Malformed input
    raises ``CorruptCheckpoint``.
    """

    def ext_hook(code: int, data: bytes) -> object:
        if code == _EXT_TUPLE:
            return tuple(_unpack(data))
        if code == _EXT_BIGINT:
            return int.from_bytes(data, "little", signed=True)
        if code == _EXT_COMPLEX:
            real, imag = _unpack(data)
            return complex(real, imag)
        if code == _EXT_NPSCALAR:
            dtype_json, raw = _unpack(data)
            dtype = dtype_from_json(dtype_json)
            if len(raw) != dtype.itemsize:
                raise CorruptCheckpoint("numpy scalar of the wrong size in checkpoint")
            return np.frombuffer(raw, dtype=dtype)[0]
        if code == _EXT_LEAF:
            index = _unpack(data)
            if type(index) is not int:
                raise CorruptCheckpoint("bad leaf reference in checkpoint skeleton")
            return resolve_leaf(index)
        if code == _EXT_PICKLE:
            if pickle_placeholder is not None:
                return pickle_placeholder(data)
            if not allow_pickle:
                raise ConfigError(
                    "this checkpoint holds pickled Python objects; loading them can run "
                    "arbitrary code. Pass allow_pickle=True only if you trust the checkpoint"
                )
            return pickle.loads(data)
        raise CorruptCheckpoint(f"unknown ext type {code} in checkpoint skeleton")

    def _unpack(data: bytes | memoryview) -> Any:
        return msgpack.unpackb(
            data, raw=False, ext_hook=ext_hook, strict_map_key=False, use_list=True
        )

    try:
        return _unpack(skeleton)
    except (CorruptCheckpoint, ConfigError):
        raise
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CorruptCheckpoint(f"checkpoint skeleton cannot be decoded: {exc}") from exc
