"""A checked, typed view of a run's trace, as the analysis tools read it.

Theory of operation
-------------------
Both drivers write a trace as one JSON object (``docs/trace-format.md``)::

    {"format": "snapline-trace", "version": 1, "n", "protocol", "app", "seed", "edges",
     "time_unit": "s", "events": [{"t", "rank", "kind", ...fields}], "recoveries": [...],
     "stats": {...}}

Files are read by ``snapline.runtime.trace.load_trace`` (the format's owner). ``view_trace``
takes the decoded object (it never evaluates anything), checks the type and range of every
field the analysis tools rely on -- ranks inside the job, integer sequence numbers, boolean
``forced`` -- and raises ``ConfigError`` naming the first bad one, and returns a ``Trace``
whose events are sorted by time (stable, so same-time events keep their written order). Event
kinds this version does not know are kept but not checked, so a newer driver's extra events
do not break the analysis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard

from snapline.errors import ConfigError
from snapline.runtime.trace import TRACE_FORMAT, TRACE_VERSION
from snapline.runtime.trace import Trace as RuntimeTrace

# The fields each known event kind must carry, with their JSON types.
_INT = "int"
_BOOL = "bool"
_STR = "str"
_EVENT_FIELDS: Mapping[str, Mapping[str, str]] = {
    "send": {"dst": _INT, "seq": _INT},
    "deliver": {"src": _INT, "seq": _INT},
    "control_send": {"dst": _INT},
    "control_recv": {"src": _INT},
    "checkpoint": {"index": _INT, "forced": _BOOL},
    "persisted": {"index": _INT},
    "commit": {"index": _INT},
    "discard": {"index": _INT},
    "crash": {},
    "restore": {"index": _INT},
    "replay": {"src": _INT, "seq": _INT},
    "output": {},
    "finish": {},
}
KNOWN_EVENT_KINDS: frozenset[str] = frozenset(_EVENT_FIELDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceEvent:
    """One event on one rank at time ``t`` (seconds); ``fields`` holds the kind's own data."""

    t: float
    rank: int
    kind: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def int_field(self, name: str) -> int:
        """A checked integer field (present for every known kind that declares it)."""
        value = self.fields[name]
        assert isinstance(value, int)
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceRecovery:
    """One recovery: detection and completion times, who failed, what each rank restored."""

    t_detect: float
    t_done: float
    failed: frozenset[int]
    restore: Mapping[int, int]
    replayed: int
    rolled_back_s: Mapping[int, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    """A parsed, validated trace; events sorted by time."""

    n: int
    protocol: str
    app: str
    seed: int | None
    edges: frozenset[tuple[int, int]]
    events: tuple[TraceEvent, ...]
    recoveries: tuple[TraceRecovery, ...]
    stats: Mapping[str, Any]

    @property
    def end_t(self) -> float:
        """Time of the last event or recovery (0.0 for an empty trace)."""
        last = max((e.t for e in self.events), default=0.0)
        return max([last, *(r.t_done for r in self.recoveries)])


def _bad(where: str, what: str) -> ConfigError:
    return ConfigError(
        f"invalid trace: {where}: {what}; a snapline trace is written by `snapline sim --trace` "
        "or `snapline run --trace` (see docs/trace-format.md)"
    )


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass in Python but never a valid rank, index or count.
    return isinstance(value, int) and not isinstance(value, bool)


def _time(value: object, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(where, f"time must be a number, got {value!r}")
    as_float = float(value)
    if not math.isfinite(as_float) or as_float < 0:
        raise _bad(where, f"time must be finite and >= 0, got {value!r}")
    return as_float


def _rank(value: object, n: int, where: str) -> int:
    if not _is_int(value):
        raise _bad(where, f"rank must be an integer, got {value!r}")
    if not 0 <= value < n:
        raise _bad(where, f"rank {value} is outside 0..{n - 1}")
    return value


def _rank_key(key: object, n: int, where: str) -> int:
    # JSON object keys are strings; accept "3" as well as 3 (a dict built in Python).
    if isinstance(key, str):
        try:
            key = int(key)
        except ValueError:
            raise _bad(where, f"rank key must be an integer, got {key!r}") from None
    return _rank(key, n, where)


def _parse_event(raw: object, n: int, position: int) -> TraceEvent:
    where = f"events[{position}]"
    if not isinstance(raw, Mapping):
        raise _bad(where, f"must be an object, got {type(raw).__name__}")
    for key in ("t", "rank", "kind"):
        if key not in raw:
            raise _bad(where, f"missing {key!r}")
    kind = raw["kind"]
    if not isinstance(kind, str):
        raise _bad(where, f"kind must be a string, got {kind!r}")
    t = _time(raw["t"], where)
    rank = _rank(raw["rank"], n, where)
    fields = {k: v for k, v in raw.items() if k not in ("t", "rank", "kind")}
    for name, json_type in _EVENT_FIELDS.get(kind, {}).items():
        if name not in fields:
            raise _bad(where, f"{kind!r} event has no {name!r} field")
        value = fields[name]
        if json_type == _INT and not _is_int(value):
            raise _bad(where, f"{kind}.{name} must be an integer, got {value!r}")
        if json_type == _BOOL and not isinstance(value, bool):
            raise _bad(where, f"{kind}.{name} must be true or false, got {value!r}")
        if name in ("dst", "src"):
            _rank(value, n, f"{where}.{name}")
    if kind == "send" and "piggyback_bytes" in fields:
        pb = fields["piggyback_bytes"]
        if not _is_int(pb) or pb < 0:
            raise _bad(where, f"send.piggyback_bytes must be an integer >= 0, got {pb!r}")
    return TraceEvent(t=t, rank=rank, kind=kind, fields=MappingProxyType(fields))


def _parse_recovery(raw: object, n: int, position: int) -> TraceRecovery:
    where = f"recoveries[{position}]"
    if not isinstance(raw, Mapping):
        raise _bad(where, f"must be an object, got {type(raw).__name__}")
    for key in ("t_detect", "t_done", "failed", "restore"):
        if key not in raw:
            raise _bad(where, f"missing {key!r}")
    t_detect = _time(raw["t_detect"], f"{where}.t_detect")
    t_done = _time(raw["t_done"], f"{where}.t_done")
    if t_done < t_detect:
        raise _bad(where, f"t_done {t_done} is before t_detect {t_detect}")
    failed_raw = raw["failed"]
    if not isinstance(failed_raw, Sequence) or isinstance(failed_raw, str):
        raise _bad(where, f"failed must be a list of ranks, got {failed_raw!r}")
    failed = frozenset(_rank(r, n, f"{where}.failed") for r in failed_raw)
    restore_raw = raw["restore"]
    if not isinstance(restore_raw, Mapping):
        raise _bad(where, f"restore must be an object rank -> index, got {restore_raw!r}")
    restore: dict[int, int] = {}
    for key, index in restore_raw.items():
        rank = _rank_key(key, n, f"{where}.restore")
        if not _is_int(index) or index < 0:
            raise _bad(where, f"restore[{key}] must be a checkpoint index >= 0, got {index!r}")
        restore[rank] = index
    replayed = raw.get("replayed", 0)
    if not _is_int(replayed) or replayed < 0:
        raise _bad(where, f"replayed must be a count >= 0, got {replayed!r}")
    rolled_raw = raw.get("rolled_back_s", {})
    if not isinstance(rolled_raw, Mapping):
        raise _bad(where, f"rolled_back_s must be an object rank -> seconds, got {rolled_raw!r}")
    rolled = {
        _rank_key(k, n, f"{where}.rolled_back_s"): _time(v, f"{where}.rolled_back_s[{k}]")
        for k, v in rolled_raw.items()
    }
    return TraceRecovery(
        t_detect=t_detect,
        t_done=t_done,
        failed=failed,
        restore=MappingProxyType(restore),
        replayed=replayed,
        rolled_back_s=MappingProxyType(rolled),
    )


def view_trace(raw: object) -> Trace:
    """Check a decoded trace object and return its typed view (``ConfigError`` if invalid).

    Accepts the JSON object, or the ``snapline.runtime.trace.Trace`` that ``load_trace``
    returns.
    """
    if isinstance(raw, RuntimeTrace):
        raw = raw.to_json()
    if not isinstance(raw, Mapping):
        raise _bad("top level", f"must be a JSON object, got {type(raw).__name__}")
    if raw.get("format") != TRACE_FORMAT:
        raise _bad("format", f"expected {TRACE_FORMAT!r}, got {raw.get('format')!r}")
    if raw.get("version") != TRACE_VERSION:
        raise _bad(
            "version",
            f"this snapline reads version {TRACE_VERSION}, got {raw.get('version')!r}",
        )
    n = raw.get("n")
    if not _is_int(n) or n < 1:
        raise _bad("n", f"must be an integer >= 1, got {n!r}")
    time_unit = raw.get("time_unit", "s")
    if time_unit != "s":
        raise _bad("time_unit", f"only seconds ('s') are supported, got {time_unit!r}")
    edges_raw = raw.get("edges", [])
    if not isinstance(edges_raw, Sequence) or isinstance(edges_raw, str):
        raise _bad("edges", f"must be a list of [src, dst] pairs, got {edges_raw!r}")
    edges: set[tuple[int, int]] = set()
    for i, edge in enumerate(edges_raw):
        if not isinstance(edge, Sequence) or isinstance(edge, str) or len(edge) != 2:
            raise _bad(f"edges[{i}]", f"must be a [src, dst] pair, got {edge!r}")
        edges.add((_rank(edge[0], n, f"edges[{i}]"), _rank(edge[1], n, f"edges[{i}]")))
    events_raw = raw.get("events")
    if not isinstance(events_raw, Sequence) or isinstance(events_raw, str):
        raise _bad("events", f"must be a list, got {type(events_raw).__name__}")
    events = [_parse_event(e, n, i) for i, e in enumerate(events_raw)]
    events.sort(key=lambda e: e.t)
    recoveries_raw = raw.get("recoveries", [])
    if not isinstance(recoveries_raw, Sequence) or isinstance(recoveries_raw, str):
        raise _bad("recoveries", f"must be a list, got {type(recoveries_raw).__name__}")
    recoveries = [_parse_recovery(r, n, i) for i, r in enumerate(recoveries_raw)]
    recoveries.sort(key=lambda r: r.t_detect)
    stats = raw.get("stats", {})
    if not isinstance(stats, Mapping):
        raise _bad("stats", f"must be an object, got {type(stats).__name__}")
    seed = raw.get("seed")
    return Trace(
        n=n,
        protocol=str(raw.get("protocol", "?")),
        app=str(raw.get("app", "?")),
        seed=seed if _is_int(seed) else None,
        edges=frozenset(edges),
        events=tuple(events),
        recoveries=tuple(recoveries),
        stats=MappingProxyType(dict(stats)),
    )
