"""Retention policies: which committed steps a gc keeps. Small, pure objects.

A policy maps the ascending list of committed steps to the set to keep. ``Retention`` unites
``keep_last`` (the newest N) and ``keep_every`` (steps divisible by K, for long-term history);
whenever any rule is set the newest step is always kept, so a gc never empties a store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from snapline.errors import ConfigError


class RetentionPolicy(Protocol):
    """Chooses which steps survive a gc."""

    def keep(self, steps: list[int]) -> set[int]:
        """The subset of ``steps`` (ascending) to keep."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Retention:
    """Keep the newest ``keep_last`` steps and every step divisible by ``keep_every``.

    With neither set every step is kept (gc then only reclaims unreferenced chunks).
    """

    keep_last: int | None = None
    keep_every: int | None = None

    def __post_init__(self) -> None:
        if self.keep_last is not None and self.keep_last < 1:
            raise ConfigError(f"keep_last must be >= 1, got {self.keep_last}")
        if self.keep_every is not None and self.keep_every < 1:
            raise ConfigError(f"keep_every must be >= 1, got {self.keep_every}")

    def keep(self, steps: list[int]) -> set[int]:
        """See the class docstring."""
        if self.keep_last is None and self.keep_every is None:
            return set(steps)
        kept: set[int] = set(steps[-1:])
        if self.keep_last is not None:
            kept.update(steps[-self.keep_last :])
        if self.keep_every is not None:
            kept.update(s for s in steps if s % self.keep_every == 0)
        return kept
