"""The configuration of one simulated run: job, network model, fault model, limits.

Everything random in a run is drawn from one ``random.Random(seed)`` (the per-rank
``ctx.random`` generators are derived from the same seed), so a ``SimConfig`` and its seed
identify a run exactly; ``SimConfig.command()`` prints the ``snapline sim`` line that replays it.

Delays are given as small distribution specs (``Delay``): ``const:X``, ``uniform:A:B``,
``exp:MEAN`` (exponential with that mean) or ``lognormal:MEDIAN:SIGMA``, all in seconds.
"""

from __future__ import annotations

import json
import math
import random
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from snapline.errors import ConfigError
from snapline.protocols.base import Protocol
from snapline.runtime.process import Process


@dataclass(frozen=True, slots=True)
class Delay:
    """A delay distribution in seconds, parsed from ``kind:arg[:arg]``."""

    kind: str
    a: float
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("const", "uniform", "exp", "lognormal"):
            raise ConfigError(
                f"unknown delay kind {self.kind!r}: use const:X, uniform:A:B, exp:MEAN "
                "or lognormal:MEDIAN:SIGMA"
            )
        if self.a < 0 or self.b < 0 or (self.kind == "uniform" and self.b < self.a):
            raise ConfigError(f"bad delay {self.spec()!r}: bounds must be >= 0 and A <= B")

    @classmethod
    def parse(cls, spec: str | float | Delay) -> Delay:
        """``exp:0.05`` -> ``Delay("exp", 0.05)``; a bare number means ``const``."""
        if isinstance(spec, Delay):
            return spec
        if isinstance(spec, int | float):
            return cls("const", float(spec))
        parts = spec.split(":")
        try:
            if len(parts) == 1:
                return cls("const", float(parts[0]))
            if len(parts) == 2:
                return cls(parts[0], float(parts[1]))
            if len(parts) == 3:
                return cls(parts[0], float(parts[1]), float(parts[2]))
        except ValueError:
            pass
        raise ConfigError(
            f"bad delay spec {spec!r}: use const:X, uniform:A:B, exp:MEAN or lognormal:MEDIAN:SIGMA"
        )

    def spec(self) -> str:
        """The string form that ``parse`` reads back."""
        if self.kind in ("uniform", "lognormal"):
            return f"{self.kind}:{self.a:g}:{self.b:g}"
        return f"{self.kind}:{self.a:g}"

    def sampler(self, rng: random.Random) -> Callable[[], float]:
        """A zero-argument function drawing from this distribution with ``rng``."""
        a, b = self.a, self.b
        if self.kind == "const":
            return lambda: a
        if self.kind == "uniform":
            # random.uniform's own formula, inlined: the same draws, one Python call fewer.
            draw, span = rng.random, b - a
            return lambda: a + span * draw()
        if self.kind == "exp":
            if a == 0:
                return lambda: 0.0
            expovariate, rate = rng.expovariate, 1.0 / a
            return lambda: expovariate(rate)
        lognormvariate, mu = rng.lognormvariate, math.log(a) if a > 0 else 0.0
        return lambda: lognormvariate(mu, b)


@dataclass(frozen=True, slots=True)
class Partition:
    """Ranks in ``group`` cannot talk to the others from ``start_s`` until ``end_s``."""

    start_s: float
    end_s: float
    group: frozenset[int]

    @classmethod
    def parse(cls, spec: str) -> Partition:
        """``0,1,2@10-20``: ranks 0, 1, 2 are cut off from the rest from t=10 s to t=20 s."""
        try:
            ranks, window = spec.split("@")
            start, end = window.split("-")
            group = frozenset(int(r) for r in ranks.split(","))
            part = cls(float(start), float(end), group)
        except ValueError:
            raise ConfigError(
                f"bad partition {spec!r}: use RANKS@START-END, e.g. 0,1@10-20"
            ) from None
        if part.end_s <= part.start_s:
            raise ConfigError(f"partition {spec!r} must end after it starts")
        return part

    def spec(self) -> str:
        """The string form that ``parse`` reads back."""
        return f"{','.join(map(str, sorted(self.group)))}@{self.start_s:g}-{self.end_s:g}"


