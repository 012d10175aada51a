"""On-disk format of the edit log: file names, the segment header and the record frame.

Theory of operation
-------------------
The edit log is a sequence of *segments*, each a file that holds consecutive transactions.
As in HDFS, a segment is named after the transactions it holds: ``edits_inprogress_<first>``
while the writer appends to it, ``edits_<first>-<last>`` once it is *finalized* (closed and
renamed; a finalized segment never changes again). Txids are 19-digit zero-padded so that
names sort in txid order.

A segment starts with a fixed header (magic, format version, first txid) followed by records::

    header  = "SNLJEDIT" | u16 version | u16 reserved | u64 first_txid      (20 bytes)
    record  = u32 payload_len | u64 txid | u64 checksum | payload            (20 + n bytes)
    checksum = xxh3_64(u32 payload_len | u64 txid | payload)

The payload is one operation encoded with msgpack (plain data only; decoding never builds
objects other than None/bool/int/float/str/bytes/list/dict, so loading never runs code).
The checksum covers the length and the txid as well as the payload, so a flipped length or
txid is caught, not only a flipped payload byte. Txids inside a segment are consecutive; a
record whose txid is not the expected next one is as invalid as one whose checksum fails.

A crash can only tear the *end* of the in-progress segment, because the writer only appends
and acknowledges after ``fdatasync``. ``scan_segment`` therefore reads records until the first
invalid one and reports where the valid prefix ends; it also looks for a valid record *after*
that point, which a torn tail never has and a damaged middle always does, so that recovery can
tell "cut the torn tail" from "acknowledged data is damaged" (see ``_recovery``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import xxhash

from snapline.errors import EncodeError, JournalError

FORMAT_VERSION = 1
SEGMENT_MAGIC = b"SNLJEDIT"
SEGMENT_HEADER = struct.Struct("<8sHHQ")
RECORD_HEADER = struct.Struct("<IQQ")
# A record cannot be larger than this; a bigger length field is a damaged frame, not a record.
RECORD_PAYLOAD_BYTES_MAX = 64 * 1024 * 1024
TXID_DIGITS = 19

_INPROGRESS_RE = re.compile(r"^edits_inprogress_(\d{19})$")
_FINALIZED_RE = re.compile(r"^edits_(\d{19})-(\d{19})$")
_IMAGE_RE = re.compile(r"^image_(\d{19})$")
_LEN_TXID = struct.Struct("<IQ")


def finalized_name(first_txid: int, last_txid: int) -> str:
    """File name of the finalized segment holding ``first_txid..last_txid``."""
    return f"edits_{first_txid:0{TXID_DIGITS}d}-{last_txid:0{TXID_DIGITS}d}"


def inprogress_name(first_txid: int) -> str:
    """File name of the in-progress segment whose first transaction is ``first_txid``."""
    return f"edits_inprogress_{first_txid:0{TXID_DIGITS}d}"


def image_name(txid: int) -> str:
    """File name of the image holding the state after transaction ``txid``."""
    return f"image_{txid:0{TXID_DIGITS}d}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentName:
    """A segment file found in a journal directory, as its name describes it."""

    path: Path
    first_txid: int
    last_txid: int | None  # None while in progress

    @property
    def finalized(self) -> bool:
        """Whether the segment is closed (its name carries its last txid)."""
        return self.last_txid is not None


def parse_segment_name(path: Path) -> SegmentName | None:
    """The segment a file name describes, or None if the name is not a segment's."""
    if m := _FINALIZED_RE.match(path.name):
        first, last = int(m.group(1)), int(m.group(2))
        return SegmentName(path=path, first_txid=first, last_txid=last) if last >= first else None
    if m := _INPROGRESS_RE.match(path.name):
        return SegmentName(path=path, first_txid=int(m.group(1)), last_txid=None)
    return None


def parse_image_txid(path: Path) -> int | None:
    """The txid an image file name carries, or None if it is not an image's name."""
    m = _IMAGE_RE.match(path.name)
    return int(m.group(1)) if m else None


def encode_op(op: object) -> bytes:
    """Encode an operation as msgpack; raise EncodeError naming the op if it is not plain data."""
    try:
        payload: bytes = msgpack.packb(op, use_bin_type=True, strict_types=False, datetime=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(
            f"journal operation {op!r:.200} is not plain data ({exc}); use None, bool, int, "
            "float, str, bytes, lists and dicts of those"
        ) from exc
    if len(payload) > RECORD_PAYLOAD_BYTES_MAX:
        raise EncodeError(
            f"journal operation encodes to {len(payload)} bytes, more than the record limit of "
            f"{RECORD_PAYLOAD_BYTES_MAX}; store large values elsewhere and log a reference"
        )
    return payload


def decode_op(payload: bytes | memoryview) -> Any:
    """Decode an operation payload (msgpack, plain data only)."""
    return msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)


def segment_header(first_txid: int) -> bytes:
    """The header bytes of a new segment."""
    return SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, first_txid)


