"""How often to checkpoint: Young's and Daly's optimal intervals and Daly's cost model.

Theory of operation
-------------------
A job that checkpoints every ``tau`` seconds of work pays the checkpoint cost ``C`` once per
interval, and on each failure loses the work done since the last checkpoint plus the restart
time ``R``. Checkpointing too often wastes time writing; too rarely wastes time re-computing.

* Young (1974) minimised a first-order model and found ``tau_opt = sqrt(2 C M)``, where ``M`` is
  the mean time between failures (of the whole job, not of one process).
  J. W. Young, "A first order approximation to the optimum checkpoint interval",
  Communications of the ACM 17(9), 1974.
* Daly (2006) modelled exponential failures exactly: the expected wall time to finish ``T_s``
  seconds of work is ``T_w(tau) = M e^(R/M) (e^((tau + C)/M) - 1) T_s / tau``, and gave the
  higher-order estimate of its minimiser
  ``tau_opt = sqrt(2 C M) [1 + (1/3) sqrt(C/(2M)) + (1/9) (C/(2M))] - C`` for ``C < 2M``, and
  ``tau_opt = M`` otherwise.
  J. T. Daly, "A higher order estimate of the optimum checkpoint interval for restart dumps",
  Future Generation Computer Systems 22(3), 2006.

``tau`` here is the *compute* time between checkpoints (Daly's convention: the checkpoint's own
cost ``C`` is not part of ``tau``). The restart time ``R`` scales ``T_w`` by ``e^(R/M)`` and so
does not move the optimum. All times are seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from snapline.errors import ConfigError


def _require_positive(name: str, value: float) -> None:
    # NaN fails every comparison, so "not > 0" also rejects it.
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{name} must be a positive finite number of seconds, got {value!r}")


def _require_non_negative(name: str, value: float) -> None:
    if not value >= 0 or math.isinf(value):
        raise ConfigError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


def young_interval(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Young's first-order optimal checkpoint interval ``sqrt(2 C M)`` (CACM 1974), seconds."""
    _require_positive("checkpoint cost", checkpoint_cost_s)
    _require_positive("MTBF", mtbf_s)
    return math.sqrt(2.0 * checkpoint_cost_s * mtbf_s)


def daly_interval(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimal checkpoint interval (FGCS 2006), seconds.

    ``sqrt(2CM) [1 + (1/3) sqrt(C/(2M)) + (1/9) (C/(2M))] - C`` when ``C < 2M``, else ``M``.
    """
    _require_positive("checkpoint cost", checkpoint_cost_s)
    _require_positive("MTBF", mtbf_s)
    c, m = checkpoint_cost_s, mtbf_s
    if c >= 2.0 * m:
        return m
    ratio = c / (2.0 * m)
    return math.sqrt(2.0 * c * m) * (1.0 + math.sqrt(ratio) / 3.0 + ratio / 9.0) - c


def expected_wall_time(
    work_s: float,
    interval_s: float,
    checkpoint_cost_s: float,
    mtbf_s: float,
    restart_s: float = 0.0,
) -> float:
    """Daly's expected wall time to finish ``work_s`` of computation (FGCS 2006).

    ``T_w = M e^(R/M) (e^((tau + C)/M) - 1) T_s / tau`` with exponentially distributed
    failures of mean ``M``, checkpoint cost ``C``, restart time ``R`` and interval ``tau``.
    """
    _require_positive("work", work_s)
    _require_positive("interval", interval_s)
    _require_non_negative("checkpoint cost", checkpoint_cost_s)
    _require_positive("MTBF", mtbf_s)
    _require_non_negative("restart time", restart_s)
    m = mtbf_s
    # expm1 keeps precision when (tau + C) << M, the common case.
    per_interval = m * math.exp(restart_s / m) * math.expm1((interval_s + checkpoint_cost_s) / m)
    return per_interval * work_s / interval_s


def waste_fraction(
    interval_s: float,
    checkpoint_cost_s: float,
    mtbf_s: float,
    restart_s: float = 0.0,
) -> float:
    """Fraction of wall time not spent on useful work, ``1 - T_s / T_w``, under Daly's model.

    Independent of the amount of work, since ``T_w`` is proportional to it.
    """
    wall = expected_wall_time(1.0, interval_s, checkpoint_cost_s, mtbf_s, restart_s)
    return 1.0 - 1.0 / wall


@dataclass(frozen=True, slots=True, kw_only=True)
class IntervalAdvice:
    """Young's and Daly's intervals next to a run's own, each with its modeled waste."""

    checkpoint_cost_s: float
    mtbf_s: float
    restart_s: float
    young_s: float
    daly_s: float
    run_interval_s: float | None
    young_waste: float
    daly_waste: float
    run_waste: float | None

    @property
    def run_vs_daly(self) -> float | None:
        """The run's interval divided by Daly's optimum (1.0 = optimal, < 1 = too often)."""
        if self.run_interval_s is None:
            return None
        return self.run_interval_s / self.daly_s


def advise_interval(
    checkpoint_cost_s: float,
    mtbf_s: float,
    *,
    restart_s: float = 0.0,
    run_interval_s: float | None = None,
) -> IntervalAdvice:
    """Compute both optimal intervals and the modeled waste at each (and at the run's)."""
    young = young_interval(checkpoint_cost_s, mtbf_s)
    daly = daly_interval(checkpoint_cost_s, mtbf_s)
    run_waste = None
    if run_interval_s is not None:
        run_waste = waste_fraction(run_interval_s, checkpoint_cost_s, mtbf_s, restart_s)
    return IntervalAdvice(
        checkpoint_cost_s=checkpoint_cost_s,
        mtbf_s=mtbf_s,
        restart_s=restart_s,
        young_s=young,
        daly_s=daly,
        run_interval_s=run_interval_s,
        young_waste=waste_fraction(young, checkpoint_cost_s, mtbf_s, restart_s),
        daly_waste=waste_fraction(daly, checkpoint_cost_s, mtbf_s, restart_s),
        run_waste=run_waste,
    )
