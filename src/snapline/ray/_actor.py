"""``checkpointed``: periodic checkpoints of a Ray actor's state, restored on restart.

Theory of operation
-------------------
The decorator returns a subclass of the actor class whose constructor runs the original one and
then restores the newest intact checkpoint of this actor from its store, if there is one, and
whose public methods (names not starting with ``_``) each count as a *call*. After a call
returns, the checkpoint schedule is consulted (every ``every_calls`` calls, or once
``every_s`` seconds have passed since the last checkpoint, or never: then only on request
through the added ``snapline_checkpoint`` method); a due checkpoint is written synchronously
and committed before the call's reply leaves the actor. Calls run one at a time (a lock around
call and checkpoint; an ``asyncio.Lock`` for ``async def`` methods), so a checkpoint never
sees a call half done; a threaded or async actor thus gives up running its methods
concurrently.

Which actor a store belongs to: ``key=`` if given, else the actor's name if it is a named
actor, else its actor id. Ray keeps the actor id across restarts of the same actor, so a
restart finds its checkpoints; a new actor (a new id) starts from its constructor. Give a
``key`` (or a name) to carry state over to a new actor, e.g. after the whole cluster died.

Delivery semantics, precisely:

* A call's effect survives a restart iff a checkpoint was committed after the call ran. With
  ``every_calls=1`` that holds for every call whose reply was sent.
* Calls that ran after the newest checkpoint are lost at a restart: the actor continues from
  that checkpoint, and callers that already received their replies see the state roll back.
* Calls in flight when the actor dies fail with Ray's ``RayActorError`` unless the actor has
  ``max_task_retries``; with it Ray submits them again to the restarted actor, which makes
  them *at least once*: a call whose effect a checkpoint committed just before the actor died
  (its reply not yet sent) runs a second time.
* A checkpoint that fails (state the safe codec cannot encode, a full disk) raises
  ``CheckpointFailed`` from the call that made it due; that call's effect stays in memory and
  the previous checkpoint stays the newest.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from snapline._mounts import refuse_node_local
from snapline.errors import (
    CheckpointDamagedWarning,
    CheckpointFailed,
    ConfigError,
    CorruptCheckpoint,
    SnaplineError,
)
from snapline.store import Store, open_store

_ATTR = "_snapline_checkpoints"
_ADDED = ("snapline_checkpoint", "snapline_info")

C = TypeVar("C", bound=type)


class ActorCheckpoints:
    """One actor's checkpoints: its store, its schedule and what it has done so far."""

    def __init__(
        self,
        store: Store,
        *,
        every_calls: int | None,
        every_s: float | None,
        keep_last: int,
        allow_pickle: bool,
    ) -> None:
        self.store = store
        self.every_calls = every_calls
        self.every_s = every_s
        self.keep_last = keep_last
        self.allow_pickle = allow_pickle
        steps = store.steps()
        self.last_step: int | None = steps[-1] if steps else None
        self.restored_step: int | None = None
        self.calls = 0
        self.calls_since_checkpoint = 0
        self.checkpoints = 0
        self.last_checkpoint_s = time.monotonic()
        self.lock = threading.RLock()
        self._async_lock: asyncio.Lock | None = None

    @property
    def async_lock(self) -> asyncio.Lock:
        """The lock ``async def`` methods hold (made on first use, inside the actor's loop)."""
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        return self._async_lock

    def restore_into(self, actor: object) -> None:
        """Put the newest intact checkpoint's state into ``actor`` (nothing on a first start)."""
        damaged: list[str] = []
        for step in reversed(self.store.steps()):
            try:
                state = self.store.load(step, allow_pickle=self.allow_pickle)
            except CorruptCheckpoint as exc:
                message = f"skipping damaged actor checkpoint {step} in {self.store.url}: {exc}"
                warnings.warn(message, CheckpointDamagedWarning, stacklevel=2)
                damaged.append(str(exc))
                continue
            self.restored_step = step
            setstate = getattr(type(actor), "__setstate__", None)
            if setstate is not None:
                setstate(actor, state)
            elif isinstance(state, dict):
                actor.__dict__.update(state)
            elif state is not None:
                raise ConfigError(
                    f"checkpoint {step} in {self.store.url} holds a {type(state).__name__}, not "
                    "a dict of attributes; give the class a __setstate__ that takes what its "
                    "__getstate__ returns"
                )
            return
        if damaged:
            raise CorruptCheckpoint(
                f"every checkpoint of this actor in {self.store.url} is damaged ("
                + "; ".join(damaged)
                + "); move that store aside to start the actor from its constructor"
            )

    def count_call(self) -> None:
        self.calls += 1
        self.calls_since_checkpoint += 1

    def after_call(self, actor: object) -> None:
        """Count a call that returned; checkpoint if the schedule says so."""
        self.count_call()
        due = (
            self.every_calls is not None and self.calls_since_checkpoint >= self.every_calls
        ) or (
            self.every_s is not None and time.monotonic() - self.last_checkpoint_s >= self.every_s
        )
        if due:
            self.checkpoint(actor)

    def checkpoint(self, actor: object) -> int:
        """Save ``actor``'s state now, durably, as the next step; returns the step."""
        step = 1 if self.last_step is None else self.last_step + 1
        state = _state_of(actor)
        try:
            self.store.save(
                state,
                step=step,
                meta={"calls": self.calls, "pid": os.getpid()},
                allow_pickle=self.allow_pickle,
            )
        except SnaplineError as exc:
            raise CheckpointFailed(
                f"checkpoint of actor state into {self.store.url} failed: {exc}; the previous "
                "checkpoint is still the newest"
            ) from exc
        self.last_step = step
        self.checkpoints += 1
        self.calls_since_checkpoint = 0
        self.last_checkpoint_s = time.monotonic()
        if len(self.store.steps()) > 2 * self.keep_last:
            self.store.gc(keep_last=self.keep_last)
        return step

    def info(self) -> dict[str, Any]:
        """What ``snapline_info()`` returns: where the state goes and what happened so far."""
        return {
            "pid": os.getpid(),
            "store": self.store.url,
            "restored_step": self.restored_step,
            "last_step": self.last_step,
            "calls": self.calls,
            "calls_since_checkpoint": self.calls_since_checkpoint,
            "checkpoints": self.checkpoints,
        }


