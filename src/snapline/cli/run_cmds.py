"""``snapline run`` (a real job on local processes) and ``snapline ps`` (what a job is doing)."""

from __future__ import annotations

import contextlib
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from snapline.cli.options import (
    DURATION,
    DURATION_FORMAT,
    FAILURE,
    FLAG,
    FLUSH_EVERY,
    TOPOLOGY_HELP,
    node_of_option,
)
from snapline.errors import ConfigError, SnaplineError
from snapline.runtime.local.jobdir import checkpoint_label

console = Console()


def _parse_params(items: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: write KEY=VALUE, e.g. --param messages=200")
        params[key.strip()] = _number_or_text(value.strip())
    return params


def _number_or_text(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def status_line(status: Any) -> Text:
    """One line: ranks up, ranks with a committed checkpoint, recoveries, messages/s."""
    up = sum(r.state in ("running", "frozen") for r in status.ranks)
    text = Text()
    text.append(
        f"{status.state:<10}", style="bold green" if status.state == "running" else "bold yellow"
    )
    text.append(f" ranks up {up}/{status.n}")
    text.append(f"  committed {status.checkpoints_committed}/{status.n} ranks")
    text.append(f"  recoveries {status.recoveries}")
    text.append(f"  {status.messages_per_s:,.0f} msg/s")
    return text


def summary_table(result: Any) -> Table:
    """The final report of a run: per rank, the same figures the summary line adds up.

    delivered: messages in the rank's final state (redone work counts once); checkpoints:
    committed over the whole run; restarts: processes started again after a failure.
    """
    table = Table(title=f"snapline run: {result.protocol}, {result.n} ranks")
    for name in ("rank", "result", "delivered", "checkpoints", "restarts", "outputs"):
        # The result wraps rather than being cut: it is what the user ran the job for.
        table.add_column(name, justify="left" if name == "result" else "right")
    for rank in range(result.n):
        stats = result.stats.get(rank, {})
        table.add_row(
            str(rank),
            Text(repr(result.results.get(rank)), overflow="fold"),
            str(stats.get("messages_delivered", 0)),
            str(stats.get("checkpoints_committed", 0)),
            str(stats.get("restarts", 0)),
            str(len(result.outputs.get(rank, []))),
        )
    return table


def summary_line(result: Any) -> str:
    """The totals of ``summary_table``'s columns, and what the run took."""
    restarts = sum(int(s.get("restarts", 0)) for s in result.stats.values())
    recoveries = len(result.recoveries)
    # A resume starts every rank from the store: that is the resume, not a restart per rank.
    resumed = any(r.get("whole_job") for r in result.recoveries)
    return (
        f"finished in {result.elapsed_s:.2f}s; {result.messages_delivered} messages delivered, "
        f"{result.checkpoints_committed} checkpoints committed, "
        f"{recoveries} recover{'y' if recoveries == 1 else 'ies'}"
        f"{' (one of them the resume)' if resumed else ''}, "
        f"{restarts} restart{'' if restarts == 1 else 's'}"
    )


@contextlib.contextmanager
def _trace_hint_on_failure(store: Path, traced: bool) -> Iterator[None]:
    """When the job fails, say where its trace is: the failed run is the one to look at."""
    try:
        yield
    except SnaplineError:
        trace = store / "trace.json"
        if traced and trace.is_file():
            console.print(f"trace of the failed run: {trace}  (draw it: snapline viz {trace})")
        raise


def _job_file_commands(path: Path) -> list[list[str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"--job-file {path}: {exc}") from exc
    out = [shlex.split(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not out:
        raise ConfigError(f"--job-file {path} names no command")
    return out


def _run_process_level(
    first: str | None,
    rest: list[str],
    *,
    n: int | None,
    store: Path,
    interval: str | None,
    resume: bool,
    backend: str,
    job_file: Path | None,
    hang: str | None,
    max_restarts: int,
    timeout: str | None,
) -> None:
    """``snapline run --level process``: see ``snapline.levels.process``."""
    import sys

    from snapline.cli.options import duration_s, optional_duration_s
    from snapline.levels.process import ProcessJobSpec, run_process_job

    spec = None
    if not resume:
        if job_file is not None:
            if first is not None:
                raise ConfigError("give either --job-file or a command, not both")
            commands = _job_file_commands(job_file)
            if n is not None and n != len(commands):
                raise ConfigError(f"-n {n} but --job-file lists {len(commands)} commands")
        elif first is None:
            raise ConfigError(
                "give the command to run after --, e.g. snapline run --level process -n 2 "
                "--store DIR -- python train.py (or --resume a job in --store)"
            )
        else:
            commands = [[first, *rest]] * (n or 1)
        spec = ProcessJobSpec(
            commands=commands,
            backend=backend,
            interval_s=duration_s(interval or "30s", "--interval"),
            max_restarts=max_restarts,
            hang_timeout_s=optional_duration_s(hang, "--heartbeat-timeout"),
            timeout_s=optional_duration_s(timeout, "--timeout"),
        )

    def echo(pipe: str, data: bytes) -> None:
        stream = sys.stdout if pipe.startswith("out") else sys.stderr
        stream.flush()
        stream.buffer.write(data)
        stream.buffer.flush()

    result = run_process_job(spec, store, resume=resume, echo=echo)
    pauses = sorted(result.pauses_s)
    median = f", median pause {pauses[len(pauses) // 2]:.2f}s" if pauses else ""
    Console(stderr=True).print(
        f"finished in {result.elapsed_s:.2f}s: {result.n} ranks, {result.checkpoints} "
        f"checkpoints{median}, {result.recoveries} recoveries; output in {result.output_dir}",
        highlight=False,
    )
    for note in result.notes:
        Console(stderr=True).print(f"note: {note}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``ps`` to ``app``."""

    # Extra arguments: with --level process, what follows the command's name (after --).
    @app.command("run", context_settings={"allow_extra_args": True})
    def run_cmd(
        ctx: typer.Context,
        app_name: Annotated[
            str | None,
            typer.Argument(
                metavar="APP",
                help="A built-in app (bank), path/file.py:Class or module:Class. "
                "Optional with --resume. With --level process: -- and the command to run "
                "with its arguments.",
            ),
        ] = None,
        level: Annotated[
            str,
            typer.Option(
                "--level",
                help="application (Process classes) or process (any program, "
                "checkpointed from outside by CRIU).",
            ),
        ] = "application",
        backend: Annotated[
            str,
            typer.Option(
                "--backend", help="With --level process: the checkpointer (criu or dmtcp)."
            ),
        ] = "criu",
        job_file: Annotated[
            Path | None,
            typer.Option(
                "--job-file",
                metavar="FILE",
                help="With --level process: one command per line, one rank each (# comments).",
            ),
        ] = None,
        store: Annotated[
            Path, typer.Option("--store", metavar="DIR", help="Store directory of the job.")
        ] = Path("snapline-job"),
        n: Annotated[
            int | None,
            typer.Option(
                "-n",
                "--ranks",
                help="Number of ranks (processes). With --resume, another number resizes a "
                "job with keyed state (see docs/howto/resize.md).",
            ),
        ] = None,
        protocol: Annotated[
            str | None,
            typer.Option(
                "--protocol", "-P", help="Checkpointing protocol (default chandy-lamport)."
            ),
        ] = None,
        interval: Annotated[
            str | None,
            typer.Option(
                "--interval",
                metavar=DURATION,
                help=f"Checkpoint interval ({DURATION_FORMAT}; default 1s, process level 30s).",
            ),
        ] = None,
        topology: Annotated[
            str | None,
            typer.Option(
                "--topology", metavar="TOPOLOGY", help=f"{TOPOLOGY_HELP} (default: the app's)."
            ),
        ] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the ranks' ctx.random.")] = 0,
        resume: Annotated[
            bool,
            typer.Option("--resume", metavar=FLAG, help="Continue a job whose processes all died."),
        ] = False,
        kill: Annotated[
            list[str] | None,
            typer.Option(
                "--kill",
                "--crash-at",
                metavar=FAILURE,
                help="kill -9 RANK at TIME after every rank started, e.g. 1@500ms (repeatable; "
                "--crash-at is the same, as in sim and compare).",
            ),
        ] = None,
        param: Annotated[
            list[str] | None,
            typer.Option("--param", "-p", metavar="KEY=VALUE", help="App parameter (repeatable)."),
        ] = None,
        heartbeat_timeout: Annotated[
            str | None,
            typer.Option(
                "--heartbeat-timeout",
                metavar=DURATION,
                help="Declare a silent rank hung after this long (default 3s). Process level: "
                "declare the job hung when none of its processes wrote output for this long "
                "(default: never).",
            ),
        ] = None,
        max_restarts: Annotated[
            int, typer.Option("--max-restarts", help="Give up after this many restarts.")
        ] = 10,
        timeout: Annotated[
            str | None,
            typer.Option(
                "--timeout",
                metavar=DURATION,
                help="Give up if the job has not finished by then (default 10m; process level: "
                "no limit).",
            ),
        ] = None,
        no_trace: Annotated[
            bool, typer.Option("--no-trace", metavar=FLAG, help="Do not record a trace.")
        ] = False,
        allow_pickle: Annotated[
            bool,
            typer.Option(
                "--allow-pickle",
                metavar=FLAG,
                help="Pickle state the safe codec cannot encode. Unsafe for checkpoints from "
                "untrusted sources: loading a pickle runs code.",
            ),
        ] = False,
        engine: Annotated[
            str,
            typer.Option(
                "--engine",
                help="Where the ranks run: local (processes on this machine), mpi (the "
                "ranks of one mpiexec; a failure relaunches the whole job from the recovery "
                "line) or ray (one Ray actor per rank, restarted alone). A store can be "
                "resumed on any.",
            ),
        ] = "local",
        mpiexec: Annotated[
            str | None,
            typer.Option(
                "--mpiexec",
                metavar="PATH",
                help="The mpiexec of --engine mpi (default: the mpich wheel's, else PATH's).",
            ),
        ] = None,
        ray_address: Annotated[
            str | None,
            typer.Option(
                "--ray-address",
                metavar="ADDRESS",
                help="The Ray cluster of --engine ray (auto, HOST:PORT or ray://HOST:PORT; "
                "default: a new local Ray).",
            ),
        ] = None,
        levels: Annotated[
            str | None,
            typer.Option(
                "--levels",
                metavar="LEVELS",
                help="Multi-level checkpoints, fastest first: local:DIR[,partner][,xor:K]"
                "[,remote:URL], e.g. local:/scratch,partner,remote:s3://bucket/prefix. "
                "Every engine.",
            ),
        ] = None,
        flush_every: Annotated[int | None, FLUSH_EVERY] = None,
        node_of: Annotated[str | None, node_of_option("this host")] = None,
        shared_store: Annotated[
            bool,
            typer.Option(
                "--shared-store",
                help="--engine ray on several hosts: the --store directory is mounted by every "
                "host at the same path, though its file system type does not show it.",
            ),
        ] = False,
    ) -> None:
        """Run APP as a real job: one OS process per rank, checkpointed, recovered on failure.

        With --level process, run any command instead: snapline run --level process -n 2
        --store DIR -- python train.py. Each copy learns its rank from SNAPLINE_RANK (and
        RANK); all are checkpointed together from outside and restored after a failure.
        """
        from snapline.levels.process.supervisor import JOB_FILE as PROCESS_JOB_FILE

        args = list(ctx.args)
        if level == "process" or (resume and (store / PROCESS_JOB_FILE).is_file()):
            if engine not in (None, "local"):
                raise ConfigError(
                    f"--engine {engine} runs application-level jobs; --level process runs its "
                    "processes on this machine"
                )
            if (levels, flush_every, node_of) != (None, None, None):
                raise ConfigError(
                    "--levels, --flush-every and --node-of apply to application-level jobs; "
                    "--level process keeps its images in --store"
                )
            _run_process_level(
                app_name, args, n=n, store=store, interval=interval, resume=resume,
                backend=backend, job_file=job_file, hang=heartbeat_timeout,
                max_restarts=max_restarts, timeout=timeout,
            )  # fmt: skip
            return
        if level != "application":
            raise ConfigError(f"--level {level!r}: choose application or process")
        if args or job_file is not None:
            raise ConfigError(
                "extra arguments and --job-file belong to --level process; an application-level "
                "job takes one APP"
            )
        from snapline.runtime.local import run

        if app_name is None and not resume:
            raise ConfigError("give the APP to run (or --resume a job in --store)")
        live = Live(Text("starting..."), console=console, refresh_per_second=8, transient=True)
        with live, _trace_hint_on_failure(store, not no_trace):
            result = run(
                app_name,
                n,
                store=store,
                protocol=protocol,
                interval=interval or "1s",
                topology=topology,
                seed=seed,
                resume=resume,
                kill=kill or [],
                heartbeat_timeout=heartbeat_timeout or "3s",
                max_restarts=max_restarts,
                timeout=timeout or "10m",
                trace=not no_trace,
                app_options=_parse_params(param or []) if param or not resume else None,
                allow_pickle=allow_pickle,
                on_status=lambda status: live.update(status_line(status)),
                engine=engine,
                mpiexec=mpiexec,
                ray_address=ray_address,
                levels=levels,
                flush_every=flush_every,
                node_of=node_of,
                shared_store=shared_store,
            )
        console.print(summary_table(result))
        for rank, items in sorted(result.outputs.items()):
            for item in items:
                console.print(f"[dim]output[/] rank {rank}: {item!r}")
        console.print(summary_line(result))
        for warning in result.warnings:
            Console(stderr=True).print(f"[bold yellow]warning:[/] {warning}", highlight=False)
        if result.trace_path is not None:
            console.print(
                f"trace: {result.trace_path}  (draw it with: snapline viz {result.trace_path})"
            )

    @app.command("ps")
    def ps_cmd(
        store: Annotated[
            Path,
            typer.Argument(
                metavar="DIR", help="Store directory of a job started with snapline run."
            ),
        ],
    ) -> None:
        """Show a job's ranks: pid, state, incarnation, restarts, last committed checkpoint.

        On engines that place ranks on several hosts (Ray) "node" is the host a rank runs on;
        "alive" is "?" for a pid on another host (kill it there: ssh NODE kill -9 PID).

        "last ckpt" reads "4 (inc 1)" for checkpoint 4 of incarnation 1, "none" before the first.
        """
        from snapline.runtime.local.status import is_this_host, pid_alive, read_status

        status = read_status(store)
        age_s = time.time() - status.updated_at
        sup_alive = pid_alive(status.supervisor_pid)
        state = status.state if sup_alive or status.state in ("finished", "failed") else "dead"
        console.print(
            f"job {status.job_id}: {status.app} on {status.n} ranks, {status.protocol}; "
            f"supervisor pid {status.supervisor_pid} ({state}); updated {age_s:.1f}s ago; "
            f"{status.recoveries} recoveries, {sum(r.restarts for r in status.ranks)} restarts"
        )
        table = Table()
        nodes = any(rank.node for rank in status.ranks)
        columns = ("rank", "node", "pid", "state", "alive", "incarnation", "restarts", "last ckpt")
        widest = max((len(rank.node or "") for rank in status.ranks), default=0)
        for name in columns if nodes else (c for c in columns if c != "node"):
            # An address cut short is no use for ``ssh NODE kill -9 PID``.
            table.add_column(name, justify="right", min_width=widest if name == "node" else None)
        for rank in status.ranks:
            here = not rank.node or is_this_host(rank.node)
            table.add_row(
                str(rank.rank),
                *([rank.node or "?"] if nodes else []),
                str(rank.pid),
                rank.state,
                ("yes" if pid_alive(rank.pid) else "no") if here else "?",
                str(rank.incarnation),
                str(rank.restarts),
                checkpoint_label(rank.last_checkpoint),
            )
        console.print(table)
        if status.note:
            console.print(f"note: {status.note}")
