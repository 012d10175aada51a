"""snapline: checkpoint/restart and rollback recovery for distributed Python programs.

The public API is the names in ``__all__``; everything else is implementation.
"""

from __future__ import annotations

import importlib
from typing import Any

from snapline.errors import (
    ApplicationError,
    CheckpointNotFound,
    ConfigError,
    CorruptCheckpoint,
    EncodeError,
    JournalError,
    NotAStore,
    ProtocolError,
    RuntimeFailure,
    SimulationError,
    SnaplineError,
    StoreError,
    StoreLocked,
    UnsupportedFormat,
)
from snapline.protocols import protocol_class, protocol_names
from snapline.runtime.process import Context, Process
from snapline.topology import Topology

__version__ = "0.1.0"

# Names whose modules are heavier or optional are imported on first use.
_LAZY: dict[str, tuple[str, str]] = {
    "open_store": ("snapline.store", "open_store"),
    "Store": ("snapline.store", "Store"),
    "journal": ("snapline", "journal"),
    "mpi": ("snapline", "mpi"),
    "testing": ("snapline", "testing"),
    "run": ("snapline.runtime.local", "run"),
    "KeyedProcess": ("snapline.runtime.keyed", "KeyedProcess"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'snapline' has no attribute {name!r}") from None
    if module_name == "snapline":
        return importlib.import_module(f"snapline.{attr}")
    return getattr(importlib.import_module(module_name), attr)


__all__ = [
    "ApplicationError",
    "CheckpointNotFound",
    "ConfigError",
    "Context",
    "CorruptCheckpoint",
    "EncodeError",
    "JournalError",
    "KeyedProcess",
    "NotAStore",
    "Process",
    "ProtocolError",
    "RuntimeFailure",
    "SimulationError",
    "SnaplineError",
    "Store",
    "StoreError",
    "StoreLocked",
    "Topology",
    "UnsupportedFormat",
    "__version__",
    "journal",
    "mpi",
    "open_store",
    "protocol_class",
    "protocol_names",
    "run",
    "testing",
]
