"""Checkpointing protocols as pure state machines (see ``base`` for the contract).

``PROTOCOLS`` maps each command-line name to its class, imported on first use.
"""

from __future__ import annotations

import importlib

from snapline.errors import ConfigError
from snapline.protocols.base import Protocol

_REGISTRY: dict[str, tuple[str, str]] = {
    "none": ("snapline.protocols.none", "NoCheckpointing"),
    "two-phase": ("snapline.protocols.coordinated_two_phase", "TwoPhaseCoordinated"),
    "chandy-lamport": ("snapline.protocols.chandy_lamport", "ChandyLamport"),
    "uncoordinated": ("snapline.protocols.uncoordinated", "Uncoordinated"),
    "bcs": ("snapline.protocols.communication_induced", "BCS"),
    "fdas": ("snapline.protocols.communication_induced", "FDAS"),
    "message-logging": ("snapline.protocols.message_logging", "PessimisticMessageLogging"),
}


def protocol_names() -> list[str]:
    """Every protocol name accepted by ``protocol_class``."""
    return list(_REGISTRY)


def protocol_class(name: str) -> type[Protocol]:
    """The protocol class for a command-line name such as ``chandy-lamport``."""
    try:
        module_name, class_name = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown protocol {name!r}; choose one of: {', '.join(_REGISTRY)}"
        ) from None
    cls: object = getattr(importlib.import_module(module_name), class_name)
    assert isinstance(cls, type) and issubclass(cls, Protocol)
    return cls
