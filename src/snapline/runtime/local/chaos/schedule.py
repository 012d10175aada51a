"""Fault schedules: what a chaos run injects, drawn from one seed.

A run's schedule is a pure function of ``(seed, n, kinds, max_faults, heartbeat_timeout_s)``:
``draw_schedule`` draws every fault from one ``random.Random`` seeded with the run's seed, so
``snapline chaos APP --protocol P --seed N --runs 1`` injects the very same faults as run N
of any campaign (the OS still decides the interleaving of the job's messages).

Faults fire at points of the job's *progress* (a fraction of the messages the failure-free run
delivers), not at times: a fault drawn for the middle of the job lands in the middle whatever
the machine's speed or load.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass

from snapline.errors import ConfigError
from snapline.runtime.local.config import format_duration_s


class FaultKind(enum.StrEnum):
    """The faults a campaign can inject, all from outside the job."""

    #: ``kill -9`` of a random rank's worker.
    KILL = "kill"
    #: ``kill -9`` of a rank, then another ``kill -9`` while the job recovers from it (of the
    #: replacement worker, or of a survivor being rolled back).
    RECOVERY_KILL = "recovery-kill"
    #: ``SIGSTOP`` of a rank, never continued: heartbeats must detect it (one failure).
    HANG = "hang"
    #: ``SIGSTOP`` of a rank for well under the heartbeat timeout, then ``SIGCONT``: not a
    #: failure; a job that declares one is a heartbeat false positive.
    PAUSE = "pause"
    #: ``kill -9`` of the supervisor and every worker at once, then ``snapline run --resume``.
    WHOLE_JOB = "whole-job"
    #: A process without the job's secret connects to a rank's or the supervisor's socket and
    #: sends garbage or crafted frames; the job must turn it away and go on unharmed.
    STRANGER = "stranger"


#: The default campaign's faults: every kind.
DEFAULT_FAULTS: tuple[FaultKind, ...] = (
    FaultKind.KILL,
    FaultKind.RECOVERY_KILL,
    FaultKind.HANG,
    FaultKind.PAUSE,
    FaultKind.WHOLE_JOB,
    FaultKind.STRANGER,
)

#: What a stranger sends (see ``inject.stranger_bytes``).
STRANGER_PAYLOADS: tuple[str, ...] = (
    "garbage",  # random bytes at once, before reading the challenge
    "bad-array",  # after the challenge: a 3-byte frame holding a truncated array extension
    "nested-tuples",  # after the challenge: tuples nested thousands deep
    "huge-length",  # after the challenge: a length prefix of 4 GiB - 1
    "forged-hello",  # after the challenge: a well-formed reply with a wrong MAC
    "silent",  # connect, read the challenge, say nothing until the acceptor gives up
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One fault of a schedule.

    ``at`` is the progress point (0..1 of the failure-free run's deliveries) at which it fires;
    ``rank`` its target (for ``whole-job`` unused; for ``stranger`` -1 means the supervisor's
    control socket). ``recovery-kill`` kills ``rank``, then ``second_rank`` (the replacement
    when equal) ``delay_s`` after the recovery starts. ``pause`` lasts ``pause_s``.
    """

    kind: FaultKind
    at: float
    rank: int
    second_rank: int = -1
    delay_s: float = 0.0
    pause_s: float = 0.0
    payload: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.at <= 1.0:
            raise ConfigError(f"fault progress point must be in 0..1, got {self.at}")

    def describe(self) -> str:
        """Short human form, e.g. ``kill r1@40%``."""
        where = f"{self.at:.0%}"
        match self.kind:
            case FaultKind.KILL | FaultKind.HANG:
                return f"{self.kind} r{self.rank}@{where}"
            case FaultKind.RECOVERY_KILL:
                second = "replacement" if self.second_rank == self.rank else f"r{self.second_rank}"
                return f"{self.kind} r{self.rank}@{where}+{second}"
            case FaultKind.PAUSE:
                return f"pause r{self.rank}@{where} for {format_duration_s(self.pause_s)}"
            case FaultKind.WHOLE_JOB:
                return f"whole-job@{where}"
            case FaultKind.STRANGER:
                target = "control" if self.rank < 0 else f"r{self.rank}"
                return f"stranger {self.payload}->{target}@{where}"


def parse_faults(text: str | Iterable[str]) -> tuple[FaultKind, ...]:
    """``"kill,hang"`` (or a list of names; ``all``; ``default``) -> fault kinds, in order."""
    items = [text] if isinstance(text, str) else list(text)
    names = [part.strip() for item in items for part in item.split(",") if part.strip()]
    kinds: list[FaultKind] = []
    for name in names:
        if name == "all":
            chosen: Iterable[FaultKind] = FaultKind
        elif name == "default":
            chosen = DEFAULT_FAULTS
        else:
            try:
                chosen = (FaultKind(name),)
            except ValueError:
                raise ConfigError(
                    f"unknown fault {name!r}; choose from {', '.join(k.value for k in FaultKind)}"
                    ", all or default"
                ) from None
        kinds.extend(k for k in chosen if k not in kinds)
    if not kinds:
        raise ConfigError("choose at least one fault (e.g. --faults kill)")
    return tuple(kinds)


def draw_schedule(
    seed: int,
    *,
    n: int,
    kinds: tuple[FaultKind, ...],
    max_faults: int = 3,
    heartbeat_timeout_s: float = 3.0,
) -> tuple[Fault, ...]:
    """The faults of the run with this seed, ordered by progress point (see the module doc)."""
    if n < 1:
        raise ConfigError(f"a chaos run needs at least one rank, got n={n}")
    if max_faults < 1:
        raise ConfigError(f"max_faults must be >= 1, got {max_faults}")
    if not kinds:
        raise ConfigError("choose at least one fault kind")
    rng = random.Random(f"snapline-chaos:{seed}")
    count = rng.randint(1, max_faults)
    faults: list[Fault] = []
    whole_job_drawn = False
    for _ in range(count):
        kind = rng.choice(kinds)
        # Late points leave the job time to finish after its last recovery; early ones let a
        # fault land before any checkpoint (recovery from the initial state).
        at = round(rng.uniform(0.05, 0.8), 3)
        rank = rng.randrange(n)
        if kind is FaultKind.WHOLE_JOB and whole_job_drawn:
            kind = FaultKind.KILL  # one resume per run keeps the runs comparable
        match kind:
            case FaultKind.RECOVERY_KILL:
                second = rank if rng.random() < 0.5 or n == 1 else rng.randrange(n)
                faults.append(
                    Fault(
                        kind=kind,
                        at=at,
                        rank=rank,
                        second_rank=second,
                        delay_s=round(rng.uniform(0.0, 0.3), 3),
                    )
                )
            case FaultKind.PAUSE:
                pause_s = round(rng.uniform(0.05, 0.25) * heartbeat_timeout_s, 3)
                faults.append(Fault(kind=kind, at=at, rank=rank, pause_s=pause_s))
            case FaultKind.STRANGER:
                target = -1 if rng.random() < 0.3 else rank
                payload = rng.choice(STRANGER_PAYLOADS)
                faults.append(Fault(kind=kind, at=at, rank=target, payload=payload))
            case FaultKind.WHOLE_JOB:
                whole_job_drawn = True
                faults.append(Fault(kind=kind, at=at, rank=-1))
            case FaultKind.KILL | FaultKind.HANG:
                faults.append(Fault(kind=kind, at=at, rank=rank))
    return tuple(sorted(faults, key=lambda f: f.at))
