"""What a local job is: its configuration, and how an application spec becomes a class.

A job's configuration is plain data. The supervisor writes it to ``<store>/job.json`` (so
``snapline run --resume`` can continue a job without repeating its arguments) and hands each
worker its own copy, plus the job secret, through the worker's stdin -- never through a file
or the command line, where other processes could read the secret.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from snapline.errors import ConfigError
from snapline.runtime.process import Process

JOB_FILE = "job.json"
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min|h)?\s*$")


def parse_duration_s(text: str | float | int) -> float:
    """``"1s"``, ``"250ms"``, ``"2m"``, ``"0.5"`` (seconds) -> seconds."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _DURATION.match(text)
        if match is None:
            raise ConfigError(f"cannot read duration {text!r}: use e.g. 1s, 250ms, 2m")
        number, unit = float(match.group(1)), match.group(2) or "s"
        value = number * {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}[unit]
    if value < 0:
        raise ConfigError(f"duration must not be negative, got {text!r}")
    return value


def format_duration_s(seconds: float) -> str:
    """Seconds in a form ``parse_duration_s`` reads back: ``250ms``, ``1.5s``, ``12s``, ``2.5m``."""
    if seconds < 1.0:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60.0:
        return f"{seconds:.3g}s"
    if seconds < 3600.0:
        return f"{seconds / 60:.3g}m"
    return f"{seconds / 3600:.3g}h"


def parse_kill(spec: str) -> tuple[int, float]:
    """``"RANK@SECONDS"`` (e.g. ``"2@1.5s"``) -> (rank, seconds after start)."""
    rank_text, sep, when = spec.partition("@")
    if not sep or not rank_text.strip().isdigit():
        raise ConfigError(f"--kill {spec!r}: write RANK@SECONDS, e.g. --kill 2@1.5s")
    return int(rank_text), parse_duration_s(when)


ProcessFactory = Callable[[int, int], Process]
"""Builds rank ``r`` of an ``n``-rank job: ``factory(r, n)``."""


def app_seed(seed: int, rank: int) -> str:
    """The seed of rank ``rank``'s ``ctx.random`` -- the simulator's, so runs are comparable."""
    return f"snapline-app:{seed}:{rank}"


def is_builtin_app(spec: str) -> bool:
    """True for a built-in app name such as ``bank`` (not a ``...:Class`` spec)."""
    return ":" not in spec


def app_factory(spec: str, options: Mapping[str, Any]) -> ProcessFactory:
    """Resolve an app spec to a factory of its ranks.

    ``spec`` is a built-in app name (``bank``; ``options`` are its parameters), or
    ``path/file.py:Class`` / ``package.module:Class`` naming a ``Process`` subclass, which is
    called with the keywords it accepts among ``rank``, ``n`` and ``options``.
    """
    if is_builtin_app(spec):
        from snapline.apps import app_spec

        app = app_spec(spec)
        params = app.resolve_params(options)
        return lambda rank, n: app.factory(rank, n, params)
    cls = load_app_class(spec)
    opts = dict(options)
    return lambda rank, n: make_process(cls, rank, n, opts)


def load_app_class(spec: str) -> type[Process]:
    """Resolve ``path/file.py:Class`` or ``package.module:Class`` to the class."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ConfigError(f"app {spec!r}: write path/file.py:Class or module:Class")
    if where.endswith(".py") or os.sep in where:
        path = Path(where).resolve()
        if not path.is_file():
            raise ConfigError(f"app file {where!r} does not exist")
        module_name = f"snapline_user_app_{path.stem}_{abs(hash(str(path)))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise ConfigError(f"cannot import {where!r} as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise ConfigError(f"importing {where!r} failed:\n{user_traceback(exc)}") from exc
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise ConfigError(f"cannot import module {where!r}: {exc}") from exc
        except Exception as exc:
            raise ConfigError(f"importing {where!r} failed:\n{user_traceback(exc)}") from exc
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Process)):
        found = "is not defined" if cls is None else f"is a {type(cls).__name__}"
        raise ConfigError(
            f"{spec!r} does not name a snapline.Process subclass ({name!r} {found} in "
            f"{where!r}); write path/file.py:Class or module:Class"
        )
    return cls


_SNAPLINE_DIR = str(Path(__file__).resolve().parents[2])
_APPS_DIR = os.path.join(_SNAPLINE_DIR, "apps")


_PYTHON_DIRS = tuple(
    os.path.abspath(d) + os.sep for d in {sys.prefix, sys.base_prefix, sys.exec_prefix}
)


def _is_user_frame(filename: str) -> bool:
    # The user's files: not snapline's machinery, the standard library or installed packages
    # (``<frozen ...>`` included). The built-in apps are application code, what a user debugs.
    if filename.startswith("<"):
        return False
    path = os.path.abspath(filename)
    if path.startswith(_APPS_DIR + os.sep):
        return True
    return not path.startswith(_SNAPLINE_DIR + os.sep) and not path.startswith(_PYTHON_DIRS)


def raised_in_user_code(exc: BaseException) -> bool:
    """True when a frame of ``exc``'s traceback lies in the user's files (an application bug)."""
    return any(_is_user_frame(f.filename) for f in traceback.extract_tb(exc.__traceback__))


def user_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it, from the first frame of the user's files on.

    The frames above it (the supervisor's or the worker's machinery) say nothing about the
    user's bug and bury it; a traceback with no user frame is kept whole.
    """
    te = traceback.TracebackException.from_exception(exc)
    frames = list(te.stack)
    first = next((i for i, f in enumerate(frames) if _is_user_frame(f.filename)), None)
    if first is not None:
        te.stack = traceback.StackSummary.from_list(frames[first:])
    return "".join(te.format()).rstrip("\n")


