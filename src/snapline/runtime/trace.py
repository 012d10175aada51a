"""The trace format: what happened in a run, written by every driver, read by viz and compare.

Theory of operation
-------------------
A trace is one JSON object (see docs/trace-format.md)::

    {"format": "snapline-trace", "version": 1, "n": 4, "protocol": "chandy-lamport",
     "app": "bank", "seed": 7, "edges": [[0, 1], ...], "time_unit": "s",
     "events": [{"t": 0.5, "rank": 0, "kind": "send", "dst": 1, "seq": 1, ...}, ...],
     "recoveries": [{"t_detect": ..., "t_done": ..., "failed": [...], "restore": {"1": 3},
                     "replayed": 2, "rolled_back_s": {"1": 12.5}}],
     "stats": {...}}

Events are in time order (ties in the order they happened). ``TraceWriter`` collects events
while a driver runs (drivers call it only when tracing is on, so a run without a trace pays
nothing); ``load_trace`` reads a file back and validates every field it relies on, raising
``ConfigError`` with the path and the offending event instead of a ``KeyError`` later.
Loading is plain JSON: it never executes code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapline.errors import ConfigError

TRACE_FORMAT = "snapline-trace"
TRACE_VERSION = 1

#: Every event kind and the extra fields it must carry (besides t, rank, kind).
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "send": ("dst", "seq"),
    "deliver": ("src", "seq"),
    "control_send": ("dst", "what"),
    "control_recv": ("src", "what"),
    "checkpoint": ("index", "forced"),
    "persisted": ("index",),
    "commit": ("index",),
    "discard": ("index",),
    "crash": (),
    "restore": ("index",),
    "replay": ("src", "seq"),
    "output": (),
    "finish": (),
    "snapshot_complete": ("index",),
}


@dataclass(slots=True)
class Trace:
    """A run's trace in memory (what ``load_trace`` returns and ``TraceWriter`` builds)."""

    n: int
    protocol: str
    app: str
    seed: int
    edges: list[tuple[int, int]]
    events: list[dict[str, Any]] = field(default_factory=list)
    recoveries: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this trace."""
        return {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "n": self.n,
            "protocol": self.protocol,
            "app": self.app,
            "seed": self.seed,
            "edges": [list(e) for e in sorted(self.edges)],
            "time_unit": "s",
            "events": self.events,
            "recoveries": self.recoveries,
            "stats": self.stats,
        }

    def dumps(self) -> str:
        """Serialise to a JSON string (deterministic: the same run gives the same bytes)."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), default=_plain)

    def write(self, path: str | Path) -> None:
        """Write the trace to ``path`` as JSON."""
        Path(path).write_text(self.dumps() + "\n", encoding="utf-8")

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The events of one kind, in order."""
        return [e for e in self.events if e["kind"] == kind]


class TraceWriter:
    """Collects trace events and recoveries during a run."""

    __slots__ = ("trace",)

    def __init__(
        self, *, n: int, protocol: str, app: str, seed: int, edges: Iterable[tuple[int, int]]
    ) -> None:
        self.trace = Trace(n=n, protocol=protocol, app=app, seed=seed, edges=list(edges))

    def event(self, t: float, rank: int, kind: str, fields: Mapping[str, Any]) -> None:
        """Append one event at time ``t``."""
        self.trace.events.append({"t": t, "rank": rank, "kind": kind, **fields})

    def recovery(self, record: Mapping[str, Any]) -> None:
        """Append one recovery record."""
        self.trace.recoveries.append(dict(record))

    def finish(self, stats: Mapping[str, Any]) -> Trace:
        """Attach the run's stats and return the trace."""
        self.trace.stats = dict(stats)
        return self.trace


def _plain(value: Any) -> object:
    # numpy scalars and other number-likes end up in stats; write them as numbers.
    if hasattr(value, "item"):
        return value.item()
    return repr(value)


def _need(obj: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ConfigError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds in (int, float)):
        raise ConfigError(f"{where}: field {key!r} has the wrong type ({value!r})")
    return value


def parse_trace(data: object, *, source: str = "trace") -> Trace:
    """Validate a decoded trace object and build a ``Trace``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a trace is a JSON object")
    if data.get("format") != TRACE_FORMAT:
        raise ConfigError(f"{source}: not a snapline trace (format {data.get('format')!r})")
    if data.get("version") != TRACE_VERSION:
        raise ConfigError(
            f"{source}: trace version {data.get('version')!r} is not supported "
            f"(this snapline reads version {TRACE_VERSION})"
        )
    n = _need(data, "n", int, source)
    if n < 1:
        raise ConfigError(f"{source}: n must be >= 1")
    edges_raw = _need(data, "edges", list, source)
    edges: list[tuple[int, int]] = []
    for edge in edges_raw:
        if (
            not isinstance(edge, list)
            or len(edge) != 2
            or not all(isinstance(x, int) and 0 <= x < n for x in edge)
        ):
            raise ConfigError(f"{source}: bad edge {edge!r}")
        edges.append((edge[0], edge[1]))
    events = _need(data, "events", list, source)
    last_t = -math.inf
    for i, event in enumerate(events):
        where = f"{source}: event {i}"
        if not isinstance(event, dict):
            raise ConfigError(f"{where}: not an object")
        t = _need(event, "t", (int, float), where)
        if t < last_t:
            raise ConfigError(f"{where}: time {t} goes backwards (previous {last_t})")
        last_t = t
        rank = _need(event, "rank", int, where)
        if not 0 <= rank < n:
            raise ConfigError(f"{where}: rank {rank} outside 0..{n - 1}")
        kind = _need(event, "kind", str, where)
        if kind not in EVENT_FIELDS:
            raise ConfigError(f"{where}: unknown kind {kind!r}")
        for key in EVENT_FIELDS[kind]:
            if key not in event:
                raise ConfigError(f"{where}: {kind} event lacks {key!r}")
    recoveries = _need(data, "recoveries", list, source)
    for i, rec in enumerate(recoveries):
        where = f"{source}: recovery {i}"
        if not isinstance(rec, dict):
            raise ConfigError(f"{where}: not an object")
        _need(rec, "t_detect", (int, float), where)
        _need(rec, "t_done", (int, float), where)
        _need(rec, "failed", list, where)
        _need(rec, "restore", dict, where)
        _need(rec, "replayed", int, where)
        _need(rec, "rolled_back_s", dict, where)
    stats = data.get("stats", {})
    if not isinstance(stats, dict):
        raise ConfigError(f"{source}: stats must be an object")
    return Trace(
        n=n,
        protocol=str(_need(data, "protocol", str, source)),
        app=str(_need(data, "app", str, source)),
        seed=int(_need(data, "seed", int, source)),
        edges=edges,
        events=events,
        recoveries=recoveries,
        stats=stats,
    )


def load_trace(path: str | Path) -> Trace:
    """Read and validate a trace file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read trace {p}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return parse_trace(data, source=str(p))
