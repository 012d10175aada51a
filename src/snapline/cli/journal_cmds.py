"""``snapline journal ...``: look into a journal directory (like HDFS's ``oiv`` and ``oev``)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.pretty import Pretty
from rich.table import Table

from snapline.cli.options import SnaplineGroup
from snapline.journal import inspect_journal, iter_edits, load_image

journal_app = typer.Typer(
    name="journal",
    help="Inspect image + edit-log journals (snapline.journal).",
    no_args_is_help=True,
    cls=SnaplineGroup,
)


def _when(unix_s: float | None) -> str:
    if unix_s is None:
        return "-"
    return dt.datetime.fromtimestamp(unix_s, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@journal_app.command("inspect")
def inspect_cmd(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="The journal directory.")],
    edits: Annotated[
        bool,
        typer.Option("--edits", metavar="", help="Print every operation in the edit log."),
    ] = False,
    from_txid: Annotated[
        int, typer.Option("--from-txid", help="With --edits: start at this txid.")
    ] = 1,
    image: Annotated[
        int | None,
        typer.Option("--image", metavar="TXID", help="Print the state held by image_<TXID>."),
    ] = None,
) -> None:
    """Show a journal's images and edit-log segments (read-only; safe while a writer runs).

    Images are listed with txid, size, creation time and entries; segments with their txid
    ranges, record counts and tail status (a torn tail is reported, not cut). ``--edits``
    prints the operations (like ``hdfs oev``), ``--image TXID`` prints an image (like
    ``hdfs oiv``).
    """
    console = Console()
    if image is not None:
        info, state = load_image(directory, image)
        console.print(
            f"[bold]{info.path.name}[/]: txid {info.txid}, {info.size_bytes} bytes, "
            f"{info.entries if info.entries is not None else '?'} entries, "
            f"created {_when(info.created_unix_s)}"
        )
        console.print(Pretty(state))
        return
    if edits:
        table = Table(title=f"edits in {directory}")
        table.add_column("txid", justify="right")
        table.add_column("op")
        for record in iter_edits(directory, from_txid):
            table.add_row(str(record.txid), Pretty(record.op))
        console.print(table)
        return
    report = inspect_journal(directory)
    console.print(
        f"[bold]journal[/] {report.directory}: format v{report.version}, {report.mode} mode"
        + (f", machine {report.machine}" if report.machine else "")
    )
    images = Table(title="images")
    for column in ("name", "txid", "size (bytes)", "created", "entries", "status"):
        images.add_column(
            column,
            justify="right" if column in ("txid", "entries") else "left",
            no_wrap=column == "name",
        )
    for img in report.images:
        images.add_row(
            img.name,
            str(img.txid),
            str(img.size_bytes),
            _when(img.created_unix_s),
            "-" if img.entries is None else str(img.entries),
            "ok" if img.intact else f"[red]damaged: {img.problem}[/]",
        )
    console.print(images)
    segments = Table(title="edit-log segments")
    for column in ("name", "state", "txids", "records", "size (bytes)", "tail"):
        segments.add_column(column, no_wrap=column == "name")
    for seg in report.segments:
        txids = "-" if seg.last_txid is None else f"{seg.first_txid}..{seg.last_txid}"
        if seg.problem is None:
            tail = "clean"
        elif seg.finalized:
            tail = f"[red]damaged at offset {seg.tail_offset}: {seg.problem}[/]"
        else:
            tail = f"[yellow]torn at offset {seg.tail_offset}: {seg.problem}[/]"
        segments.add_row(
            seg.name,
            "finalized" if seg.finalized else "in progress",
            txids,
            str(seg.records),
            str(seg.size_bytes),
            tail,
        )
    console.print(segments)
    console.print(
        f"{len(report.images)} images, {len(report.segments)} segments, "
        f"{report.record_count} records"
        + (f"; other files: {', '.join(report.other_files)}" if report.other_files else "")
    )


def register(app: typer.Typer) -> None:
    """Add the ``journal`` command group to ``app``."""
    app.add_typer(journal_app, name="journal")
