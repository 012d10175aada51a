"""Manifest format: checksum catches every flipped bit, versions and paths are validated."""

from __future__ import annotations

import json

import pytest

from snapline.errors import CorruptCheckpoint, UnsupportedFormat
from snapline.store.manifest import (
    FORMAT_VERSION,
    ChunkRef,
    LeafRef,
    Manifest,
    chunk_key,
    leaf_table_json,
    parse_manifest,
    referenced_keys_anyway,
    step_of_manifest_key,
)

CID = "0123456789abcdef0123456789abcdef"


def sample() -> Manifest:
    return Manifest(
        step=7,
        created_unix_s=1795000000.125,
        chunk_bytes=4096,
        chunks=(ChunkRef(id=CID, size=100, stored_size=100, codec="raw"),),
        skeleton=(0, 80, 20),
        leaves=(
            LeafRef(
                path="state['w']", kind="array", dtype="<f4", shape=(4, 5), extents=((0, 0, 80),)
            ),
        ),
        meta={"epoch": 3, "note": "ok"},
        total_bytes=100,
        written_bytes=100,
    )


def test_roundtrip_and_human_readable() -> None:
    data = sample().to_bytes()
    assert parse_manifest(data, where="m") == sample()
    text = data.decode()
    assert '"format_version": 1' in text and "\n" in text
    assert json.loads(text)["checksum"].startswith("xxh3_128:")


def test_every_single_bit_flip_is_detected() -> None:
    data = sample().to_bytes()
    for i in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            with pytest.raises(CorruptCheckpoint):
                parse_manifest(bytes(damaged), where="m")


def test_every_truncation_is_detected() -> None:
    data = sample().to_bytes()
    for n in range(len(data)):
        with pytest.raises(CorruptCheckpoint):
            parse_manifest(data[:n], where="m")


def _rewrite(obj: dict[str, object]) -> bytes:
    # Re-sign a modified body the way a (malicious or newer) writer would.
    import xxhash

    obj.pop("checksum", None)
    body = json.dumps(obj, indent=1, sort_keys=True).encode()
    obj["checksum"] = "xxh3_128:" + xxhash.xxh3_128_hexdigest(body)
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def test_newer_format_is_unsupported() -> None:
    obj = json.loads(sample().to_bytes())
    obj["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(UnsupportedFormat, match="Upgrade"):
        parse_manifest(_rewrite(obj), where="m")


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "/abs", CID[:-1] + "G", CID + "/.."])
def test_chunk_outside_the_store_is_refused(bad_id: str) -> None:
    obj = json.loads(sample().to_bytes())
    obj["chunks"][0]["id"] = bad_id
    with pytest.raises(CorruptCheckpoint, match="outside the store"):
        parse_manifest(_rewrite(obj), where="m")
    with pytest.raises(CorruptCheckpoint):
        chunk_key(bad_id, "raw")


def test_extent_outside_its_chunk_is_refused() -> None:
    obj = json.loads(sample().to_bytes())
    obj["leaves"][0]["extents"] = [[0, 90, 80]]
    with pytest.raises(CorruptCheckpoint, match="outside its chunk"):
        parse_manifest(_rewrite(obj), where="m")


def test_manifest_keys() -> None:
    assert step_of_manifest_key("manifests/000000000042.json") == 42
    assert step_of_manifest_key("manifests/.000000000042.json.tmp-1-2") is None
    assert step_of_manifest_key("chunks/000000000042.json") is None


PID = "fedcba9876543210fedcba9876543210"


def sample_v2() -> Manifest:
    packed = ChunkRef(
        id=CID, size=100, stored_size=100, codec="raw", pack=PID, offset=64, pack_size=164
    )
    skeleton = ChunkRef(id="ab" * 16, size=20, stored_size=20, codec="raw")
    return Manifest(
        step=8,
        created_unix_s=1795000000.5,
        chunk_bytes=4096,
        chunks=(packed, skeleton),
        skeleton=(1, 0, 20),
        leaves=(
            LeafRef(
                path="state['w']", kind="array", dtype="<f4", shape=(25,), extents=((0, 0, 100),)
            ),
        ),
        meta={"epoch": 4},
        total_bytes=120,
        written_bytes=120,
    )


@pytest.mark.parametrize("version", [2, 3])
def test_version_2_and_3_roundtrip_is_compact_and_keeps_pack_places(version: int) -> None:
    data = sample_v2().to_bytes(version=version)
    assert data.startswith(b'{"checksum":"xxh3_128:') and b"\n" not in data
    assert json.loads(data)["format_version"] == version
    parsed = parse_manifest(data, where="m")
    assert parsed == sample_v2() and parsed.format_version == 3 == FORMAT_VERSION
    assert parsed.chunks[0].key == f"chunks/packs/{PID}.pack"
    assert parsed.chunks[0].file_size == 164 and parsed.chunks[1].file_size == 20
    obj = json.loads(data)
    assert obj["packs"] == [{"id": PID, "size": 164}]
    assert obj["chunks"][0]["pack"] == 0 and obj["chunks"][0]["offset"] == 64


