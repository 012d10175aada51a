"""The Ray engine: a snapline job (``Process`` classes, unchanged protocols) on Ray actors.

``snapline run APP -n N --engine ray`` runs each rank as a Ray actor whose process drives the
local runtime's worker loop (``RankEngine``, protocols, stable storage) unchanged. This package
holds only what differs: process control and failure notification (``supervisor``: actors
created, watched and killed through Ray) and the actor itself (``rank``). The recovery
coordinator, ledgers and resume sequence are the local runtime's; a failed rank is restarted
alone, as a new actor, exactly as on the local runtime.

Transport: the local runtime's channels, not Ray actor calls (batched frames over a socket
carry tens of thousands of small messages per second; an actor call costs about a
millisecond, see ``bench/ray_engine_bench.py``): Unix sockets when every Ray node is on this
host, TCP with a peer table the supervisor hands out when the cluster spans hosts (see
``supervisor``).
"""

from __future__ import annotations

from typing import Any

from snapline.runtime.local.supervisor import Supervisor


def supervisor_factory(address: str | None = None, *, shared_store: bool = False) -> Any:
    """A ``LocalJob`` supervisor factory whose ranks are Ray actors.

    ``address``: an existing Ray cluster (``auto``, ``ray://HOST:PORT``); default: the one this
    process is already connected to, else a new local Ray sized for the machine.
    ``shared_store``: the store directory is one every node mounts, though its file system
    does not say so (a cluster that spans hosts refuses a node-local store otherwise).
    """
    import importlib.util

    from snapline.errors import ConfigError

    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--engine ray: install Ray with pip install 'snapline[ray]'")

    def make(**kwargs: Any) -> Supervisor:
        from snapline.runtime.ray.supervisor import RaySupervisor

        return RaySupervisor(address=address, shared_store=shared_store, **kwargs)

    return make
