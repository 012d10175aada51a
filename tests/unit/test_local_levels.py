"""The ledger's record of which storage levels hold each checkpoint (``runtime.local.levels``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from snapline.runtime.local.ledger import LedgerWriter, read_ledger
from snapline.runtime.local.levels import flushed_record


def ckpt(index: int, ident: str | None, levels: list[str] | None) -> dict[str, Any]:
    record: dict[str, Any] = {
        "k": "ckpt",
        "rank": 0,
        "index": index,
        "forced": False,
        "sent": {},
        "received": {},
        "meta": None,
        "attachments": {},
        "extras": {},
    }
    if levels is not None:
        record.update(levels=levels, checkpoint_id=ident)
    return record


def fold(tmp_path: Path, *records: dict[str, Any]) -> Any:
    path = tmp_path / "rank-0.log"
    writer = LedgerWriter(path)
    for record in records:
        writer.append(record)
    writer.close()
    return read_ledger(path, 0)


def test_a_flush_adds_the_remote_level_to_the_checkpoint_it_copied(tmp_path: Path) -> None:
    view = fold(
        tmp_path,
        ckpt(1, "id-1", ["local", "partner"]),
        ckpt(2, "id-2", ["local"]),
        flushed_record(1, "id-1"),
    )
    assert view.levels == {1: ["local", "partner", "remote"], 2: ["local"]}
    assert view.checkpoint_ids == {1: "id-1", 2: "id-2"}


def test_a_flush_of_an_older_checkpoint_of_the_same_index_counts_for_nothing(
    tmp_path: Path,
) -> None:
    view = fold(
        tmp_path,
        ckpt(1, "id-1", ["local"]),
        ckpt(2, "old-2", ["local"]),
        {"k": "restore", "index": 1},  # rolled back: index 2 will be saved again
        ckpt(2, "new-2", ["local", "xor"]),
        flushed_record(2, "old-2"),  # the flush of the undone checkpoint ended late
    )
    assert view.levels == {1: ["local"], 2: ["local", "xor"]}
    assert view.checkpoint_ids[2] == "new-2"


def test_a_ledger_without_levels_has_none(tmp_path: Path) -> None:
    view = fold(tmp_path, ckpt(1, None, None), flushed_record(1, "whatever"))
    assert view.levels == {} and view.checkpoint_ids == {} and 1 in view.persisted
