"""``snapline vm``: system-level jobs, whose ranks are QEMU virtual machines."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from snapline.cli.options import DURATION, DURATION_FORMAT, FLAG, duration_s

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

vm_app = typer.Typer(
    name="vm",
    help="System level: run VMs under QEMU as the ranks of a job, with coordinated "
    "whole-machine checkpoints, rollback and output commit.",
    no_args_is_help=True,
)

STORE_ARG = typer.Argument(metavar="DIR", help="Store directory of a job started with vm run.")


@vm_app.command("run")
def run_cmd(
    spec: Annotated[
        Path | None,
        typer.Argument(metavar="SPEC", help="The job's spec file (TOML). Optional with --resume."),
    ] = None,
    store: Annotated[
        Path, typer.Option("--store", metavar="DIR", help="Store directory of the job.")
    ] = Path("snapline-vm-job"),
    interval: Annotated[
        str,
        typer.Option(
            "--interval", metavar=DURATION, help=f"Checkpoint interval ({DURATION_FORMAT})."
        ),
    ] = "30s",
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", metavar=FLAG, help="Continue a job whose supervisor and VMs all died."
        ),
    ] = False,
    hang_timeout: Annotated[
        str,
        typer.Option(
            "--hang-timeout",
            metavar=DURATION,
            help=f"A VM whose QEMU does not answer for this long has failed ({DURATION_FORMAT}).",
        ),
    ] = "10s",
) -> None:
    """Boot the VMs SPEC describes; checkpoint them all every --interval; restore all on failure.

    A VM fails when its QEMU dies (kill -9) or stops answering QMP for --hang-timeout; every
    VM is then restored from the newest complete checkpoint and continues.

    The guests' output is printed (and kept in DIR/output/) once a checkpoint covering it is
    committed. `snapline ps DIR` shows each VM's QEMU pid.
    """
    from snapline.levels.system.job import VmJob
    from snapline.levels.system.jobdir import load_job_spec
    from snapline.levels.system.spec import load_spec

    if spec is None:
        if not resume:
            raise typer.BadParameter("give a SPEC file (or --resume an existing job)")
        vm_spec = load_job_spec(store)
    else:
        vm_spec = load_spec(spec)
    job = VmJob(
        vm_spec,
        store,
        interval_s=duration_s(interval, "--interval"),
        resume=resume,
        hang_timeout_s=duration_s(hang_timeout, "--hang-timeout"),
        on_output=_print_output,
        on_event=lambda line: err.print(f"[dim]snapline vm:[/] {line}", soft_wrap=True),
    )
    result = job.run()
    err.print(
        f"snapline vm: {'finished' if result.finished else 'stopped'}; "
        f"{len(result.checkpoints)} checkpoint(s), {result.recoveries} recover(ies)"
    )


def _print_output(rank: int, data: bytes) -> None:
    for line in data.decode(errors="replace").splitlines():
        sys.stdout.write(f"[vm {rank}] {line}\n")
    sys.stdout.flush()


@vm_app.command("checkpoint")
def checkpoint_cmd(store: Annotated[Path, STORE_ARG]) -> None:
    """Ask the running job to take a coordinated checkpoint now; print its pause and size."""
    from snapline.levels.system.jobdir import send_control

    record = send_control(store, {"command": "checkpoint"})["record"]
    console.print(
        f"checkpoint {record['step']}: pause {record['pause_s'] * 1000:.0f} ms, "
        f"{sum(record['stream_bytes']) / 2**20:.1f} MiB of state, "
        f"{sum(record['written_bytes']) / 2**20:.1f} MiB written"
    )


@vm_app.command("restore")
def restore_cmd(
    store: Annotated[Path, STORE_ARG],
    step: Annotated[
        int | None,
        typer.Option("--step", help="Checkpoint to restore (default: the newest complete)."),
    ] = None,
) -> None:
    """Roll every VM back to a checkpoint.

    With the job's supervisor running, it restores in place. Otherwise this restarts the job
    from that checkpoint in the foreground (like vm run --resume, from any complete step).
    """
    from snapline.levels.system.job import VmJob
    from snapline.levels.system.jobdir import load_job_spec, send_control
    from snapline.runtime.local.status import pid_alive, read_status

    status = read_status(store)
    if pid_alive(status.supervisor_pid) and status.state not in ("finished", "failed", "stopped"):
        send_control(store, {"command": "restore", "step": step})
        console.print(f"restored every VM of {store}")
        return
    job = VmJob(
        load_job_spec(store),
        store,
        resume=True,
        on_output=_print_output,
        on_event=lambda line: err.print(f"[dim]snapline vm:[/] {line}", soft_wrap=True),
    )
    job.run(step=step)


@vm_app.command("ls")
def ls_cmd(store: Annotated[Path, STORE_ARG]) -> None:
    """List the job's complete checkpoints: pause, state size, bytes written, frames in flight."""
    from snapline.levels.system.jobdir import load_job_spec, read_records

    spec = load_job_spec(store)
    records = read_records(store)
    console.print(
        f"{store}: {spec.guests} VM(s) of {spec.memory_mib} MiB; "
        f"{len(records)} complete checkpoint(s)"
    )
    table = Table()
    for name in ("step", "time (UTC)", "pause", "state", "written", "in flight"):
        table.add_column(name, justify="right")
    for rec in records:
        when = datetime.datetime.fromtimestamp(rec.created_unix_s, datetime.UTC)
        table.add_row(
            str(rec.step),
            when.strftime("%H:%M:%S"),
            f"{rec.pause_s * 1000:.0f} ms",
            f"{sum(rec.stream_bytes) / 2**20:.1f} MiB",
            f"{sum(rec.written_bytes) / 2**20:.1f} MiB",
            f"{sum(rec.in_flight_frames)} frame(s)",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``vm`` group to ``app``."""
    app.add_typer(vm_app)