def frame_record(txid: int, payload: bytes) -> bytes:
    """One framed record: length, txid, checksum, payload."""
    len_txid = _LEN_TXID.pack(len(payload), txid)
    checksum = xxhash.xxh3_64_intdigest(len_txid + payload)
    return RECORD_HEADER.pack(len(payload), txid, checksum) + payload


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One transaction read back from the edit log."""

    txid: int
    op: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentScan:
    """What reading one segment file found.

    ``valid_end_offset`` is where the valid records end; ``file_size`` beyond it is a torn or
    damaged tail. ``later_valid_offset`` is the offset of a valid record found *after* the
    damage (None for a clean file or a genuinely torn tail).
    """

    path: Path
    first_txid: int
    record_count: int
    last_txid: int | None  # None when the segment holds no valid record
    valid_end_offset: int
    file_size: int
    problem: str | None
    later_valid_offset: int | None

    @property
    def damaged(self) -> bool:
        """Whether anything follows the valid records."""
        return self.valid_end_offset < self.file_size


def read_segment_header(data: bytes, path: Path) -> int:
    """Check a segment header and return its first txid; raise JournalError if it is not one."""
    if len(data) < SEGMENT_HEADER.size:
        raise JournalError(f"{path}: segment header is torn ({len(data)} bytes)")
    magic, version, _, first_txid = SEGMENT_HEADER.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC:
        raise JournalError(f"{path}: not a snapline edit-log segment (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise JournalError(
            f"{path}: edit-log format version {version} is not supported (this snapline reads "
            f"version {FORMAT_VERSION}); open the journal with a matching snapline"
        )
    return int(first_txid)


def _record_at(data: bytes, offset: int, expected_txid: int | None) -> tuple[int, int] | None:
    """(txid, end offset) of a valid record at ``offset``, or None."""
    if offset + RECORD_HEADER.size > len(data):
        return None
    length, txid, checksum = RECORD_HEADER.unpack_from(data, offset)
    if expected_txid is not None and txid != expected_txid:
        return None
    end = offset + RECORD_HEADER.size + length
    if length > RECORD_PAYLOAD_BYTES_MAX or end > len(data):
        return None
    hasher = xxhash.xxh3_64()
    hasher.update(data[offset : offset + 12])
    hasher.update(data[offset + RECORD_HEADER.size : end])
    if hasher.intdigest() != checksum:
        return None
    return txid, end


def _find_later_record(data: bytes, offset: int, after_txid: int) -> int | None:
    """Offset of a valid record beyond ``offset`` with a txid just after ``after_txid``.

    A torn tail never has one; a damaged middle does. Searching the txid's bytes with
    ``bytes.find`` keeps this linear and in C even for large segments.
    """
    for txid in range(after_txid + 1, after_txid + 9):
        needle = struct.pack("<Q", txid)
        pos = data.find(needle, offset + 4)
        while pos != -1:
            start = pos - 4
            if start >= offset and _record_at(data, start, txid) is not None:
                return start
            pos = data.find(needle, pos + 1)
    return None


def iter_records(data: bytes, first_txid: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(txid, payload_start, payload_end)`` for the valid prefix of a segment's bytes."""
    offset = SEGMENT_HEADER.size
    expected = first_txid
    while (found := _record_at(data, offset, expected)) is not None:
        txid, end = found
        yield txid, offset + RECORD_HEADER.size, end
        offset = end
        expected += 1


def scan_segment_bytes(data: bytes, path: Path) -> SegmentScan:
    """Validate a segment's bytes; see ``SegmentScan``. Raises JournalError on a bad header."""
    first_txid = read_segment_header(data, path)
    count = 0
    end = SEGMENT_HEADER.size
    last: int | None = None
    for txid, _, payload_end in iter_records(data, first_txid):
        count += 1
        last = txid
        end = payload_end
    problem: str | None = None
    later: int | None = None
    if end < len(data):
        expected = first_txid + count
        if end + RECORD_HEADER.size > len(data):
            problem = f"torn record header at offset {end} ({len(data) - end} bytes)"
        else:
            length, txid, _ = RECORD_HEADER.unpack_from(data, end)
            if txid != expected:
                problem = f"record at offset {end} has txid {txid}, expected {expected}"
            elif end + RECORD_HEADER.size + length > len(data):
                problem = f"torn record at offset {end} (txid {txid}, payload cut short)"
            else:
                problem = f"checksum mismatch in record at offset {end} (txid {txid})"
        later = _find_later_record(data, end, expected - 1)
    return SegmentScan(
        path=path,
        first_txid=first_txid,
        record_count=count,
        last_txid=last,
        valid_end_offset=end,
        file_size=len(data),
        problem=problem,
        later_valid_offset=later,
    )


def scan_segment(path: Path) -> SegmentScan:
    """Read and validate one segment file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JournalError(f"cannot read edit-log segment {path}: {exc}") from exc
    return scan_segment_bytes(data, path)


def read_segment_records(
    path: Path, *, from_txid: int = 0, to_txid: int | None = None
) -> Iterator[Record]:
    """Decoded records of the valid prefix of a segment, limited to ``from_txid..to_txid``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise JournalError(f"cannot read edit-log segment {path}: {exc}") from exc
    first_txid = read_segment_header(data, path)
    view = memoryview(data)
    for txid, start, end in iter_records(data, first_txid):
        if to_txid is not None and txid > to_txid:
            return
        if txid >= from_txid:
            yield Record(txid=txid, op=decode_op(view[start:end]))
