"""Keyed state: state declared as key -> value, partitioned into key groups over the ranks.

Theory of operation
-------------------
A job that may resume on another number of ranks declares its state as a map from keys to
values (``KeyedProcess.keyed_state``) and names the key of each message payload
(``KeyedProcess.message_key``). A key belongs to one of ``key_groups`` groups, picked by a
stable hash of the key (CRC-32 of its UTF-8 text: the same in every process, run and
Python version); the number of groups is fixed for the life of a job and is the largest
number of ranks it can run on. Rank ``r`` of ``n`` owns the contiguous range of groups
``key_group_range(r, n, groups)`` -- Flink's assignment, so a resize moves whole ranges.

When a job resumes on M ranks from a checkpoint of N, the runtime collects the keyed state of
the N checkpointed ranks, gives each key to the rank owning its group among M, and routes
every in-transit message of the cut to the owner of its key (see ``runtime.local.resize``).
Whatever a process holds outside ``keyed_state`` is rebuilt by the app's factory for the new
rank: it must not matter to the result.
"""

from __future__ import annotations

import zlib
from abc import abstractmethod
from collections.abc import Mapping
from typing import TypeAlias

from snapline.errors import ConfigError
from snapline.runtime.process import Process, State

Key: TypeAlias = str | int
"""A key of keyed state: text or an integer (an integer hashes as its decimal text)."""

DEFAULT_KEY_GROUPS = 128
"""The default number of key groups: the largest number of ranks a keyed job can run on."""


def key_group(key: Key, groups: int) -> int:
    """The key group of ``key`` among ``groups`` (stable across processes and runs)."""
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise ConfigError(f"a key must be a str or an int, got {type(key).__name__} {key!r}")
    return zlib.crc32(str(key).encode()) % groups


def key_group_range(rank: int, n: int, groups: int) -> range:
    """The key groups rank ``rank`` of ``n`` owns: a contiguous range, sizes differing by 1."""
    check_parallelism(n, groups)
    return range(-(-rank * groups // n), -(-(rank + 1) * groups // n))


def rank_of_group(group: int, n: int, groups: int) -> int:
    """The rank of ``n`` that owns key group ``group`` (inverse of ``key_group_range``)."""
    return group * n // groups


def owner(key: Key, n: int, groups: int) -> int:
    """The rank of ``n`` that owns ``key``."""
    return rank_of_group(key_group(key, groups), n, groups)


def check_parallelism(n: int, groups: int) -> None:
    """``ConfigError`` unless ``1 <= n <= groups``."""
    if groups < 1:
        raise ConfigError(f"key_groups must be at least 1, got {groups}")
    if not 1 <= n <= groups:
        raise ConfigError(
            f"{n} ranks cannot share {groups} key groups: a keyed job runs on at most "
            f"key_groups ranks; choose -n <= {groups} (key_groups is fixed when a job starts)"
        )


class KeyedProcess(Process):
    """A ``Process`` whose state is keyed, so that its job can resume on another -n.

    Subclasses implement ``keyed_state``, ``restore_keyed`` and ``message_key``; ``state``
    and ``restore`` default to the keyed state (override them to checkpoint more, but only
    keyed state survives a resize). The factory that builds rank ``r`` of ``n`` must give it
    the keys it owns at the start of a job (``owner``), and the app must send every message
    about a key to that key's owner.
    """

    #: Number of key groups (the job's maximum parallelism); fixed for the life of a job.
    key_groups: int = DEFAULT_KEY_GROUPS

    @abstractmethod
    def keyed_state(self) -> Mapping[Key, State]:
        """Every key this rank holds, with its value (plain data)."""

    @abstractmethod
    def restore_keyed(self, items: Mapping[Key, State]) -> None:
        """Replace the keyed state with ``items`` (the keys of this rank's key groups)."""

    @abstractmethod
    def message_key(self, payload: object) -> Key:
        """The key a message payload is about: after a resize it goes to that key's owner."""

    def state(self) -> State:
        """The keyed state as ``[[key, value], ...]`` (keys may be str or int)."""
        return [[k, v] for k, v in self.keyed_state().items()]

    def restore(self, state: State) -> None:
        """Put back a state returned by ``state``."""
        self.restore_keyed({k: v for k, v in state})
