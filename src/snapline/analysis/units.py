"""Figures in the units people read: ``175 KiB``, ``350 ms``, ``18.6k`` -- never ``1e6``.

Every chart, table and page of the analysis tools formats through these, so one quantity reads
the same wherever it is shown.
"""

from __future__ import annotations

from typing import Literal

Unit = Literal["count", "bytes", "seconds"]

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float) -> str:
    """``0`` -> ``0 B``, ``1536`` -> ``1.5 KiB``, ``179255`` -> ``175 KiB``."""
    value = float(n)
    for unit in _BYTE_UNITS:
        if abs(value) < 1024 or unit == _BYTE_UNITS[-1]:
            if unit == "B":
                return f"{value:.0f} B"
            return f"{value:.3g} {unit}" if abs(value) < 1000 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    """``0`` -> ``0 s``, ``0.0285`` -> ``28.5 ms``, ``4.2`` -> ``4.2 s``, ``125`` -> ``125 s``."""
    if s == 0:
        return "0 s"
    if abs(s) < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if abs(s) < 1:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s" if abs(s) < 1000 else f"{s:,.0f} s"


def human_count(value: float) -> str:
    """``18648`` -> ``18.6k``, ``2.5e6`` -> ``2.5M``, ``12`` -> ``12``."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if magnitude >= scale:
            return f"{value / scale:.3g}{suffix}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}"


def human(value: float, unit: Unit) -> str:
    """``value`` in ``unit``, formatted for people."""
    if unit == "bytes":
        return human_bytes(value)
    if unit == "seconds":
        return human_seconds(value)
    return human_count(value)
