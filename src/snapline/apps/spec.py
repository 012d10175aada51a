"""What an example app declares: its Process factory, topology, parameters and invariants."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snapline.errors import ConfigError
from snapline.runtime.process import Process, State


@dataclass(frozen=True, slots=True, kw_only=True)
class CutView:
    """A global state to check an invariant on: one state per rank plus what is in transit.

    ``in_transit`` holds the payloads sent in the cut and not delivered in it (on the network,
    waiting at the receiver, or held by the protocol), in no particular order.
    """

    n: int
    params: Mapping[str, Any]
    states: Mapping[int, State]
    in_transit: Sequence[object]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppSpec:
    """One example app: how to build its ranks and how to tell that a run went right.

    ``check_cut`` returns a violation message (or None) for any consistent global state;
    ``check_final`` does the same for the final ``Process.result()`` of every rank.
    ``deterministic`` apps end with the same results whatever the schedule and failures.
    ``size_param`` is the parameter ``--messages`` sets (messages per rank, rounds, steps).
    ``outputs_deterministic`` apps release the same outputs per rank (as a multiset) under any
    schedule and failures: the simulator compares them with the failure-free run's.
    """

    name: str
    description: str
    factory: Callable[[int, int, Mapping[str, Any]], Process]
    default_topology: str
    deterministic: bool
    params: Mapping[str, Any] = field(default_factory=dict)
    size_param: str = "messages"
    outputs_deterministic: bool = False
    check_cut: Callable[[CutView], str | None] | None = None
    check_final: Callable[[Sequence[object], Mapping[str, Any], int], str | None] | None = None
    #: Parameters fixed when a job of ``n`` ranks starts, so that resuming it on another
    #: number of ranks keeps them (``params, n -> params``); None: nothing to fix.
    pin_params: Callable[[Mapping[str, Any], int], dict[str, Any]] | None = None

    def resolve_params(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults updated by ``overrides``; strings (from the CLI) take the default's type."""
        params = dict(self.params)
        for key, value in overrides.items():
            if key not in self.params:
                raise ConfigError(
                    f"app {self.name!r} has no parameter {key!r}; it takes: "
                    f"{', '.join(sorted(self.params)) or 'none'}"
                )
            default = self.params[key]
            if isinstance(value, str) and not isinstance(default, str):
                try:
                    value = float(value) if isinstance(default, float) else int(value)
                except ValueError:
                    raise ConfigError(f"app parameter {key}={value!r} must be a number") from None
            params[key] = value
        return params
