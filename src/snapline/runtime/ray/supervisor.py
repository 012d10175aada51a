"""Process control and failure notification of a job on Ray: one actor per rank.

Theory of operation
-------------------
``spawn`` takes a Ray actor (``rank.RankActor``, ``max_restarts=0``, no CPU held, spread over
the cluster's nodes) and calls its ``run`` with the rank's boot data, which the actor's
process uses exactly as a local worker uses its stdin. The worker connects its control link to
this supervisor and its channels to the other ranks as a local worker does; its hello names
its pid, which is how ``snapline ps`` can show it for a ``kill -9`` from outside. One idle
actor is always started ahead (a spare; its constructor imports what a worker needs) and the
next ``spawn`` takes it: a new Ray worker process needs seconds to start and import on a busy
machine, which a recovery should not wait. Actors are named (``snapline-<token>-<k>``; the
log's ``spawned`` line says which rank each runs), so ``ray.get_actor`` finds them.
For some seconds after a rank died on a node, new actors (and the spare) avoid that node: it
may have been lost, though Ray still lists it alive until its health checks time out.

Failures: a rank's process that dies (``kill -9``, ``ray.kill``, the loss of its Ray node)
closes its control link, which the base supervisor reports at once; the ``run`` call's result
(an error for a dead actor) is a second notice, polled with ``ray.wait``; heartbeats on the
control link show hangs. A rank on this host is also watched through a pidfd (its exit is seen
at once, and a hung one is SIGKILLed through it); one on another host has none: there its
control link, Ray's death notice (actor or node died) and heartbeats are what tells. A failed
rank's actor is killed with ``ray.kill`` and the rank restarted as a new actor, one rank at a
time as on the local runtime, so only what the protocol says rolls back. Ray places the new
actor on a node that is still there.

Where it runs: when every Ray node is on this host, the channels and control links are the
local runtime's Unix sockets (no port to open; ``bench/ray_engine_bench.py`` found TCP over
loopback neither slower nor faster). When the cluster spans hosts, every rank listens on TCP on
its node's address (port 0), the supervisor takes control links on TCP at this host's Ray
address, each rank's hello reports the address it listens on, and every ``connect`` carries the
peer table (a rank restarted on another node has a new address; the channels' sequence numbers
and resends keep delivery FIFO and exactly once across the move). Such a job needs a store
every node mounts at the same path: a node-local one is refused at start
(``SNAPLINE_RAY_TRANSPORT=tcp`` forces TCP on one host, for tests and benchmarks;
``shared_store=True`` declares a store shared that detection cannot tell).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from typing import Any

from snapline._mounts import refuse_node_local
from snapline.errors import ConfigError
from snapline.runtime.local.endpoints import tcp_address
from snapline.runtime.local.supervisor import RankSlot, Supervisor
from snapline.runtime.local.wire import pack

_INSTALL = "install Ray with pip install 'snapline[ray]'"
#: How long after a rank died on a node new actors avoid that node (it may be lost).
_SUSPECT_S = 30.0
#: ``tcp`` forces TCP channels and control links even when every node is on this host.
TRANSPORT_ENV = "SNAPLINE_RAY_TRANSPORT"


class RaySupervisor(Supervisor):
    """A ``Supervisor`` whose ranks are Ray actors (see the module docstring)."""

    def __init__(
        self, *, address: str | None = None, shared_store: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        try:
            import ray
        except ImportError as exc:
            raise ConfigError(f"--engine ray: {_INSTALL}") from exc
        self._ray: Any = ray
        self._started_ray = False
        if not ray.is_initialized():
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            self._started_ray = True
        #: This host's address in the Ray cluster (the driver's node).
        self.here = str(self._ray.util.get_node_ip_address())
        self._nodes = _alive_nodes(ray)
        hosts = sorted(set(self._nodes.values()))
        multi_host = hosts != [self.here]
        forced = os.environ.get(TRANSPORT_ENV, "")
        try:
            self._refuse(hosts, forced, shared_store)
        except ConfigError:
            super().close()
            if self._started_ray:
                ray.shutdown()
            raise
        #: TCP channels and control links (ranks on other hosts), else Unix sockets.
        self.tcp = multi_host or forced == "tcp"
        #: The control address the ranks' boot data names (TCP: at this host's address).
        self._control_for_ranks = (
            self.listen_also(tcp_address(self.here, 0)) if self.tcp else self.control_address
        )
        from snapline.runtime.ray.rank import RankActor

        self._actor_class: Any = ray.remote(max_restarts=0, max_task_retries=0)(RankActor)
        self._actors: dict[int, Any] = {}
        self._runs: dict[int, Any] = {}
        self._token = secrets.token_hex(4)
        self._spawned = 0
        #: An actor started ahead, idle, that the next restarted rank takes over: a new Ray
        #: worker process takes seconds to start and import, which a recovery should not wait.
        self._spare: Any = None
        #: The node each actor (spare included) was placed on, and the nodes where a rank died
        #: recently: such a node may be lost, though Ray lists it alive for a few seconds more.
        self._spare_node = ""
        self._spare_name = ""
        self._rank_node: dict[int, str] = {}
        self._suspect: dict[str, float] = {}
        self.log(
            "ray_connected",
            nodes=len(self._nodes),
            hosts=hosts,
            transport="tcp" if self.tcp else "unix",
            control=self._control_for_ranks,
            started=self._started_ray,
        )

    def _refuse(self, hosts: list[str], forced: str, shared_store: bool) -> None:
        """``ConfigError`` for a transport or a store this cluster cannot use."""
        if forced not in ("", "tcp", "unix"):
            raise ConfigError(f"{TRANSPORT_ENV}={forced!r}: leave it unset, or say tcp or unix")
        others = [h for h in hosts if h != self.here]
        if others and forced == "unix":
            raise ConfigError(
                f"{TRANSPORT_ENV}=unix: this Ray cluster has nodes on other hosts "
                f"({', '.join(others)}); Unix sockets reach only this one. Unset it"
            )
        if others and not shared_store:
            refuse_node_local(
                self.store_dir,
                what="--engine ray: the store",
                why=f"this Ray cluster spans {len(hosts)} hosts ({', '.join(hosts)}): a rank "
                "restarted on another host must read the checkpoints, ledgers and logs there",
                say="pass --shared-store",
            )

    # ------------------------------------------------------------------ starting

    def spawn(self, rank: int, boot: dict[str, Any]) -> None:
        """Start ``rank`` as a new actor (its pid is learnt from its hello)."""
        slot = self.slots[rank]
        self._forget_actor(rank)
        self.starting(slot, None)
        actor, node, name = self._spare, self._spare_node, self._spare_name
        self._spare = None
        if actor is not None and node in self._avoid():
            with contextlib.suppress(Exception):  # it may have died with its node
                self._ray.kill(actor, no_restart=True)
            actor = None
        took_spare = actor is not None
        if actor is None:
            actor, node, name = self._new_actor()
        self._actors[rank], self._rank_node[rank] = actor, node
        host = self._nodes.get(node) or _alive_nodes(self._ray).get(node, "")
        boot = {**boot, "node": host, "control_address": self._control_for_ranks}
        if self.tcp:
            boot["listen_address"] = tcp_address(host, 0)
        self._runs[rank] = actor.run.remote(pack(boot))
        self.log("spawned", rank=rank, pid=None, spare=took_spare, node=host, actor=name)
        self._spare, self._spare_node, self._spare_name = self._new_actor()

    def _avoid(self) -> set[str]:
        """Nodes where a rank died in the last seconds (none if that would be every node)."""
        now = time.monotonic()
        self._suspect = {n: t for n, t in self._suspect.items() if now - t < _SUSPECT_S}
        alive = set(_alive_nodes(self._ray) or self._nodes)
        return set(self._suspect) if alive - set(self._suspect) else set()

    def _new_actor(self) -> tuple[Any, str, str]:
        """A new rank actor, its node and its name: the next of the cluster's nodes in turn."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        avoid = self._avoid()
        nodes = _alive_nodes(self._ray)
        if self.tcp:
            self._nodes.update(nodes)
        else:
            # Unix sockets: only the nodes on this host (a node that joins elsewhere later
            # cannot take a rank of this job).
            nodes = {n: h for n, h in nodes.items() if h == self.here}
        alive = [n for n in nodes or self._nodes if n not in avoid]
        node = alive[self._spawned % len(alive)]
        self._spawned += 1
        name = f"snapline-{self._token}-{self._spawned}"
        actor = self._actor_class.options(
            # Named, so that ``ray list actors`` (and ``ray.get_actor``) can find a rank's
            # actor; the supervisor log's ``spawned`` line says which rank it runs.
            name=name,
            num_cpus=0,
            # Hard, so the node recorded is where it runs: a node where a rank just died is
            # avoided for a while (``_avoid``), as Ray may list a lost node alive for seconds.
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False),
        ).remote()
        return actor, node, name

    def _expects(self, slot: RankSlot, pid: int) -> bool:
        """The rank's actor introduces itself: learn its pid (for ``ps`` and ``kill``)."""
        if not slot.alive or slot.rank not in self._actors:
            return False
        if slot.pid is None:
            slot.pid = pid
            node = self._nodes.get(self._rank_node.get(slot.rank, ""), "")
            if node == self.here:
                self.watch_pid(slot)  # on this host: a pidfd shows its exit at once
            self.log("rank_started", rank=slot.rank, pid=pid, node=node)
        return slot.pid == pid

    # ------------------------------------------------------------------ failures

    def kill(self, rank: int, why: str) -> None:
        """Kill ``rank``'s actor process (``ray.kill`` if its pid is not known yet)."""
        slot = self.slots[rank]
        if slot.alive and slot.pid is None:
            slot.kill_reason = why
            self.log("kill", rank=rank, pid=None, why=why)
            self._forget_actor(rank)
            self._reap(rank, why)
            return
        super().kill(rank, why)

    def _reap(self, rank: int, why: str) -> None:
        slot = self.slots[rank]
        if not slot.alive:
            return
        if not slot.stopped and slot.pidfd is not None:
            # A hung (SIGSTOPped) rank must not outlive its replacement; ray.kill alone asks
            # its raylet, which may wait for the stopped process.
            self._sigkill(slot)
        if not slot.stopped and rank in self._rank_node:
            self._suspect[self._rank_node[rank]] = time.monotonic()
        super()._reap(rank, why)
        self._forget_actor(rank)

    def check_children(self) -> None:
        """Notice actors Ray reports dead, then hangs (heartbeats)."""
        if self._runs:
            refs = list(self._runs.values())
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
            if ready:
                done = {id(ref) for ref in ready}
                for rank, ref in list(self._runs.items()):
                    slot = self.slots[rank]
                    if id(ref) not in done or not slot.alive or slot.stopped:
                        continue
                    why = _why_ended(self._ray, ref)
                    if why is None:
                        # Unavailable for a moment (Ray lost the link to it, e.g. while a node
                        # goes): not a death. The control link, pidfd and heartbeats still watch.
                        del self._runs[rank]
                        self.log("actor_unavailable", rank=rank)
                    else:
                        self._reap(rank, why)
        super().check_children()

    def _forget_actor(self, rank: int) -> None:
        actor = self._actors.pop(rank, None)
        self._runs.pop(rank, None)
        if actor is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)

    # ------------------------------------------------------------------ the end

    def reap_finished(self, timeout_s: float) -> None:
        """Wait for ranks that reported their result to return from ``run``; remove them."""
        deadline = time.monotonic() + timeout_s
        for slot in self.slots:
            if not (slot.alive and slot.stopped):
                continue
            ref = self._runs.get(slot.rank)
            if ref is not None:
                with contextlib.suppress(Exception):
                    self._ray.wait([ref], timeout=max(0.0, deadline - time.monotonic()))
            self._reap(slot.rank, "finished")

    def close(self) -> None:
        """Remove every actor, then release what the base holds (and Ray, if we started it)."""
        for slot in self.slots:
            if slot.alive:
                slot.stopped = True
        for rank in list(self._actors):
            self._forget_actor(rank)
        if self._spare is not None:
            with contextlib.suppress(Exception):
                self._ray.kill(self._spare, no_restart=True)
            self._spare = None
        super().close()
        if self._started_ray:
            with contextlib.suppress(Exception):
                self._ray.shutdown()


def _why_ended(ray: Any, ref: Any) -> str | None:
    """Why a rank's finished ``run`` call ended; None if Ray only lost sight of the actor."""
    try:
        ray.get(ref, timeout=0)
    except ray.exceptions.ActorUnavailableError:
        return None
    except Exception as exc:
        return f"actor died ({type(exc).__name__})"
    return "returned without being told to stop"


def _alive_nodes(ray: Any) -> dict[str, str]:
    """The live Ray nodes: id -> the address of its host."""
    return {
        str(node["NodeID"]): str(node["NodeManagerAddress"])
        for node in ray.nodes()
        if node.get("Alive")
    }
