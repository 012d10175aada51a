"""Recovery: load the newest intact image, replay the edits after it, cut a torn tail.

Theory of operation
-------------------
The state after txid ``T`` is ``image_<I>`` (``I <= T``, the newest intact image) with the
transactions ``I+1 .. T`` applied in order. Recovery therefore

1. tries images newest first; a damaged one (see ``_image``) is skipped with a
   ``JournalWarning`` and, when the writer recovers, renamed ``image_<txid>.corrupt`` so that
   retention never counts it as a kept image. With no intact image it starts from the
   machine's initial state at txid 0;
2. walks the segments that hold txids after the image, checking that they are contiguous (a
   gap means acknowledged transactions are gone: ``JournalError``);
3. replays every valid record. In a *finalized* segment every record must be valid and the
   last txid must match the file name: such a segment was complete and fsynced before it was
   renamed, so damage there is media corruption of acknowledged data, and there is no way
   around it -- an older image needs the same segment and more. That is a ``JournalError``
   naming the file and offset; nothing is modified, so an operator can restore the file. (A
   damaged finalized segment that lies entirely at or before the image is never read, so it
   does not stop recovery.)
4. in the newest, *in-progress* segment, the records after the last valid one are a torn
   tail -- a write that the crash interrupted and that was never acknowledged, since acks
   follow ``fdatasync``. The writer truncates the file there (``JournalWarning`` naming file
   and offset) and never replays it. If a *valid* record is found after the damage, the damage
   is in the middle (acknowledged records follow it), so cutting would lose acknowledged data:
   that is a ``JournalError`` instead.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapline.errors import JournalError
from snapline.journal._format import (
    SegmentName,
    decode_op,
    iter_records,
    scan_segment_bytes,
)
from snapline.journal._image import DamagedImage, read_image
from snapline.journal._machines import StateMachine


class JournalWarning(UserWarning):
    """Recovery repaired or skipped something (a torn tail cut, a damaged image skipped)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TornTail:
    """A torn tail found at the end of the in-progress segment."""

    path: Path
    offset: int
    bytes_cut: int
    problem: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoveryReport:
    """What opening an existing journal found and did."""

    image_txid: int | None
    damaged_images: tuple[str, ...]
    ops_replayed: int
    last_txid: int
    torn_tail: TornTail | None
    duration_s: float


def load_newest_image(
    images: Sequence[tuple[int, Path]], machine: StateMachine, *, quarantine: bool
) -> tuple[int | None, Any, list[str]]:
    """(image txid or None, state, names of damaged images skipped), newest intact first.

    With ``quarantine`` (the writer's recovery) a damaged image is renamed ``*.corrupt``.
    """
    damaged: list[str] = []
    for _txid, path in reversed(images):
        try:
            info, state = read_image(path)
        except DamagedImage as exc:
            damaged.append(path.name)
            warnings.warn(
                f"skipping damaged journal image ({exc}); falling back to an older image",
                JournalWarning,
                stacklevel=2,
            )
            if quarantine:
                _quarantine(path)
            continue
        return info.txid, state, damaged
    return None, machine.initial(), damaged


def _quarantine(path: Path) -> None:
    # Best effort: recovery already skips it; inspect still shows it.
    with contextlib.suppress(OSError):
        os.replace(path, path.with_name(path.name + ".corrupt"))


@dataclass(slots=True)
class ReplayResult:
    """The outcome of ``replay``."""

    state: Any
    last_txid: int
    ops_replayed: int
    torn_tail: TornTail | None