def test_version_3_stores_the_leaf_table_as_columns() -> None:
    obj = json.loads(sample_v2().to_bytes())
    assert obj["format_version"] == 3
    assert obj["leaves"] == {
        "path": ["state['w']"],
        "kind": ["array"],
        "dtype": ["<f4"],
        "shape": [[25]],
        "extents": [[[0, 0, 100]]],
    }
    assert json.loads(sample_v2().to_bytes(version=2))["leaves"][0]["shape"] == [25]


def test_a_leaf_table_dumped_ahead_gives_the_same_bytes() -> None:
    manifest = sample_v2()
    ahead = manifest.to_bytes(leaf_table=leaf_table_json(manifest.leaves))
    assert ahead == manifest.to_bytes()
    assert parse_manifest(ahead, where="m") == manifest


@pytest.mark.parametrize(
    "leaves",
    [
        {
            "path": ["a", "b"],
            "kind": ["array"],
            "dtype": ["<f4"],
            "shape": [[25]],
            "extents": [[[0, 0, 100]]],
        },
        {"path": ["a"], "kind": ["array"], "dtype": ["<f4"], "shape": [[25]]},
        {
            "path": "a",
            "kind": ["array"],
            "dtype": ["<f4"],
            "shape": [[25]],
            "extents": [[[0, 0, 100]]],
        },
        [{"path": "a", "kind": "array", "dtype": "<f4", "shape": [25], "extents": [[0, 0, 100]]}],
    ],
)
def test_a_malformed_leaf_table_of_version_3_is_refused(leaves: object) -> None:
    obj = json.loads(sample_v2().to_bytes())
    obj["leaves"] = leaves
    with pytest.raises(CorruptCheckpoint, match="malformed"):
        parse_manifest(_rewrite_v2(obj), where="m")


def test_a_manifest_without_packs_is_still_written_as_version_1() -> None:
    # So an older snapline reads every checkpoint it could represent.
    assert sample().format_version == 1
    assert parse_manifest(sample().to_bytes(), where="m").format_version == 1


@pytest.mark.parametrize("version", [2, 3])
def test_every_single_bit_flip_of_a_version_2_or_3_manifest_is_detected(version: int) -> None:
    data = sample_v2().to_bytes(version=version)
    for i in range(len(data)):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            with pytest.raises(CorruptCheckpoint):
                parse_manifest(bytes(damaged), where="m")
    for n in range(len(data)):
        with pytest.raises(CorruptCheckpoint):
            parse_manifest(data[:n], where="m")


def _rewrite_v2(obj: dict[str, object]) -> bytes:
    import xxhash

    obj.pop("checksum", None)
    body = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    head = b'{"checksum":"xxh3_128:' + xxhash.xxh3_128_hexdigest(body).encode() + b'",'
    return head + body[1:]


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", PID[:-1] + "G", PID + "/.."])
def test_pack_outside_the_store_is_refused(bad_id: str) -> None:
    obj = json.loads(sample_v2().to_bytes())
    obj["packs"][0]["id"] = bad_id
    with pytest.raises(CorruptCheckpoint, match="outside the store"):
        parse_manifest(_rewrite_v2(obj), where="m")


def test_chunk_outside_its_pack_is_refused() -> None:
    obj = json.loads(sample_v2().to_bytes())
    obj["chunks"][0]["offset"] = 100
    with pytest.raises(CorruptCheckpoint, match="outside its pack"):
        parse_manifest(_rewrite_v2(obj), where="m")
    obj["chunks"][0]["offset"] = 64
    obj["chunks"][0]["pack"] = 3
    with pytest.raises(CorruptCheckpoint, match="malformed"):
        parse_manifest(_rewrite_v2(obj), where="m")


def test_newer_format_in_the_version_2_envelope_is_unsupported() -> None:
    obj = json.loads(sample_v2().to_bytes())
    obj["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(UnsupportedFormat, match="Upgrade"):
        parse_manifest(_rewrite_v2(obj), where="m")


def test_referenced_keys_anyway_reads_ids_out_of_a_damaged_manifest() -> None:
    data = bytearray(sample_v2().to_bytes()[:-5])  # truncated: no longer JSON
    data[0] ^= 0x20
    keys = referenced_keys_anyway(bytes(data))
    assert f"chunks/packs/{PID}.pack" in keys and chunk_key("ab" * 16, "raw") in keys
