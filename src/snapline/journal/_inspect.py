"""Read-only inspection of a journal directory (what ``snapline journal inspect`` shows).

Like HDFS's offline image and edits viewers (``oiv``/``oev``), these functions read files and
change nothing: no lock is taken, a torn tail is reported but not cut, a damaged image is
reported but not renamed. They are safe to run while a writer has the journal open.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapline.errors import JournalError
from snapline.journal._format import Record, image_name, read_segment_records, scan_segment
from snapline.journal._image import DamagedImage, ImageInfo, read_image, read_image_info
from snapline.journal._layout import list_directory, read_marker


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageEntry:
    """One image file and whether it passed its checks."""

    name: str
    txid: int
    size_bytes: int
    created_unix_s: float | None
    entries: int | None
    problem: str | None

    @property
    def intact(self) -> bool:
        """Whether the image passed every check."""
        return self.problem is None


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentEntry:
    """One edit-log segment: the txids its name and its valid records cover, and its tail."""

    name: str
    finalized: bool
    first_txid: int
    last_txid: int | None
    records: int
    size_bytes: int
    tail_offset: int | None  # where damage/a torn tail starts; None when clean
    problem: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalInspection:
    """Everything ``inspect_journal`` found in a journal directory."""

    directory: Path
    version: int
    mode: str
    machine: str | None
    images: list[ImageEntry]
    segments: list[SegmentEntry]
    other_files: list[str]

    @property
    def record_count(self) -> int:
        """Valid records in all segments."""
        return sum(s.records for s in self.segments)


def inspect_journal(path: str | os.PathLike[str]) -> JournalInspection:
    """Describe the images and segments of the journal in ``path`` without changing it."""
    directory = Path(path)
    marker = read_marker(directory)
    listing = list_directory(directory)
    images: list[ImageEntry] = []
    for txid, image_path in listing.images:
        try:
            info = read_image_info(image_path)
        except DamagedImage as exc:
            size = image_path.stat().st_size if image_path.exists() else 0
            images.append(
                ImageEntry(
                    name=image_path.name,
                    txid=txid,
                    size_bytes=size,
                    created_unix_s=None,
                    entries=None,
                    problem=str(exc),
                )
            )
            continue
        images.append(
            ImageEntry(
                name=image_path.name,
                txid=info.txid,
                size_bytes=info.size_bytes,
                created_unix_s=info.created_unix_s,
                entries=info.entries,
                problem=None,
            )
        )
    segments: list[SegmentEntry] = []
    for seg in listing.segments:
        try:
            scan = scan_segment(seg.path)
        except JournalError as exc:
            segments.append(
                SegmentEntry(
                    name=seg.path.name,
                    finalized=seg.finalized,
                    first_txid=seg.first_txid,
                    last_txid=None,
                    records=0,
                    size_bytes=seg.path.stat().st_size if seg.path.exists() else 0,
                    tail_offset=0,
                    problem=str(exc),
                )
            )
            continue
        problem = scan.problem
        if seg.finalized and problem is None and scan.last_txid != seg.last_txid:
            problem = f"records end at txid {scan.last_txid}, the name says {seg.last_txid}"
        segments.append(
            SegmentEntry(
                name=seg.path.name,
                finalized=seg.finalized,
                first_txid=seg.first_txid,
                last_txid=scan.last_txid,
                records=scan.record_count,
                size_bytes=scan.file_size,
                tail_offset=scan.valid_end_offset if scan.damaged else None,
                problem=problem,
            )
        )
    known = {p.name for _, p in listing.images} | {s.path.name for s in listing.segments}
    others = sorted(
        p.name
        for p in directory.iterdir()
        if p.name not in known and p.name not in ("journal.json", "writer.lock")
    )
    return JournalInspection(
        directory=directory,
        version=marker.version,
        mode=marker.mode,
        machine=marker.machine,
        images=images,
        segments=segments,
        other_files=others,
    )


def iter_edits(path: str | os.PathLike[str], from_txid: int = 1) -> Iterator[Record]:
    """Every valid record in the journal's segments with txid >= ``from_txid``, in order."""
    directory = Path(path)
    read_marker(directory)
    for seg in list_directory(directory).segments:
        if seg.last_txid is not None and seg.last_txid < from_txid:
            continue
        yield from read_segment_records(seg.path, from_txid=from_txid)


def load_image(path: str | os.PathLike[str], txid: int) -> tuple[ImageInfo, Any]:
    """The info and state of ``image_<txid>`` (JournalError if missing or damaged)."""
    directory = Path(path)
    read_marker(directory)
    image_path = directory / image_name(txid)
    if not image_path.exists():
        raise JournalError(f"{directory} has no image with txid {txid} ({image_path.name})")
    return read_image(image_path)
