"""Record framing, segment scanning and images of snapline.journal (real files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapline.errors import EncodeError, JournalError
from snapline.journal._format import (
    SEGMENT_HEADER,
    decode_op,
    encode_op,
    finalized_name,
    frame_record,
    inprogress_name,
    parse_segment_name,
    read_segment_records,
    scan_segment_bytes,
    segment_header,
)
from snapline.journal._image import DamagedImage, read_image, write_image


def _segment(first: int, ops: list[object]) -> bytes:
    body = b"".join(frame_record(first + i, encode_op(op)) for i, op in enumerate(ops))
    return segment_header(first) + body


def test_names_sort_in_txid_order_and_parse_back(tmp_path: Path) -> None:
    assert finalized_name(9, 10) < finalized_name(10, 11)
    seg = parse_segment_name(tmp_path / finalized_name(5, 7))
    assert seg is not None and (seg.first_txid, seg.last_txid, seg.finalized) == (5, 7, True)
    seg = parse_segment_name(tmp_path / inprogress_name(8))
    assert seg is not None and (seg.first_txid, seg.last_txid) == (8, None)
    assert parse_segment_name(tmp_path / "edits_x") is None


def test_ops_round_trip_as_plain_data() -> None:
    op = {"op": "set", "key": 3, "value": [1, (2, 3), b"x", None, 1.5]}
    assert decode_op(encode_op(op)) == {
        "op": "set",
        "key": 3,
        "value": [1, [2, 3], b"x", None, 1.5],
    }


def test_unencodable_op_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="not plain data"):
        encode_op({"value": object()})


def test_clean_segment_scans_every_record(tmp_path: Path) -> None:
    data = _segment(10, [{"n": i} for i in range(5)])
    scan = scan_segment_bytes(data, tmp_path / "s")
    assert (scan.first_txid, scan.record_count, scan.last_txid) == (10, 5, 14)
    assert not scan.damaged and scan.problem is None


@pytest.mark.parametrize("cut", [1, 7, 20, 23])
def test_truncated_record_is_a_torn_tail(tmp_path: Path, cut: int) -> None:
    data = _segment(1, [{"n": i} for i in range(4)])
    last_start = len(_segment(1, [{"n": i} for i in range(3)]))
    scan = scan_segment_bytes(data[: len(data) - cut], tmp_path / "s")
    assert scan.record_count == 3 and scan.valid_end_offset == last_start
    assert scan.damaged and scan.later_valid_offset is None


def test_appended_garbage_is_a_torn_tail(tmp_path: Path) -> None:
    data = _segment(1, [{"n": i} for i in range(4)])
    scan = scan_segment_bytes(data + b"\x07" * 50, tmp_path / "s")
    assert scan.record_count == 4 and scan.valid_end_offset == len(data)
    assert scan.later_valid_offset is None


def test_damage_in_the_middle_is_told_apart_from_a_torn_tail(tmp_path: Path) -> None:
    data = bytearray(_segment(1, [{"n": i} for i in range(6)]))
    second = SEGMENT_HEADER.size + len(frame_record(1, encode_op({"n": 0})))
    data[second + 22] ^= 0xFF  # a payload byte of txid 2
    scan = scan_segment_bytes(bytes(data), tmp_path / "s")
    assert scan.record_count == 1 and "checksum" in (scan.problem or "")
    assert scan.later_valid_offset is not None


def test_unknown_segment_version_is_a_journal_error(tmp_path: Path) -> None:
    data = bytearray(_segment(1, [{"n": 1}]))
    data[8] = 99
    path = tmp_path / inprogress_name(1)
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="version 99 is not supported"):
        list(read_segment_records(path))


def test_image_round_trip_and_damage(tmp_path: Path) -> None:
    info = write_image(tmp_path, 42, {"a": 1, "b": [1, 2]}, entries=2)
    loaded, state = read_image(info.path)
    assert state == {"a": 1, "b": [1, 2]} and loaded.txid == 42 and loaded.entries == 2
    assert not list(tmp_path.glob("*.tmp"))
    raw = bytearray(info.path.read_bytes())
    raw[-3] ^= 0x01
    info.path.write_bytes(bytes(raw))
    with pytest.raises(DamagedImage, match="checksum"):
        read_image(info.path)
    info.path.write_bytes(bytes(raw[:30]))
    with pytest.raises(DamagedImage, match="torn"):
        read_image(info.path)
