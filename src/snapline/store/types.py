"""Plain records the store returns: checkpoint info, verify and gc reports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

ProgressCallback: TypeAlias = Callable[[int, int], None]
"""Called as ``progress(done_bytes, total_bytes)`` while a save, load or verify runs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointInfo:
    """What ``save``, ``info`` and ``list`` report about one committed checkpoint.

    ``new_bytes``/``shared_bytes`` split the stored bytes into chunks the previous checkpoint
    (the next lower step) does not / does also use. ``written_bytes`` is what the save that
    made it actually wrote (chunks already in the store are never rewritten). ``damaged`` is
    None, or why the manifest could not be read (the other numbers are then zero).
    """

    step: int
    created_unix_s: float = 0.0
    total_bytes: int = 0
    stored_bytes: int = 0
    new_bytes: int = 0
    shared_bytes: int = 0
    written_bytes: int = 0
    chunk_count: int = 0
    leaf_count: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    damaged: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Damage:
    """One damaged part of a store: the step, the manifest or chunk key, and what is wrong."""

    step: int
    key: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifyReport:
    """The result of ``Store.verify``: what was checked and what is damaged."""

    steps_checked: tuple[int, ...]
    chunks_checked: int
    bytes_checked: int
    damage: tuple[Damage, ...]

    @property
    def ok(self) -> bool:
        """True when nothing is damaged."""
        return not self.damage

    @property
    def damaged_steps(self) -> tuple[int, ...]:
        """Steps with at least one damaged part, ascending."""
        return tuple(sorted({d.step for d in self.damage}))


@dataclass(frozen=True, slots=True, kw_only=True)
class GcReport:
    """The result of ``Store.gc``."""

    deleted_steps: tuple[int, ...]
    kept_steps: tuple[int, ...]
    deleted_chunks: int
    freed_bytes: int
    removed_partial_writes: int
    # Steps retention examined and found damaged but kept (newer than a retained intact step,
    # or no intact step exists); ``Store.verify`` says what is wrong with them.
    kept_damaged_steps: tuple[int, ...] = ()