def checkpointed(
    store: str | os.PathLike[str],
    *,
    every_calls: int | None = None,
    every_s: float | None = None,
    key: str | None = None,
    keep_last: int = 3,
    allow_pickle: bool = False,
    shared_storage: bool | None = None,
) -> Callable[[C], C]:
    """Give an actor class automatic checkpoints into ``store`` and restore on restart.

    ``store``: a directory (or store URL) holding one store per actor, named by ``key`` (see
    the module docstring). ``every_calls`` / ``every_s``: checkpoint after that many method
    calls / once that many seconds passed, checked after each call; with neither, only when
    ``snapline_checkpoint()`` is called. ``keep_last``: checkpoints kept per actor.
    ``allow_pickle``: pickle values the safe codec cannot encode (then loading runs pickle:
    only for stores you trust). ``shared_storage``: whether every node of the Ray cluster
    sees ``store`` (None: a store URL counts as shared, a directory only if it is on a network
    or cluster file system); on a cluster of several nodes a node-local directory is refused,
    since a restarted actor may land on another node. Apply ``@ray.remote(max_restarts=...)``
    on top.

    The class gains two methods: ``snapline_checkpoint()`` (checkpoint now, returns the step)
    and ``snapline_info()`` (pid, store, restored step, counters).
    """
    if every_calls is not None and (not isinstance(every_calls, int) or every_calls < 1):
        raise ConfigError(f"every_calls must be a whole number >= 1, not {every_calls!r}")
    if every_s is not None and not every_s > 0:
        raise ConfigError(f"every_s must be a positive number of seconds, not {every_s!r}")
    if not isinstance(keep_last, int) or keep_last < 1:
        raise ConfigError(f"keep_last must be a whole number >= 1, not {keep_last!r}")
    if key is not None:
        _check_key(key)

    def decorate(cls: C) -> C:
        if not isinstance(cls, type):
            raise ConfigError(
                f"checkpointed decorates a class, not {cls!r}: put @ray.remote above it"
            )
        for added in _ADDED:
            if hasattr(cls, added):
                raise ConfigError(f"{cls.__name__} already has {added}(), which snapline adds")
        original_init = cls.__init__  # type: ignore[misc]  # the class, not an instance

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original_init(self, *args, **kwargs)
            if not hasattr(self, "__dict__"):
                raise ConfigError(f"{cls.__name__} has __slots__ only; checkpointed needs __dict__")
            actor_key = key if key is not None else _actor_key()
            _refuse_node_local(store, shared_storage)
            where = _actor_store(store, actor_key)
            manager = ActorCheckpoints(
                open_store(where),
                every_calls=every_calls,
                every_s=every_s,
                keep_last=keep_last,
                allow_pickle=allow_pickle,
            )
            self.__dict__[_ATTR] = manager
            manager.restore_into(self)

        def snapline_checkpoint(self: Any) -> int:
            manager: ActorCheckpoints = self.__dict__[_ATTR]
            with manager.lock:
                return manager.checkpoint(self)

        def snapline_info(self: Any) -> dict[str, Any]:
            manager: ActorCheckpoints = self.__dict__[_ATTR]
            return manager.info()

        namespace: dict[str, Any] = {
            "__init__": functools.wraps(original_init)(__init__),
            "snapline_checkpoint": snapline_checkpoint,
            "snapline_info": snapline_info,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
        }
        for name in dir(cls):
            if name.startswith("_"):
                continue
            member = inspect.getattr_static(cls, name)
            if inspect.isfunction(member):
                namespace[name] = _wrap(member)
        return type(cls.__name__, (cls,), namespace)  # type: ignore[return-value]

    return decorate