ProcessFactory = Callable[[int, int], Process]
"""Builds rank ``r`` of an ``n``-rank job: ``factory(r, n)``."""


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """One simulated job. Defaults give a small fault-free run of the bank app."""

    # The job.
    app: str | None = "bank"
    n: int = 4
    protocol: str = "none"
    topology: str | None = None
    seed: int = 0
    app_params: Mapping[str, Any] = field(default_factory=dict)
    protocol_options: Mapping[str, Any] = field(default_factory=dict)
    interval_s: float | None = 50.0
    #: ``"all"`` or ``"one"`` (rank 0 only); None: what the protocol class declares.
    checkpoint_requests: str | None = None
    #: A user's Process class or factory (``snapline.testing``); replaces ``app``.
    process_factory: ProcessFactory | None = None
    #: Whether ``process_factory`` processes give the same result whatever the schedule.
    deterministic: bool = False
    #: A protocol class to run instead of the registered ``protocol`` (testing your own).
    protocol_cls: type[Protocol] | None = None

    # The network.
    delay: str = "uniform:0.01:0.1"
    channel_delays: Mapping[tuple[int, int], str] = field(default_factory=dict)
    reorder: bool = False
    loss_rate: float = 0.0
    dup_rate: float = 0.0
    rto_s: float = 0.2
    partitions: tuple[Partition, ...] = ()

    # Faults.
    crash_at: tuple[tuple[int, float], ...] = ()
    crash_rate: float = 0.0
    crash_burst: int = 1
    crash_in_write: float = 0.0
    crash_in_recovery: float = 0.0
    max_crashes: int = 10
    faults_until_s: float | None = None
    detect_delay_s: float = 1.0
    restart_delay_s: float = 1.0
    persist_delay: str = "exp:0.2"
    slow_disks: Mapping[int, str] = field(default_factory=dict)
    log_delay: str = "exp:0.01"

    # Limits and outputs.
    max_time_s: float = 1e6
    stall_timeout_s: float = 2000.0
    max_events: int = 200_000_000
    trace: bool = False
    check_payloads: bool = True
    reference: bool = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"n must be >= 1, got {self.n}")
        if self.app is None and self.process_factory is None:
            raise ConfigError("give an app name or a process_factory")
        for name in ("loss_rate", "dup_rate", "crash_in_write", "crash_in_recovery"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if self.crash_rate < 0 or self.max_crashes < 0 or self.crash_burst < 1:
            raise ConfigError("crash_rate and max_crashes must be >= 0 and crash_burst >= 1")
        if self.checkpoint_requests not in (None, "all", "one"):
            raise ConfigError(
                f"checkpoint_requests must be 'all' or 'one', got {self.checkpoint_requests!r}"
            )
        if self.interval_s is not None and self.interval_s <= 0:
            raise ConfigError(f"interval_s must be > 0, got {self.interval_s}")
        for rank, t in self.crash_at:
            if not 0 <= rank < self.n or t < 0:
                raise ConfigError(f"crash_at entry ({rank}, {t}) is outside the job")
        for spec in (self.delay, self.persist_delay, self.log_delay, *self.slow_disks.values()):
            Delay.parse(spec)
        for spec in self.channel_delays.values():
            Delay.parse(spec)
        if self.detect_delay_s < 0 or self.restart_delay_s < 0 or self.rto_s <= 0:
            raise ConfigError("detect/restart delays must be >= 0 and rto_s > 0")

    def command(self) -> str:
        """The ``snapline sim`` command line that replays this run (apps only)."""
        if self.app is None or self.process_factory is not None or self.protocol_cls is not None:
            return (
                f"snapline.testing.simulate(<your Process>, n={self.n}, "
                f"protocol={self.protocol!r}, seed={self.seed}, ...)"
            )
        args = ["snapline", "sim", "--app", self.app, "-n", str(self.n)]
        args += ["--protocol", self.protocol, "--seed", str(self.seed)]
        defaults = {f.name: f.default for f in fields(SimConfig)}
        if self.topology is not None:
            args += ["--topology", self.topology]
        args += ["--interval", "none" if self.interval_s is None else f"{self.interval_s:g}"]
        for key, value in sorted(self.app_params.items()):
            args += ["--param", f"{key}={value}"]
        for key, value in sorted(self.protocol_options.items()):
            # The CLI reads option values as JSON (``gc=false``, not Python's ``False``).
            args += ["--option", f"{key}={json.dumps(value)}"]
        simple = {
            "delay": "--delay",
            "loss_rate": "--loss",
            "dup_rate": "--dup",
            "rto_s": "--rto",
            "crash_rate": "--crash-rate",
            "crash_burst": "--crash-burst",
            "crash_in_write": "--crash-in-write",
            "crash_in_recovery": "--crash-in-recovery",
            "max_crashes": "--max-crashes",
            "faults_until_s": "--faults-until",
            "detect_delay_s": "--detect-delay",
            "restart_delay_s": "--restart-delay",
            "persist_delay": "--persist-delay",
            "log_delay": "--log-delay",
            "max_time_s": "--max-time",
            "stall_timeout_s": "--stall-timeout",
        }
        for name, flag in simple.items():
            value = getattr(self, name)
            if value != defaults[name]:
                args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
        if self.reorder:
            args.append("--reorder")
        if self.checkpoint_requests is not None:
            args += ["--requests", self.checkpoint_requests]
        for part in self.partitions:
            args += ["--partition", part.spec()]
        for rank, t in self.crash_at:
            args += ["--crash-at", f"{rank}@{t:g}"]
        for rank, spec in sorted(self.slow_disks.items()):
            args += ["--slow-disk", f"{rank}={spec}"]
        for (src, dst), spec in sorted(self.channel_delays.items()):
            args += ["--channel-delay", f"{src}-{dst}={spec}"]
        return shlex.join(args)
