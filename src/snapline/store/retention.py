"""Retention policies: which committed steps a gc keeps. Small, pure objects.

A policy maps the ascending list of committed steps to the set to keep. It is told which
steps are intact through a predicate (``intact(step)``: the manifest parses and every chunk
it names is present with the right hash), which the store evaluates lazily and which a policy
should call from the newest step down, only as far as it needs: each call reads a checkpoint.

``Retention`` unites ``keep_last`` (the newest N *intact* steps) and ``keep_every`` (steps
divisible by K, for long-term history). Whenever any rule is set:

* the newest intact step is always kept, so a gc never removes the state ``load()`` would
  return, and never empties a store;
* a damaged step newer than the oldest retained intact step is kept, for inspection
  (``snapline verify`` names what is damaged); it goes like any other step once enough newer
  intact steps exist;
* a damaged step older than that is removed like any step outside the rules;
* with no intact step at all nothing is removed (there is nothing to fall back on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from snapline.errors import ConfigError


class RetentionPolicy(Protocol):
    """Chooses which steps survive a gc."""

    def keep(self, steps: list[int], *, intact: Callable[[int], bool]) -> set[int]:
        """The subset of ``steps`` (ascending) to keep; ``intact(step)`` says if one loads."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Retention:
    """Keep the newest ``keep_last`` intact steps and every step divisible by ``keep_every``.

    See the module docstring for damaged steps. With neither set every step is kept (gc then
    only reclaims unreferenced chunks).
    """

    keep_last: int | None = None
    keep_every: int | None = None

    def __post_init__(self) -> None:
        if self.keep_last is not None and self.keep_last < 1:
            raise ConfigError(f"keep_last must be >= 1, got {self.keep_last}")
        if self.keep_every is not None and self.keep_every < 1:
            raise ConfigError(f"keep_every must be >= 1, got {self.keep_every}")

    def keep(self, steps: list[int], *, intact: Callable[[int], bool]) -> set[int]:
        """See the class docstring."""
        if self.keep_last is None and self.keep_every is None:
            return set(steps)
        # Walk down from the newest step keeping everything until enough intact steps are
        # kept; the newest intact one counts even when only keep_every is set.
        wanted = self.keep_last if self.keep_last is not None else 1
        kept: set[int] = set()
        found = 0
        for step in reversed(steps):
            if found == wanted:
                break
            kept.add(step)
            if intact(step):
                found += 1
        if self.keep_every is not None:
            kept.update(s for s in steps if s % self.keep_every == 0)
        return kept