def _wrap(method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def call_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            manager: ActorCheckpoints = self.__dict__[_ATTR]
            async with manager.async_lock:
                try:
                    result = await method(self, *args, **kwargs)
                except BaseException:
                    manager.count_call()
                    raise
                manager.after_call(self)
            return result

        return call_async

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        manager: ActorCheckpoints = self.__dict__[_ATTR]
        with manager.lock:
            try:
                result = method(self, *args, **kwargs)
            except BaseException:
                manager.count_call()
                raise
            manager.after_call(self)
        return result

    return call


def _state_of(actor: object) -> object:
    """What pickle would take of ``actor``, less snapline's own bookkeeping."""
    state = actor.__getstate__()
    if isinstance(state, dict) and _ATTR in state:
        state = {k: v for k, v in state.items() if k != _ATTR}
    return state


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or key in (".", "..") or "/" in key or "\0" in key:
        raise ConfigError(f"key must be a non-empty name without '/', not {key!r}")


def _actor_key() -> str:
    """This actor's name, else its id (kept by Ray across restarts of the same actor)."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "checkpointed actors need Ray (pip install 'snapline[ray]'), or pass key= to use "
            "the class outside Ray"
        ) from exc
    actor_id = ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
    if actor_id is None:
        raise ConfigError(
            "not running inside a Ray actor, so there is no actor id to name the store by; "
            "pass key= to checkpointed"
        )
    name = ray.get_runtime_context().get_actor_name()
    if not name:
        return str(actor_id)
    quoted = urllib.parse.quote(name, safe="")
    return "%2E" * len(quoted) if quoted in (".", "..") else quoted


def _refuse_node_local(store: str | os.PathLike[str], shared: bool | None) -> None:
    """In a Ray cluster of several nodes, refuse a store only this node can read."""
    try:
        import ray
    except ImportError:
        return  # not in Ray: no cluster
    if not ray.is_initialized():
        return
    api: Any = ray  # ray's own annotations differ between its versions
    if shared or (shared is None and isinstance(store, str) and "://" in store):
        return
    nodes = sum(1 for node in api.nodes() if node.get("Alive"))
    if nodes <= 1:
        return
    refuse_node_local(
        store,
        detect=shared is None,
        what="the actor store",
        why=f"this Ray cluster has {nodes} nodes: a restarted actor may land on another node "
        "and not find its checkpoints (an object store URL works too)",
        say="pass shared_storage=True",
    )


def _actor_store(root: str | os.PathLike[str], key: str) -> str | Path:
    if isinstance(root, str) and "://" in root:
        return f"{root.rstrip('/')}/{key}"
    return Path(root) / key
