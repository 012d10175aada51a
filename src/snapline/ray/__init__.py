"""Automatic checkpoints for ordinary Ray actors: state restored when Ray restarts an actor.

Ray restarts a dead actor (``max_restarts``) by running its constructor again, which loses
every change the actor made since. ``checkpointed`` gives a stateful actor class periodic
checkpoints into a snapline store and, in the restarted constructor, restores the newest one::

    import ray
    from snapline.ray import checkpointed

    @ray.remote(max_restarts=-1, max_task_retries=-1)
    @checkpointed(store="./ckpts/actors", every_calls=10)
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        def incr(self) -> int:
            self.n += 1
            return self.n

What is saved is what ``pickle`` would take (``__getstate__``, by default the instance's
attributes), encoded with snapline's safe codec; ``__setstate__`` (or a plain attribute update)
puts it back. See ``checkpointed`` for the delivery semantics. Ray is imported only inside a
running actor: install it with ``pip install 'snapline[ray]'``.
"""

from __future__ import annotations

from snapline.ray._actor import ActorCheckpoints, checkpointed

__all__ = ["ActorCheckpoints", "checkpointed"]