def error_signature(exc: BaseException) -> list[str]:
    """What makes two exceptions "the same": type, message and the user frame that raised.

    The innermost user frame (file, line, function) rather than the innermost frame: a user
    bug that surfaces inside a library is still located by the user's line that called it.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if _is_user_frame(f.filename)]
    where = user[-1] if user else (frames[-1] if frames else None)
    location = "" if where is None else f"{where.filename}:{where.lineno}:{where.name}"
    return [f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), location]


def make_process(cls: type[Process], rank: int, n: int, options: Mapping[str, Any]) -> Process:
    """Instantiate the user's class with the keywords it accepts (``rank``, ``n``, options)."""
    try:
        params = dict(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        params = {}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    for key, value in (("rank", rank), ("n", n), *options.items()):
        if accepts_any or key in params:
            kwargs[key] = value
    return cls(**kwargs)


@dataclass(slots=True, kw_only=True)
class JobConfig:
    """Everything that defines a local job (all plain data)."""

    app: str
    n: int
    protocol: str = "chandy-lamport"
    topology: str = "complete"
    edges: list[list[int]] = field(default_factory=list)
    interval_s: float = 1.0
    store: str = ""
    seed: int = 0
    app_options: dict[str, Any] = field(default_factory=dict)
    protocol_options: dict[str, Any] = field(default_factory=dict)
    heartbeat_interval_s: float = 0.2
    heartbeat_timeout_s: float = 3.0
    max_restarts: int = 10
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    timeout_s: float = 600.0
    trace: bool = True
    #: Pickle what the safe codec cannot encode (unsafe for untrusted checkpoints: loading
    #: a pickle runs code).
    allow_pickle: bool = False
    #: Multi-level checkpoints (``--levels``; empty: one store per rank in the job directory),
    #: how often the remote level is written (``--flush-every``) and each rank's node
    #: (``--node-of``; empty: every rank on this host). See ``snapline.store.multilevel``.
    levels: str = ""
    flush_every: int = 0
    node_of: list[str] = field(default_factory=list)
    #: The resize generation (``<store>/resize/<g>``) whose start states are this job's
    #: initial states; empty for a job never resized (see ``runtime.local.resize``).
    resized: str = ""

    def validate(self) -> None:
        """Raise ``ConfigError`` on values that cannot work."""
        if self.n < 1:
            raise ConfigError(f"-n must be at least 1, got {self.n}")
        if self.interval_s <= 0:
            raise ConfigError("--interval must be positive")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ConfigError("--heartbeat-timeout must be longer than the heartbeat interval")
        if self.max_restarts < 0:
            raise ConfigError("--max-restarts must be >= 0")
        if not self.store:
            raise ConfigError("a job needs a store directory (--store DIR)")
        if self.levels or self.flush_every or self.node_of:
            from snapline.runtime.local.levels import node_layout

            node_layout(self)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> JobConfig:
        """Inverse of ``to_json`` (unknown keys are an error: a newer snapline wrote it)."""
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ConfigError(f"job file has unexpected content: {exc}") from exc


def save_job(store_dir: Path, config: JobConfig) -> None:
    """Write ``job.json`` atomically."""
    tmp = store_dir / f".{JOB_FILE}.tmp"
    tmp.write_text(json.dumps(config.to_json(), indent=1), encoding="utf-8")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, store_dir / JOB_FILE)


def load_job(store_dir: Path) -> JobConfig:
    """Read the ``job.json`` of a previous run (for ``--resume``)."""
    path = store_dir / JOB_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{store_dir} holds no job to resume ({JOB_FILE} missing); start it without --resume"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    return JobConfig.from_json(raw)
