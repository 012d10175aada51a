"""When to checkpoint: small pure policies that every rank evaluates to the same answer.

A collective checkpoint must be entered by every rank at the same step, so the decision must
be identical everywhere. ``EverySteps`` depends only on the step, which an SPMD loop has in
common. The time-based policies read a clock, which differs between ranks: the checkpointer
asks them on rank 0 only and broadcasts the answer (``needs_clock``). Their inputs are seconds
since the last checkpoint (or since the start) and the measured checkpoint cost, agreed as the
maximum over ranks, since the slowest part decides when the global checkpoint is complete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

from snapline.analysis.interval import daly_interval, young_interval
from snapline.errors import ConfigError


class CheckpointPolicy(Protocol):
    """Decides at each step whether to checkpoint; see the module docstring."""

    @property
    def needs_clock(self) -> bool:
        """True when ``due`` reads time (so only rank 0 may evaluate it)."""
        ...

    def due(self, *, step: int, since_last_s: float, cost_s: float | None) -> bool:
        """Whether to checkpoint at ``step``; ``cost_s`` is None until one was measured."""
        ...


@dataclass(frozen=True, slots=True)
class EverySteps:
    """Checkpoint at every step that is a positive multiple of ``every``."""

    every: int

    def __post_init__(self) -> None:
        if type(self.every) is not int or self.every < 1:
            raise ConfigError(f"every must be a whole number of steps >= 1, got {self.every!r}")

    @property
    def needs_clock(self) -> bool:
        """Never: the step alone decides."""
        return False

    def due(self, *, step: int, since_last_s: float, cost_s: float | None) -> bool:
        """``step > 0 and step % every == 0``."""
        return step > 0 and step % self.every == 0


@dataclass(frozen=True, slots=True)
class EverySeconds:
    """Checkpoint once ``interval_s`` seconds have passed since the last one (or the start)."""

    interval_s: float

    def __post_init__(self) -> None:
        _require_seconds("interval_s", self.interval_s)

    @property
    def needs_clock(self) -> bool:
        """Always."""
        return True

    def due(self, *, step: int, since_last_s: float, cost_s: float | None) -> bool:
        """``since_last_s >= interval_s``."""
        return since_last_s >= self.interval_s


@dataclass(frozen=True, slots=True)
class YoungDaly:
    """Checkpoint at the optimal interval for the measured cost and the job's MTBF.

    ``mtbf_s`` is the mean time between failures of the whole job (not of one node).
    ``formula`` picks Daly's higher-order estimate (default) or Young's ``sqrt(2 C M)``.
    Until a checkpoint's cost has been measured the first call is due, so that it is.
    """

    mtbf_s: float
    formula: Literal["daly", "young"] = "daly"

    def __post_init__(self) -> None:
        _require_seconds("mtbf_s", self.mtbf_s)
        if self.formula not in ("daly", "young"):
            raise ConfigError(f"formula must be 'daly' or 'young', got {self.formula!r}")

    @property
    def needs_clock(self) -> bool:
        """Always."""
        return True

    def interval_s(self, cost_s: float) -> float:
        """The optimal compute time between checkpoints for a checkpoint cost of ``cost_s``."""
        # A write can be measured as 0 s on a coarse clock; the formulas need C > 0.
        cost_s = max(cost_s, 1e-6)
        if self.formula == "young":
            return young_interval(cost_s, self.mtbf_s)
        return daly_interval(cost_s, self.mtbf_s)

    def due(self, *, step: int, since_last_s: float, cost_s: float | None) -> bool:
        """Due when no cost is known yet, else once the optimal interval has passed."""
        if cost_s is None:
            return True
        return since_last_s >= self.interval_s(cost_s)


def make_policy(
    *,
    every: int | None,
    interval_s: float | None,
    mtbf_s: float | None,
) -> CheckpointPolicy:
    """The policy the ``Checkpointer``'s keyword arguments name (exactly one of them)."""
    given = [
        n
        for n, v in (("every", every), ("interval_s", interval_s), ("mtbf_s", mtbf_s))
        if v is not None
    ]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one checkpoint schedule: every=N (steps), interval_s=SECONDS or "
            f"mtbf_s=SECONDS (Young/Daly from the measured cost); got {given or 'none'}"
        )
    if every is not None:
        return EverySteps(every)
    if interval_s is not None:
        return EverySeconds(interval_s)
    assert mtbf_s is not None
    return YoungDaly(mtbf_s)


def _require_seconds(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}")
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{name} must be a positive finite number of seconds, got {value!r}")
