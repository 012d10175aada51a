"""Pluggable state machines: the ``apply(state, op) -> state`` a journal replays its log with.

Theory of operation
-------------------
A journal in *state* mode holds a state (plain data) that changes only by operations (plain
data). ``StateMachine`` bundles the initial state with ``apply``; replaying the same ops in
txid order from the same image must give the same state, so ``apply`` must be deterministic
and depend on nothing but its arguments. ``apply`` may mutate ``state`` in place and return it
(the journal never shares a state object between the writer and the checkpointer), but it must
check an op *before* changing anything: an op it rejects is not logged, and a half-applied op
would leave the live state different from what recovery rebuilds.

For a checkpointer run as a separate process the machine must be importable by reference
(``"package.module:attribute"``); ``machine_ref`` / ``resolve_machine`` handle that.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from snapline.errors import ConfigError, JournalError

ApplyFn = Callable[[Any, Any], Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateMachine:
    """A state that changes by operations: ``apply(state, op) -> state`` from ``initial()``.

    ``name`` is recorded in the journal's marker so that a journal is not reopened with a
    different machine by mistake. ``entries`` counts what a state holds, for ``inspect``.
    """

    name: str
    initial: Callable[[], Any]
    apply: ApplyFn
    entries: Callable[[Any], int] | None = None

    def count_entries(self, state: Any) -> int | None:
        """How many entries ``state`` holds (None if the machine cannot say)."""
        if self.entries is not None:
            return self.entries(state)
        if isinstance(state, dict | list):
            return len(state)
        return None


_KEY_TYPES = (str, int, bytes)


def apply_key_value(state: dict[Any, Any], op: Any) -> dict[Any, Any]:
    """Apply one key-value op: ``{"op": "set", "key": k, "value": v}``, ``delete``, ``clear``.

    Keys are str, int or bytes; values any plain data. The op is checked fully before the
    dict is touched (see the module docstring).
    """
    if not isinstance(op, dict):
        raise JournalError(f"key-value op must be a dict, got {op!r:.100}")
    kind = op.get("op")
    if kind == "set":
        key = op.get("key")
        if not isinstance(key, _KEY_TYPES) or isinstance(key, bool) or "value" not in op:
            raise JournalError(
                f"key-value set needs a str/int/bytes 'key' and a 'value', got {op!r:.100}"
            )
        state[key] = op["value"]
    elif kind == "delete":
        key = op.get("key")
        if not isinstance(key, _KEY_TYPES) or isinstance(key, bool):
            raise JournalError(f"key-value delete needs a str/int/bytes 'key', got {op!r:.100}")
        state.pop(key, None)
    elif kind == "clear":
        state.clear()
    else:
        raise JournalError(f"unknown key-value op {kind!r}; expected 'set', 'delete' or 'clear'")
    return state


def kv_set(key: str | int | bytes, value: Any) -> dict[str, Any]:
    """The key-value op that sets ``key`` to ``value``."""
    return {"op": "set", "key": key, "value": value}


def kv_delete(key: str | int | bytes) -> dict[str, Any]:
    """The key-value op that removes ``key`` (no error if absent)."""
    return {"op": "delete", "key": key}


def kv_clear() -> dict[str, Any]:
    """The key-value op that removes every key."""
    return {"op": "clear"}


KEY_VALUE = StateMachine(name="key_value", initial=dict, apply=apply_key_value)
"""The ready-made key-value map (ops ``set``, ``delete``, ``clear``)."""

_BUILTIN: dict[str, StateMachine] = {"key_value": KEY_VALUE}


def machine_ref(machine: StateMachine) -> str:
    """A reference a separate process can import ``machine`` by.

    Built-in machines are referenced by name; others must be a module-level ``StateMachine``
    whose ``apply`` is a module-level function, found again as ``module:attribute``.
    """
    if _BUILTIN.get(machine.name) is machine:
        return machine.name
    module = getattr(machine.apply, "__module__", None)
    qualname = getattr(machine.apply, "__qualname__", "")
    if not module or "<" in qualname or module == "__main__":
        raise ConfigError(
            f"state machine {machine.name!r} cannot run in a separate checkpointer process: "
            "its apply must be a module-level function of an importable module; use "
            "checkpointer='thread' or move apply into a module"
        )
    mod = importlib.import_module(module)
    for attr, value in vars(mod).items():
        if value is machine:
            return f"{module}:{attr}"
    raise ConfigError(
        f"state machine {machine.name!r} cannot run in a separate checkpointer process: bind "
        f"it to a module-level name in {module} (e.g. MACHINE = StateMachine(...))"
    )


def resolve_machine(ref: str) -> StateMachine:
    """The machine a ``machine_ref`` names (imports the named module, which the user wrote)."""
    if ref in _BUILTIN:
        return _BUILTIN[ref]
    module, _, attr = ref.partition(":")
    try:
        value = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import state machine {ref!r}: {exc}") from exc
    if not isinstance(value, StateMachine):
        raise ConfigError(f"{ref!r} is not a StateMachine")
    return value
