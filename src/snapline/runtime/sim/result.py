"""What a simulated run returns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapline.runtime.sim.checks import CheckOutcome
from snapline.runtime.sim.config import SimConfig
from snapline.runtime.trace import Trace


@dataclass(slots=True, kw_only=True)
class SimResult:
    """The outcome of ``run_simulation``: results, stats, checks and (optionally) the trace.

    ``results[r]`` is rank r's ``Process.result()``; ``outputs[r]`` its released outputs;
    ``recoveries`` one record per recovery (the trace format's ``recoveries`` entries).
    """

    config: SimConfig
    results: list[object]
    stats: dict[str, Any]
    checks: list[CheckOutcome]
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[list[object]] = field(default_factory=list)
    trace: Trace | None = None

    @property
    def passed(self) -> bool:
        """Whether every checker passed (a failing checker raises, so normally True)."""
        return all(c.passed for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (results are included when they are plain data)."""
        return {
            "command": self.config.command(),
            "app": self.config.app,
            "protocol": self.config.protocol,
            "n": self.config.n,
            "seed": self.config.seed,
            "stats": self.stats,
            "checks": [
                {"name": c.name, "passed": c.passed, "runs": c.runs, "detail": c.detail}
                for c in self.checks
            ],
            "recoveries": self.recoveries,
            "results": _jsonable(self.results),
        }

    def write_json(self, path: str | Path) -> None:
        """Write ``to_json()`` to ``path``."""
        Path(path).write_text(
            json.dumps(self.to_json(), indent=2, sort_keys=True, default=repr) + "\n",
            encoding="utf-8",
        )


def _jsonable(value: object) -> object:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value
