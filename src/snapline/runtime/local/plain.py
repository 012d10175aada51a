"""Plain-data forms of recovery records and plans, for the control link and the ledger."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from snapline.protocols import protocol_class
from snapline.protocols.base import (
    CheckpointRecord,
    PlainData,
    Redelivery,
    ReplayItem,
    TimerReplay,
)


def requests_basic_checkpoints(protocol: str, rank: int) -> bool:
    """Whether the driver's checkpoint interval fires ``CheckpointRequested`` on ``rank``.

    The protocol class says (``Protocol.checkpoint_requests``), as it does for the simulator:
    a coordinated protocol starts one global checkpoint per request, so only rank 0 asks.
    """
    if protocol == "none":
        return False
    return rank == 0 if protocol_class(protocol).checkpoint_requests == "one" else True


def record_to_plain(record: CheckpointRecord) -> dict[str, PlainData]:
    """A ``CheckpointRecord`` as plain data (int keys stay ints; msgpack keeps them)."""
    return {
        "rank": record.rank,
        "index": record.index,
        "forced": record.forced,
        "sent": {int(k): int(v) for k, v in record.sent.items()},
        "received": {int(k): int(v) for k, v in record.received.items()},
        "meta": record.meta,
        "attachments": dict(record.attachments),
    }


def record_from_plain(raw: dict[str, Any]) -> CheckpointRecord:
    """Inverse of ``record_to_plain``."""
    return CheckpointRecord(
        rank=int(raw["rank"]),
        index=int(raw["index"]),
        forced=bool(raw["forced"]),
        sent={int(k): int(v) for k, v in raw["sent"].items()},
        received={int(k): int(v) for k, v in raw["received"].items()},
        meta=raw.get("meta"),
        attachments=dict(raw.get("attachments") or {}),
    )


def replay_to_plain(items: Sequence[ReplayItem]) -> list[list[Any]]:
    """Replay items as ``["m", src, seq, payload, piggyback]`` / ``["t", name]``."""
    out: list[list[Any]] = []
    for item in items:
        if isinstance(item, Redelivery):
            out.append(["m", item.src, item.seq, item.payload, item.piggyback])
        else:
            out.append(["t", item.name])
    return out


def replay_from_plain(raw: Sequence[Sequence[Any]]) -> list[ReplayItem]:
    """Inverse of ``replay_to_plain``."""
    items: list[ReplayItem] = []
    for entry in raw:
        if entry[0] == "m":
            items.append(
                Redelivery(
                    src=int(entry[1]),
                    seq=int(entry[2]),
                    payload=entry[3],
                    piggyback=entry[4] if len(entry) > 4 else None,
                )
            )
        else:
            items.append(TimerReplay(name=str(entry[1])))
    return items
