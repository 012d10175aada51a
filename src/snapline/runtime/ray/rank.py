"""One rank of a job on Ray: a Ray actor whose process runs the local runtime's worker loop.

The actor is created by the supervisor (``supervisor.RaySupervisor``) with ``max_restarts=0``:
snapline, not Ray, restarts a failed rank, as a new actor booted for the recovery. ``run`` blocks
for the rank's whole life. A worker that fails exits its process as a local worker would (the
supervisor sees its control link close); one that finishes returns and the supervisor removes
the actor.
"""

from __future__ import annotations

import importlib
import os


class RankActor:
    """Runs one rank's worker (``snapline.runtime.local.worker``) inside a Ray actor."""

    def __init__(self) -> None:
        # Import now what a rank's worker needs (about a second on a busy machine): the
        # supervisor keeps a spare actor started ahead, and a recovery that takes it over
        # should wait for none of this.
        from snapline.protocols import protocol_class, protocol_names

        for module in ("snapline.runtime.local.worker", "snapline.store", "snapline.apps"):
            importlib.import_module(module)
        for name in protocol_names():
            protocol_class(name)

    def run(self, boot: bytes) -> int:
        """Boot the worker from ``boot`` (msgpack, as a local worker reads from stdin); run it."""
        from snapline.runtime.local.wire import unpack
        from snapline.runtime.local.worker import Worker, run_worker

        worker = Worker(unpack(boot))
        try:
            run_worker(worker)
        except SystemExit as exc:
            # A failed rank ends its process, like a local worker: Ray must not keep it (and
            # its half-torn sockets) alive as an idle actor.
            os._exit(exc.code if isinstance(exc.code, int) else 3)
        return 0
