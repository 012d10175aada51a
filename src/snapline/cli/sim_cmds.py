"""``snapline sim``: run one simulated job under faults, check it, and summarise it.

Every option maps to a ``SimConfig`` field; a failing check prints the seed and the exact
command that replays the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from snapline.apps import app_spec
from snapline.cli.options import (
    DURATION,
    DURATION_FORMAT,
    FAILURE,
    FLAG,
    TOPOLOGY_HELP,
    duration_s,
    failures_at,
    optional_duration_s,
)
from snapline.errors import ConfigError
from snapline.runtime.sim import Partition, SimConfig, SimResult, run_simulation

console = Console()


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad {what} {item!r}: use KEY=VALUE")
        out[key] = value
    return out


def _option_value(text: str) -> Any:
    # Protocol options are plain data; numbers and booleans are written as JSON on the CLI.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _channel_delays(items: list[str]) -> dict[tuple[int, int], str]:
    out = {}
    for key, spec in _pairs(items, "--channel-delay").items():
        src, sep, dst = key.partition("-")
        try:
            out[(int(src), int(dst))] = spec
        except ValueError:
            raise ConfigError(f"bad --channel-delay {key!r}: use SRC-DST=SPEC") from None
        if not sep:
            raise ConfigError(f"bad --channel-delay {key!r}: use SRC-DST=SPEC")
    return out


def _slow_disks(items: list[str]) -> dict[int, str]:
    out = {}
    for key, spec in _pairs(items, "--slow-disk").items():
        try:
            out[int(key)] = spec
        except ValueError:
            raise ConfigError(f"bad --slow-disk {key!r}: use RANK=SPEC, e.g. 3=exp:5") from None
    return out


def _interval(text: str) -> float | None:
    if text.lower() in ("none", "off", "never"):
        return None
    return duration_s(text, "--interval")


def summary_table(result: SimResult) -> Table:
    """The rich summary of a run."""
    stats = result.stats
    config = result.config
    table = Table(
        title=f"{config.app} x {config.protocol}, n={config.n}, seed={config.seed}",
        show_header=False,
    )
    table.add_column("what")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("simulated time", f"{stats['sim_time_s']:.2f} s"),
        ("messages delivered", f"{stats['messages_delivered']:,}"),
        ("wall time", f"{stats['wall_s']:.2f} s ({stats['msgs_per_s']:,.0f} msgs/s)"),
        (
            "checkpoints basic / forced",
            f"{stats['checkpoints_basic']} / {stats['checkpoints_forced']}",
        ),
        (
            "checkpoints committed / lost in write",
            f"{stats['checkpoints_committed']} / {stats['checkpoint_writes_lost']}",
        ),
        ("control messages", f"{stats['control_messages']:,}"),
        ("piggyback bytes", f"{stats['piggyback_bytes']:,}"),
        ("crashes / recoveries", f"{stats['crashes']} / {stats['recoveries']}"),
        ("ranks rolled back", str(stats["ranks_rolled_back"])),
        ("max rollback distance", f"{stats['max_rollback_s']:.2f} s"),
        ("work lost (sum over ranks)", f"{stats['work_lost_s']:.2f} s"),
        ("messages replayed", f"{stats['replayed']:,}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    for check in result.checks:
        table.add_row(f"check: {check.name}", f"[green]passed[/] ({check.runs})")
    return table


def sim(
    app: str = typer.Option(
        "bank", "--app", help="Example app: bank, token-ring, wordcount, heat, chatter."
    ),
    n: int = typer.Option(4, "-n", "--ranks", help="Number of ranks."),
    protocol: str = typer.Option("none", "--protocol", help="Checkpointing protocol name."),
    seed: int = typer.Option(0, "--seed", help="The seed that determines the whole run."),
    interval: str = typer.Option(
        "50s",
        "--interval",
        metavar=DURATION,
        help=f"Basic checkpoint interval ({DURATION_FORMAT}), or none.",
    ),
    topology: str | None = typer.Option(
        None, "--topology", metavar="TOPOLOGY", help=f"{TOPOLOGY_HELP} (default: the app's)."
    ),
    messages: int | None = typer.Option(
        None, "--messages", help="The app's size: messages per rank, rounds or steps."
    ),
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", metavar="KEY=VALUE", help="App parameter (repeatable)."),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", metavar="KEY=JSON", help="Protocol option (repeatable)."),
    ] = None,
    crash_rate: float = typer.Option(0.0, "--crash-rate", help="Crashes per rank per second."),
    crash_at: Annotated[
        list[str] | None,
        typer.Option(
            "--crash-at",
            "--kill",
            metavar=FAILURE,
            help="Crash RANK at simulated TIME, e.g. 2@15s (repeatable; --kill is the same).",
        ),
    ] = None,
    crash_burst: int = typer.Option(1, "--crash-burst", help="Up to this many ranks per crash."),
    crash_in_write: float = typer.Option(
        0.0, "--crash-in-write", help="Chance that a checkpoint write is cut by a crash."
    ),
    crash_in_recovery: float = typer.Option(
        0.0, "--crash-in-recovery", help="Chance that a recovery is hit by another crash."
    ),
    max_crashes: int = typer.Option(10, "--max-crashes", help="At most this many crashes."),
    faults_until: str | None = typer.Option(
        None,
        "--faults-until",
        metavar=DURATION,
        help="No crashes after this time (then the job must finish).",
    ),
    detect_delay: str = typer.Option(
        "1s", "--detect-delay", metavar=DURATION, help="Failure detection delay."
    ),
    restart_delay: str = typer.Option(
        "1s", "--restart-delay", metavar=DURATION, help="Restart delay."
    ),
    delay: str = typer.Option("uniform:0.01:0.1", "--delay", help="Network delay distribution."),
    channel_delay: Annotated[
        list[str] | None,
        typer.Option("--channel-delay", metavar="SRC-DST=SPEC", help="Per-channel delay."),
    ] = None,
    requests: str | None = typer.Option(
        None,
        "--requests",
        help="Basic checkpoint requests on 'all' ranks or 'one' (rank 0); default: protocol's.",
    ),
    reorder: bool = typer.Option(
        False, "--reorder", metavar=FLAG, help="Non-FIFO network (if allowed)."
    ),
    loss: float = typer.Option(0.0, "--loss", help="Packet loss rate under the reliable layer."),
    dup: float = typer.Option(0.0, "--dup", help="Packet duplication rate under the layer."),
    rto: str = typer.Option("200ms", "--rto", metavar=DURATION, help="Retransmission timeout."),
    partition: Annotated[
        list[str] | None,
        typer.Option("--partition", metavar="RANKS@START-END", help="e.g. 0,1@5-9 (seconds)."),
    ] = None,
    persist_delay: str = typer.Option("exp:0.2", "--persist-delay", help="Checkpoint write time."),
    slow_disk: Annotated[
        list[str] | None,
        typer.Option("--slow-disk", metavar="RANK=SPEC", help="Write time of RANK's disk."),
    ] = None,
    log_delay: str = typer.Option("exp:0.01", "--log-delay", help="Message-log write time."),
    max_time: str = typer.Option(
        "1000000s", "--max-time", metavar=DURATION, help="Fail if not finished by then."
    ),
    stall_timeout: str = typer.Option(
        "2000s", "--stall-timeout", metavar=DURATION, help="Fail after this long without progress."
    ),
    json_out: Annotated[
        Path | None, typer.Option("--json", metavar="FILE", help="Write results as JSON here.")
    ] = None,
    trace_out: Annotated[
        Path | None,
        typer.Option("--trace", metavar="FILE", help="Write the trace here (for snapline viz)."),
    ] = None,
    no_reference: bool = typer.Option(
        False, "--no-reference", metavar=FLAG, help="Skip the failure-free comparison run."
    ),
) -> None:
    """Run one simulated job under faults and check every guarantee on it."""
    spec = app_spec(app)
    app_params: dict[str, Any] = dict(_pairs(param or [], "--param"))
    if messages is not None:
        app_params[spec.size_param] = messages
    config = SimConfig(
        app=app,
        n=n,
        protocol=protocol,
        topology=topology,
        seed=seed,
        app_params={k: v for k, v in spec.resolve_params(app_params).items() if k in app_params},
        protocol_options={k: _option_value(v) for k, v in _pairs(option or [], "--option").items()},
        interval_s=_interval(interval),
        checkpoint_requests=requests,
        delay=delay,
        channel_delays=_channel_delays(channel_delay or []),
        reorder=reorder,
        loss_rate=loss,
        dup_rate=dup,
        rto_s=duration_s(rto, "--rto"),
        partitions=tuple(Partition.parse(p) for p in partition or []),
        crash_at=failures_at(crash_at),
        crash_rate=crash_rate,
        crash_burst=crash_burst,
        crash_in_write=crash_in_write,
        crash_in_recovery=crash_in_recovery,
        max_crashes=max_crashes,
        faults_until_s=optional_duration_s(faults_until, "--faults-until"),
        detect_delay_s=duration_s(detect_delay, "--detect-delay"),
        restart_delay_s=duration_s(restart_delay, "--restart-delay"),
        persist_delay=persist_delay,
        slow_disks=_slow_disks(slow_disk or []),
        log_delay=log_delay,
        max_time_s=duration_s(max_time, "--max-time"),
        stall_timeout_s=duration_s(stall_timeout, "--stall-timeout"),
        trace=trace_out is not None,
        reference=not no_reference,
    )
    with console.status(f"simulating {app} x {protocol} on {n} ranks (seed {seed})..."):
        result = run_simulation(config)
    console.print(summary_table(result))
    if json_out is not None:
        result.write_json(json_out)
        console.print(f"results written to {json_out}")
    if trace_out is not None and result.trace is not None:
        result.trace.write(trace_out)
        console.print(f"trace written to {trace_out}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("sim")(sim)
