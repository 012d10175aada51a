"""Reading a job's store directory from outside: its ranks' checkpoints and its recovery line.

``snapline ls JOBDIR`` and ``snapline ps`` show checkpoints; both name them with
``checkpoint_label``. A checkpoint's index is an internal id: protocols that restart their
numbering in each incarnation put the incarnation in the high bits (``index = incarnation << 32
| number``, see ``protocols.reachability``) so that no index is ever reused. People read
``4`` or ``4 (inc 1)`` (checkpoint 4 of incarnation 1), never ``4294967300``; index 0 is the
initial state, which is no checkpoint at all.

The recovery line shown is the one ``snapline run --resume`` would restore if every rank died
now: the protocol's own ``plan_recovery`` on the committed checkpoints of the ledgers, with no
survivor -- the very computation the supervisor runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from snapline.errors import SnaplineError
from snapline.protocols import protocol_class
from snapline.protocols.base import RecoveryView
from snapline.protocols.reachability import INDEX_INCARNATION_SHIFT
from snapline.runtime.local.config import JOB_FILE, JobConfig, load_job
from snapline.runtime.local.ledger import LedgerView, ledger_path, read_ledger

_NUMBER_MASK = (1 << INDEX_INCARNATION_SHIFT) - 1


def checkpoint_label(index: int) -> str:
    """``0`` -> ``none``; ``4`` -> ``4``; ``(1 << 32) + 4`` -> ``4 (inc 1)``."""
    if index <= 0:
        return "none"
    incarnation, number = index >> INDEX_INCARNATION_SHIFT, index & _NUMBER_MASK
    return str(number) if incarnation == 0 else f"{number} (inc {incarnation})"


def is_job_dir(path: Path) -> bool:
    """True for the store directory of a job started with ``snapline run``."""
    return (path / JOB_FILE).is_file()


@dataclass(frozen=True, slots=True, kw_only=True)
class JobCheckpoint:
    """One committed checkpoint of one rank."""

    rank: int
    index: int
    forced: bool
    #: On storage levels (``--levels``): the levels the ledger says hold it, fastest first.
    levels: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The checkpoint as people read it (``checkpoint_label``)."""
        return checkpoint_label(self.index)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobCheckpoints:
    """A job's committed checkpoints per rank and the line ``--resume`` would restore."""

    config: JobConfig
    checkpoints: dict[int, list[JobCheckpoint]]
    #: rank -> checkpoint index (0: the initial state); None if it cannot be computed.
    recovery_line: dict[int, int] | None
    #: Why ``recovery_line`` is None.
    problem: str = ""


def job_checkpoints(store_dir: Path) -> JobCheckpoints:
    """Read ``store_dir``'s job configuration and ledgers (never writes anything)."""
    config = load_job(store_dir)
    ledgers: dict[int, LedgerView] = {
        rank: read_ledger(ledger_path(store_dir, rank), rank) for rank in range(config.n)
    }
    checkpoints = {
        rank: [
            JobCheckpoint(
                rank=rank,
                index=rec.index,
                forced=rec.forced,
                levels=tuple(view.levels.get(rec.index, ())),
            )
            for rec in view.committed_records()
            if rec.index > 0
        ]
        for rank, view in ledgers.items()
    }
    line: dict[int, int] | None = None
    problem = ""
    try:
        view = RecoveryView(
            n=config.n,
            failed=frozenset(range(config.n)),
            committed={r: lv.committed_records() for r, lv in ledgers.items()},
            volatile={},
            message_logs={r: list(lv.message_log) for r, lv in ledgers.items()},
            edges=frozenset((int(s), int(d)) for s, d in config.edges),
        )
        plan = protocol_class(config.protocol).plan_recovery(view)
        line = {rank: int(plan.restore.get(rank, 0)) for rank in range(config.n)}
    except SnaplineError as exc:
        problem = str(exc)
    return JobCheckpoints(
        config=config, checkpoints=checkpoints, recovery_line=line, problem=problem
    )