def replay(
    segments: Sequence[SegmentName],
    *,
    machine: StateMachine | None,
    state: Any,
    base_txid: int,
    upto_txid: int | None = None,
) -> ReplayResult:
    """Apply the records after ``base_txid`` (up to ``upto_txid``) to ``state``.

    ``machine=None`` only validates (log mode). Raises JournalError on a gap, on damage in a
    finalized segment, or on damage followed by valid records; reports (does not cut) a torn
    tail of the last in-progress segment.
    """
    needed = [s for s in segments if s.last_txid is None or s.last_txid > base_txid]
    expected = base_txid + 1
    replayed = 0
    torn: TornTail | None = None
    for index, seg in enumerate(needed):
        if upto_txid is not None and expected > upto_txid:
            break
        if seg.first_txid > expected:
            raise JournalError(
                f"edit log has a gap: transactions {expected}..{seg.first_txid - 1} are missing "
                f"(next file is {seg.path.name}); acknowledged edits were deleted or lost -- "
                "restore the missing edits_* files"
            )
        if not seg.finalized and index != len(needed) - 1:
            raise JournalError(
                f"{seg.path} is in progress but is not the newest segment; the journal directory "
                "was modified by hand or by two writers -- inspect it with `snapline journal "
                "inspect`"
            )
        try:
            data = seg.path.read_bytes()
        except OSError as exc:
            raise JournalError(f"cannot read edit-log segment {seg.path}: {exc}") from exc
        scan = scan_segment_bytes(data, seg.path)
        if scan.first_txid != seg.first_txid:
            raise JournalError(
                f"{seg.path}: header says first txid {scan.first_txid}, the name does not match"
            )
        if seg.finalized and (scan.damaged or scan.last_txid != seg.last_txid):
            what = scan.problem or f"records end at txid {scan.last_txid}"
            first_lost = (scan.last_txid or seg.first_txid - 1) + 1
            raise JournalError(
                f"finalized edit-log segment {seg.path} is damaged ({what}); acknowledged "
                f"transactions from {first_lost} on cannot be read and no older image can "
                "replace them -- restore this file from a copy"
            )
        if not seg.finalized and scan.damaged:
            if scan.later_valid_offset is not None:
                raise JournalError(
                    f"{seg.path} is damaged in the middle ({scan.problem}) and valid records "
                    f"follow at offset {scan.later_valid_offset}; cutting there would lose "
                    "acknowledged transactions -- restore this file from a copy"
                )
            torn = TornTail(
                path=seg.path,
                offset=scan.valid_end_offset,
                bytes_cut=scan.file_size - scan.valid_end_offset,
                problem=scan.problem or "torn tail",
            )
        view = memoryview(data)
        for txid, start, end in iter_records(data, seg.first_txid):
            if txid < expected:
                continue
            if upto_txid is not None and txid > upto_txid:
                break
            if machine is not None:
                op = decode_op(view[start:end])
                try:
                    state = machine.apply(state, op)
                except Exception as exc:
                    raise JournalError(
                        f"replaying txid {txid} from {seg.path.name} failed in "
                        f"{machine.name}.apply: {exc!r}; the log holds an op the state machine "
                        "rejects (was the journal opened with a different apply?)"
                    ) from exc
            replayed += 1
            expected = txid + 1
        view.release()
    if upto_txid is not None and expected <= upto_txid:
        raise JournalError(
            f"edit log ends at txid {expected - 1}, but transactions up to {upto_txid} were "
            "expected; acknowledged edits are missing"
        )
    return ReplayResult(state=state, last_txid=expected - 1, ops_replayed=replayed, torn_tail=torn)


def cut_torn_tail(torn: TornTail) -> None:
    """Truncate the in-progress segment at the end of its valid records (and fsync it)."""
    warnings.warn(
        f"journal edit log {torn.path} has a torn tail at offset {torn.offset} "
        f"({torn.bytes_cut} bytes: {torn.problem}); it was never acknowledged and is cut, "
        "not replayed",
        JournalWarning,
        stacklevel=3,
    )
    try:
        fd = os.open(torn.path, os.O_RDWR)
        try:
            os.ftruncate(fd, torn.offset)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise JournalError(f"cannot cut torn tail of {torn.path}: {exc}") from exc
