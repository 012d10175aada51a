"""The local runtime: a job as real OS processes on one machine, surviving ``kill -9``.

Architecture (why it is built this way):

* **One process per rank, one supervisor.** ``snapline run`` is the supervisor; it spawns a
  worker process per rank (``worker``), detects failures (``supervisor``: pidfds for exits,
  heartbeats for hangs) and coordinates recovery (``job``). Workers are its children, so an
  exit is seen the instant it happens, and a worker exits when its supervisor is gone.
* **Unix sockets in a private directory.** Channels are Unix stream sockets in a fresh 0700
  directory (``channels``): reliable and FIFO while both ends live, no network exposure, and
  admission by an HMAC challenge-response on a per-job secret that never touches disk
  (``wire``). Per-channel sequence numbers, acknowledgements and resend-after-reconnect cover
  the death of an end.
* **The same engine and protocols as the simulator.** Each worker runs its rank through the
  shared ``RankEngine`` with the unchanged protocol class; recovery calls the protocol's pure
  ``plan_recovery`` on a ``RecoveryView`` built from the ledgers (``ledger``) and the
  survivors' volatile records.
* **Shared with the MPI engine.** Only the Unix-socket channels (``channels``) and starting one
  worker process per rank (``Supervisor.spawn``) are particular to this engine. The recovery
  coordinator (``job``), the rank's loop and ``EnginePort`` (``worker``), stable storage
  (``ledger``, ``stable``) and the recovery line from stable storage (``jobdir``) are what
  ``snapline.runtime.mpi`` runs too, with its own transport (``worker.ChannelTransport``) and
  its own ``Supervisor`` (one ``mpiexec``; a death ends every rank): ``run(engine="mpi")``.
* **Stable storage is the store plus a ledger.** States go to ``open_store(<store>/rank-N)``
  (or, with ``levels``, to node-local, partner, XOR and remote levels: ``levels.py``);
  checkpoint records, attachments, commit markers, message logs and released output go to an
  fsynced append-only ledger per rank, written in protocol order by one thread (``stable``).

Output commit: ``ctx.output(x)`` is held by the engine until the protocol says
``ReleaseOutput`` -- i.e. no recovery can roll the rank back to before it (for ``none``, that is
only once the job has ended) -- and is then appended to the rank's ledger as a numbered output
record (after the commit marker it depends on is durable). Output ids are part of the
checkpointed state; a protocol may release again what a restored checkpoint covers (the same
items under the same ids), and ids already in the ledger are skipped: each output is released
exactly once across failures, for every protocol. What is still held when every rank has
reported its result is written to the ledgers by the supervisor, once the workers have exited:
from then on nothing can roll the job back. ``RunResult.outputs`` (and ``snapline run``) show
the released outputs.

Files in the store directory: ``job.json`` (for ``--resume``), ``status.json`` (``snapline
ps``), ``rank-N/`` (checkpoint states), ``ledger/``, ``logs/*.jsonl`` (structured logs),
``trace/`` and ``trace.json`` (for ``snapline viz``), ``summary.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from snapline.errors import ConfigError
from snapline.runtime.local.config import (
    JobConfig,
    is_builtin_app,
    load_job,
    parse_duration_s,
    parse_kill,
)
from snapline.runtime.local.job import LocalJob, RunResult, SupervisorFactory, refuse_if_running
from snapline.runtime.local.status import JobStatus, read_status
from snapline.runtime.local.supervisor import Supervisor
from snapline.runtime.process import Process
from snapline.topology import Topology

__all__ = ["JobConfig", "JobStatus", "LocalJob", "RunResult", "app_spec", "read_status", "run"]


def app_spec(app: str | type[Process]) -> str:
    """The importable spec (``module:Class`` or ``file.py:Class``) of an app class or name."""
    if isinstance(app, str):
        return app
    if not (isinstance(app, type) and issubclass(app, Process)):
        raise ConfigError(f"app must be a Process subclass or a spec string, got {app!r}")
    module = sys.modules.get(app.__module__)
    if app.__module__ == "__main__" or module is None or "<locals>" in app.__qualname__:
        path = getattr(module, "__file__", None)
        if path is None or "<locals>" in app.__qualname__:
            raise ConfigError(
                f"{app.__qualname__} must be defined at the top level of an importable module "
                "or file so that worker processes can import it"
            )
        return f"{Path(path).resolve()}:{app.__qualname__}"
    return f"{app.__module__}:{app.__qualname__}"


def run(
    app: str | type[Process] | None = None,
    n: int | None = None,
    *,
    store: str | Path,
    protocol: str | None = None,
    interval: str | float = "1s",
    topology: str | None = None,
    seed: int = 0,
    resume: bool = False,
    kill: Iterable[str | tuple[int, float]] = (),
    heartbeat_timeout: str | float = "3s",
    heartbeat_interval: str | float = "0.2s",
    max_restarts: int = 10,
    timeout: str | float = "10m",
    trace: bool = True,
    app_options: Mapping[str, Any] | None = None,
    protocol_options: Mapping[str, Any] | None = None,
    allow_pickle: bool = False,
    on_status: Callable[[JobStatus], None] | None = None,
    engine: str = "local",
    mpiexec: str | None = None,
    ray_address: str | None = None,
    levels: str | None = None,
    flush_every: int | None = None,
    node_of: str | Sequence[str] | None = None,
    shared_store: bool = False,
) -> RunResult:
    """Run ``app`` on ``n`` local processes under ``protocol``, checkpointing into ``store``.

    ``app`` is a built-in app name (``"bank"``), ``"path/file.py:Class"``,
    ``"package.module:Class"`` or a ``Process`` subclass defined at module level. ``protocol``
    defaults to ``chandy-lamport`` and ``topology`` to the app's own (or ``complete``).
    Failed ranks (exited, killed, or silent for ``heartbeat_timeout``) are recovered
    automatically; ``kill`` injects faults as ``"RANK@SECONDS"`` (seconds after every rank
    started running). Raises ``RuntimeFailure`` when the restart limit is reached or the job
    cannot finish.

    With ``resume=True`` a job whose processes all died continues from the latest recovery
    line in ``store``, under the configuration stored with it (``app``, ``n``, ``protocol``,
    ``app_options`` ... may be left out; if given they must match). The fault-handling knobs
    (``kill``, ``timeout``, ``heartbeat_*``, ``max_restarts``) apply to the resumed run.
    An ``n`` other than the stored one resizes the job first: its keyed state is split over
    the new ranks (``snapline.runtime.keyed``; see ``runtime.local.resize``), and an app
    without keyed state is refused with ``ConfigError``.

    ``allow_pickle=True`` pickles the parts of a state the safe codec cannot encode. Unsafe
    for checkpoints from untrusted sources (loading a pickle runs code); without it such a
    state stops the job at its first checkpoint with ``ApplicationError`` naming the value.
    A resumed job keeps it once set. An exception raised again by a rank's code after a
    restore also stops the job with ``ApplicationError`` (see ``LocalJob``).

    ``engine="mpi"`` runs the ranks as the processes of one ``mpiexec`` (``mpiexec`` names
    it; default: the mpich wheel's next to this Python, else PATH's) with channels over MPI
    point-to-point; a failure then ends and relaunches the whole job from the recovery line
    in ``store`` (see ``snapline.runtime.mpi``). ``engine="ray"`` runs each rank as a Ray
    actor (``ray_address``: an existing cluster; default a local Ray), restarted alone as a new
    actor after a failure (see ``snapline.runtime.ray``); a cluster that spans hosts needs a
    store every node mounts (``shared_store=True`` says so where the file system type does
    not). A store can be resumed on any engine.

    ``levels`` (e.g. ``"local:/scratch,partner,xor:4,remote:s3://b/p"``) writes checkpoints
    to node-local directories first, protects them on other nodes and flushes every
    ``flush_every``-th to the remote level (``snapline.store.multilevel``); ``node_of``
    (``"0,0,1,1"`` or a list: rank r's node) says which node each rank is on (default: this
    host). The job directory ``store`` keeps the ledgers and must survive a node.
    """
    store_path = Path(store).resolve()
    kills = [parse_kill(k) if isinstance(k, str) else (int(k[0]), float(k[1])) for k in kill]
    knobs: dict[str, float] = {
        "heartbeat_interval_s": parse_duration_s(heartbeat_interval),
        "heartbeat_timeout_s": parse_duration_s(heartbeat_timeout),
        "max_restarts": max_restarts,
        "timeout_s": parse_duration_s(timeout),
    }
    if resume:
        _no_resize_on_levels(store_path, n)
        config = _resized_if_asked(store_path, n)
        given: dict[str, object] = {
            "app": None if app is None else app_spec(app),
            "n": n,
            "protocol": protocol,
            "topology": topology,
            "app_options": None if app_options is None else dict(app_options),
            "protocol_options": None if protocol_options is None else dict(protocol_options),
            "levels": None if levels is None else _absolute_levels(levels, flush_every),
            "flush_every": flush_every,
            "node_of": None if node_of is None else _node_list(node_of),
        }
        for key, value in given.items():
            if value is not None and value != getattr(config, key):
                raise ConfigError(
                    f"--resume: the job in {store_path} has {key}={getattr(config, key)!r}, "
                    f"not {value!r}; leave it out to use the stored value"
                )
        for knob, setting in knobs.items():
            setattr(config, knob, setting)
        config.trace = trace
        # Its checkpoints may hold pickles already: once allowed, loading them must stay so.
        config.allow_pickle = config.allow_pickle or allow_pickle
    else:
        if app is None or n is None:
            raise ConfigError("give the app to run and the number of ranks (-n)")
        spec = app_spec(app)
        app_options = _pinned_options(spec, app_options, n)
        if topology is None:
            topology = _default_topology(spec)
        topo = Topology.parse(topology, n, seed=seed)
        config = JobConfig(
            app=spec,
            n=n,
            protocol=protocol or "chandy-lamport",
            topology=topology,
            edges=[list(e) for e in sorted(topo.edges)],
            interval_s=parse_duration_s(interval),
            store=str(store_path),
            seed=seed,
            app_options=dict(app_options or {}),
            protocol_options=dict(protocol_options or {}),
            trace=trace,
            heartbeat_interval_s=knobs["heartbeat_interval_s"],
            heartbeat_timeout_s=knobs["heartbeat_timeout_s"],
            max_restarts=max_restarts,
            timeout_s=knobs["timeout_s"],
            allow_pickle=allow_pickle,
            levels=_absolute_levels(levels, flush_every),
            flush_every=flush_every or 0,
            node_of=[] if node_of is None else _node_list(node_of),
        )
    return LocalJob(
        config,
        resume=resume,
        kills=kills,
        on_status=on_status,
        supervisor=_supervisor_factory(engine, mpiexec, ray_address, shared_store),
    ).run()


ENGINES = ("local", "mpi", "ray")


def _absolute_levels(levels: str | None, flush_every: int | None) -> str:
    if not levels:
        return ""
    from snapline.store.multilevel import parse_levels

    return parse_levels(levels, flush_every=flush_every).absolute().spec()


def _no_resize_on_levels(store: Path, n: int | None) -> None:
    # A resize reads and moves the ranks' stores in the job directory; a job on storage
    # levels keeps them on the nodes, which the resize does not know yet.
    config = load_job(store)
    if config.levels and n is not None and n != config.n:
        raise ConfigError(
            f"--resume -n {n}: the job in {store} keeps its checkpoints on storage levels "
            f"({config.levels}), and resizing such a job is not supported; resume it with "
            f"-n {config.n}"
        )


def _node_list(node_of: str | Sequence[str]) -> list[str]:
    if isinstance(node_of, str):
        return [part.strip() for part in node_of.split(",")]
    return [str(node) for node in node_of]


def _resized_if_asked(store: Path, n: int | None) -> JobConfig:
    """The stored job's config, resized first when ``n`` differs from its -n.

    A resize an earlier ``--resume`` left unfinished (a crash) is finished first; the old
    ranks' files of past resizes are pruned once the job has a committed checkpoint of every
    rank (see ``runtime.local.resize``).
    """
    from snapline.runtime.local import resize

    config = resize.finish_interrupted(store, load_job(store))
    resize.prune_previous(store, config)
    if n is None or n == config.n:
        return config
    refuse_if_running(store, "stop it before resuming it on another number of ranks")
    return resize.resize_job(store, config, n)


def _pinned_options(
    spec: str, app_options: Mapping[str, Any] | None, n: int
) -> dict[str, Any] | None:
    # Built-in apps may fix parameters at the start, so that a resize does not change them.
    if not is_builtin_app(spec):
        return None if app_options is None else dict(app_options)
    from snapline.apps import app_spec as builtin

    pin = builtin(spec).pin_params
    if pin is None:
        return None if app_options is None else dict(app_options)
    return pin(dict(app_options or {}), n)


def _supervisor_factory(
    engine: str, mpiexec: str | None, ray_address: str | None = None, shared_store: bool = False
) -> SupervisorFactory:
    if ray_address is not None and engine != "ray":
        raise ConfigError("--ray-address applies only to --engine ray")
    if shared_store and engine != "ray":
        raise ConfigError("--shared-store applies only to --engine ray")
    if engine == "ray":
        if mpiexec is not None:
            raise ConfigError("--mpiexec applies only to --engine mpi")
        from snapline.runtime.ray import supervisor_factory as ray_factory

        made: SupervisorFactory = ray_factory(ray_address, shared_store=shared_store)
        return made
    if engine == "local":
        if mpiexec is not None:
            raise ConfigError("--mpiexec applies only to --engine mpi")
        return Supervisor
    if engine == "mpi":
        from snapline.runtime.mpi import supervisor_factory

        factory: SupervisorFactory = supervisor_factory(mpiexec)
        return factory
    raise ConfigError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")


def _default_topology(spec: str) -> str:
    if is_builtin_app(spec):
        from snapline.apps import app_spec as builtin

        return builtin(spec).default_topology
    return "complete"
