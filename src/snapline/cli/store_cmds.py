"""Store commands: ``ls``, ``inspect``, ``verify``, ``gc`` and ``diff`` on a checkpoint store.

DIR is a directory or a store URL (``s3://bucket/prefix`` and other object store URLs, with
credentials from the environment). They never create a store (``NotAStore`` for a path that is
not one) and never unpickle:
pickled values show as ``<pickled N bytes>``. ``verify`` exits 1 when anything is damaged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table
from rich.tree import Tree

from snapline.errors import NotAStore
from snapline.runtime.local.jobdir import (
    JobCheckpoints,
    checkpoint_label,
    is_job_dir,
    job_checkpoints,
)
from snapline.runtime.local.levels import node_layout
from snapline.state.codec import decode_tree
from snapline.store import Store, open_store
from snapline.store.manifest import LeafRef, Manifest
from snapline.store.reader import read_chunk

PROGRESS_MIN_BYTES = 256 * 1024 * 1024
"""CLI work on more bytes than this shows a progress bar."""

console = Console()


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@contextmanager
def progress_bar(label: str, total_bytes: int) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar callback when ``total_bytes`` is large, else None."""
    if total_bytes < PROGRESS_MIN_BYTES:
        yield None
        return
    columns = (*Progress.get_default_columns()[:1], BarColumn(), DownloadColumn())
    with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=total_bytes)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _open(directory: str) -> Store:
    path = Path(directory)
    if "://" not in directory and is_job_dir(path):
        raise NotAStore(
            f"{directory} is the directory of a job (snapline run), which holds one store per "
            f"rank: use {path / 'rank-0'} (and rank-1, ...); `snapline ls {directory}` lists "
            "them all with the recovery line"
        )
    from snapline.levels.process.supervisor import JOB_FILE as PROCESS_JOB_FILE

    if (path / PROCESS_JOB_FILE).is_file():  # a process-level job keeps its images here
        return open_store(path / "images", create=False)
    return open_store(directory, create=False)


def _when(unix_s: float) -> str:
    when = dt.datetime.fromtimestamp(unix_s)
    # Today's checkpoints need no date: the column stays narrow.
    return when.strftime("%H:%M:%S" if when.date() == dt.date.today() else "%m-%d %H:%M:%S")


def ls(
    directory: str = typer.Argument(
        ...,
        metavar="DIR",
        help="Store directory or URL (s3://bucket/prefix, ...), or the directory of a job.",
    ),
    every: bool = typer.Option(
        False, "--all", help="For a job: every committed checkpoint of every rank."
    ),
) -> None:
    """List checkpoints: step, time, size, bytes new vs shared; for a job, each rank's."""
    if "://" not in directory and is_job_dir(Path(directory)):
        _ls_job(Path(directory), every=every)
        return
    with _open(directory) as store:
        infos = store.list()
        # No vertical rules: the room goes to the meta column, which may be long.
        table = Table(title=f"checkpoints in {store.url}", box=box.SIMPLE_HEAD)
        for name in ("step", "time", "size", "stored", "new", "shared", "chunks", "meta"):
            # Numbers and times never wrap; the free-form meta wraps whole instead of being cut.
            table.add_column(
                name,
                justify="left" if name in ("time", "meta") else "right",
                no_wrap=name != "meta",
                overflow="fold",
            )
        for info in infos:
            if info.damaged:
                table.add_row(str(info.step), "[red]damaged[/]", "", "", "", "", "", info.damaged)
                continue
            table.add_row(
                str(info.step),
                _when(info.created_unix_s),
                human_bytes(info.total_bytes),
                human_bytes(info.stored_bytes),
                human_bytes(info.new_bytes),
                human_bytes(info.shared_bytes),
                str(info.chunk_count),
                "\n".join(f"{k}={v}" for k, v in info.meta.items()),
            )
        console.print(table if infos else f"no checkpoints in {store.url}")


def _ls_job(job_dir: Path, *, every: bool) -> None:
    """Each rank's committed checkpoints and the recovery line a resume would restore."""
    listing = job_checkpoints(job_dir)
    if every:
        _ls_job_checkpoints(listing)
    config = listing.config
    line = listing.recovery_line
    table = Table(
        title=f"job in {job_dir}: {config.app} on {config.n} ranks, {config.protocol}",
        title_justify="left",
    )
    columns = ["rank", "committed", "newest", "recovery line", "its step"]
    if config.levels:
        columns.append("held on")  # the levels holding the recovery line's checkpoint
    for name in columns:
        if name == "held on":
            table.add_column(name, justify="left", overflow="fold", min_width=12)
        else:
            table.add_column(name, justify="right", no_wrap=True)
    for rank in range(config.n):
        ckpts = listing.checkpoints[rank]
        restore = None if line is None else line[rank]
        row = [
            str(rank),
            str(len(ckpts)),
            ckpts[-1].label if ckpts else "none",
            "?" if restore is None else checkpoint_label(restore),
            "" if not restore else str(restore),
        ]
        if config.levels:
            held = next((c.levels for c in ckpts if c.index == restore), ())
            row.append(", ".join(held))
        table.add_row(*row)
    console.print(table)
    if line is None:
        console.print(f"[yellow]recovery line unknown:[/] {listing.problem}")
    else:
        console.print(
            "recovery line: what `snapline run --resume --store "
            f"{job_dir}` restores if every rank dies now ('none': the initial state)"
        )
    if config.levels:
        local = node_layout(config).local_store(0)
        console.print(
            f"storage levels {config.levels}: each rank's local level is a store, e.g. "
            f"snapline ls / inspect {local} (--step STEP)",
            highlight=False,
        )
        return
    console.print(
        "each rank's checkpoints are a store: snapline ls / inspect "
        f"{job_dir / 'rank-0'} (--step STEP)",
        highlight=False,
    )


def _ls_job_checkpoints(listing: JobCheckpoints) -> None:
    table = Table(title="committed checkpoints", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("rank", "checkpoint", "kind", "step", "recovery line"):
        table.add_column(name, justify="left" if name in ("kind", "recovery line") else "right")
    line = listing.recovery_line or {}
    for rank, ckpts in sorted(listing.checkpoints.items()):
        for ckpt in ckpts:
            table.add_row(
                str(rank),
                ckpt.label,
                "forced" if ckpt.forced else "basic",
                str(ckpt.index),
                "<- restored by a resume" if line.get(rank) == ckpt.index else "",
            )
    console.print(table)


class _LeafMark:
    def __init__(self, leaf: LeafRef, shared: int) -> None:
        self.leaf = leaf
        self.shared = shared


def _previous(store: Store, step: int) -> Manifest | None:
    lower = [s for s in store.steps() if s < step]
    try:
        return store.manifest(lower[-1]) if lower else None
    except Exception:
        return None


def _skeleton_tree(store: Store, manifest: Manifest) -> Any:
    previous = _previous(store, manifest.step)
    before = {c.identity for c in previous.chunks} if previous else set()
    c, off, length = manifest.skeleton
    raw = read_chunk(store.backend, manifest.chunks[c], step=manifest.step)[off : off + length]

    def resolve(index: int) -> object:
        leaf = manifest.leaves[index]
        shared = sum(1 for ci, _, _ in leaf.extents if manifest.chunks[ci].identity in before)
        return _LeafMark(leaf, shared)

    return decode_tree(
        raw.tobytes(), resolve, pickle_placeholder=lambda b: f"<pickled {len(b)} bytes>"
    )


def _label(value: object) -> str:
    if isinstance(value, _LeafMark):
        leaf = value.leaf
        shape = "x".join(map(str, leaf.shape)) or "scalar"
        chunks = len({c for c, _, _ in leaf.extents})
        kind = "bytes" if leaf.kind == "bytes" else f"{leaf.dtype} [{shape}]"
        return (
            f"[cyan]{kind}[/] {human_bytes(leaf.nbytes)}, {chunks} chunk(s), "
            f"{value.shared} shared with previous"
        )
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _add(tree: Tree, value: object) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _add_child(tree, repr(k), v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _add_child(tree, f"[{i}]", v)


def _add_child(tree: Tree, name: str, value: object) -> None:
    if isinstance(value, dict | list | tuple) and value:
        kind = type(value).__name__
        _add(tree.add(f"[bold]{name}[/] ({kind}, {len(value)})"), value)
    else:
        tree.add(f"[bold]{name}[/]: {_label(value)}")


def inspect(
    directory: str = typer.Argument(
        ..., metavar="DIR", help="Store directory or URL (file://, s3://bucket/prefix, ...)."
    ),
    step: int | None = typer.Option(None, "--step", help="Step to show (default: newest)."),
) -> None:
    """Show a checkpoint's tree: keys, dtypes, shapes, sizes, chunks shared with the previous."""
    with _open(directory) as store:
        steps = store.steps()
        if step is None:
            if not steps:
                console.print(f"no checkpoints in {store.url}")
                return
            step = steps[-1]
        manifest = store.manifest(step)
        info = store.info(step)
        tree = Tree(
            f"[bold]step {step}[/] of {store.url}: {human_bytes(info.total_bytes)}, "
            f"{info.chunk_count} chunks, {human_bytes(info.new_bytes)} new / "
            f"{human_bytes(info.shared_bytes)} shared, written {_when(info.created_unix_s)}"
        )
        state = _skeleton_tree(store, manifest)
        if isinstance(state, dict | list | tuple):
            _add(tree, state)
        else:
            tree.add(_label(state))
        console.print(tree)
        if manifest.meta:
            console.print(f"meta: {manifest.meta}")


def verify(
    directory: str = typer.Argument(
        ..., metavar="DIR", help="Store directory or URL (file://, s3://bucket/prefix, ...)."
    ),
    step: int | None = typer.Option(None, "--step", help="Check only this step."),
) -> None:
    """Check every manifest and chunk hash; exit 1 when anything is damaged."""
    with _open(directory) as store:
        steps = store.steps() if step is None else [step]
        total = 0
        for s in steps:
            try:
                total += store.info(s).stored_bytes
            except Exception:
                continue  # verify reports it
        with progress_bar("verifying", total) as update:
            report = store.verify(step, progress=update)
        if report.ok:
            console.print(
                f"[green]ok[/]: {len(report.steps_checked)} checkpoint(s), "
                f"{report.chunks_checked} chunks, {human_bytes(report.bytes_checked)} verified"
            )
            return
        table = Table(title=f"damage in {store.url}")
        for name in ("step", "part", "problem"):
            table.add_column(name)
        for d in report.damage:
            table.add_row(str(d.step), d.key, d.reason)
        console.print(table)
        console.print(
            f"[red]damaged[/]: step(s) {', '.join(map(str, report.damaged_steps))}; "
            "a load (store.load(), snapline run --resume) falls back to the newest intact step"
        )
        raise typer.Exit(1)


def gc(
    directory: str = typer.Argument(
        ..., help="Store directory or URL (file://, s3://bucket/prefix, ...)."
    ),
    keep_last: int | None = typer.Option(
        None, "--keep-last", help="Keep the newest N intact steps (damaged ones do not count)."
    ),
    keep_every: int | None = typer.Option(
        None, "--keep-every", help="Also keep steps divisible by K."
    ),
) -> None:
    """Delete old checkpoints by retention, then unreferenced chunks and crashed leftovers.

    Retention counts intact checkpoints only, so gc never deletes the newest one `snapline
    load` would restore. With --keep-last N or --keep-every K: the newest intact step is always
    kept; a damaged step newer than the oldest kept intact step is kept for inspection (see
    `snapline verify`); an older damaged step is deleted like any other; when no step is intact
    no step is deleted. To tell intact from damaged, gc reads and hashes the steps it examines,
    newest first.
    """
    with _open(directory) as store:
        report = store.gc(keep_last=keep_last, keep_every=keep_every)
    deleted = ", ".join(map(str, report.deleted_steps)) or "none"
    console.print(
        f"deleted steps: {deleted}; kept {len(report.kept_steps)}; removed "
        f"{report.deleted_chunks} chunk(s) ({human_bytes(report.freed_bytes)}) and "
        f"{report.removed_partial_writes} partial write(s)"
    )
    if report.kept_damaged_steps:
        damaged = ", ".join(map(str, report.kept_damaged_steps))
        console.print(
            f"[yellow]kept damaged step(s) {damaged}[/] for inspection: `snapline verify "
            f"{directory}` says what is damaged"
        )


def diff(
    directory: str = typer.Argument(
        ..., metavar="DIR", help="Store directory or URL (file://, s3://bucket/prefix, ...)."
    ),
    a: int = typer.Argument(..., metavar="STEP_A", help="First step."),
    b: int = typer.Argument(..., metavar="STEP_B", help="Second step."),
) -> None:
    """Compare two checkpoints: arrays by chunk hashes, scalars and strings by value."""
    with _open(directory) as store:
        ma, mb = store.manifest(a), store.manifest(b)
        values = _value_changes(_skeleton_tree(store, ma), _skeleton_tree(store, mb), "state")
    leaves_a = {leaf.path: leaf for leaf in ma.leaves}
    leaves_b = {leaf.path: leaf for leaf in mb.leaves}
    table = Table(title=f"step {a} -> step {b}")
    for name in ("leaf", "change", "detail"):
        table.add_column(name)
    same = 0
    for path in sorted(leaves_a.keys() | leaves_b.keys()):
        la, lb = leaves_a.get(path), leaves_b.get(path)
        if la is None or lb is None:
            change = "[green]added[/]" if la is None else "[red]removed[/]"
            leaf = lb if la is None else la
            assert leaf is not None
            table.add_row(path, change, f"{leaf.dtype} {list(leaf.shape)}")
            continue
        if (la.dtype, la.shape) != (lb.dtype, lb.shape):
            detail = f"{la.dtype} {list(la.shape)} -> {lb.dtype} {list(lb.shape)}"
            table.add_row(path, "[yellow]retyped[/]", detail)
            continue
        ids_a = [ma.chunks[c].id for c, _, _ in la.extents]
        ids_b = [mb.chunks[c].id for c, _, _ in lb.extents]
        changed = sum(1 for x, y in zip(ids_a, ids_b, strict=True) if x != y)
        # Tiny leaves share bundle chunks, so one bundled with a changed leaf shows as changed.
        if changed:
            detail = f"{changed}/{len(ids_a)} chunk(s) differ"
            if len(ids_a) == 1 and la.nbytes < ma.chunks[la.extents[0][0]].size:
                detail = "its bundle chunk differs (it or a tiny leaf bundled with it changed)"
            table.add_row(path, "[yellow]changed[/]", detail)
        else:
            same += 1
    for path, change, detail in values:
        table.add_row(path, change, detail)
    if table.row_count:
        console.print(table)
    console.print(
        f"{same} array(s) unchanged; "
        f"{len(values) or 'no'} scalar or string value(s) changed, added or removed"
    )


def _short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _value_changes(a: object, b: object, path: str) -> list[tuple[str, str, str]]:
    """(path, change, detail) for every non-array value that differs between two trees."""
    if isinstance(a, _LeafMark) or isinstance(b, _LeafMark):
        # Arrays are compared by their chunks (above); a value that became one shows there too.
        if isinstance(a, _LeafMark) and isinstance(b, _LeafMark):
            return []
        return [(path, "[yellow]retyped[/]", "array <-> value")]
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[tuple[str, str, str]] = []
        for key in [*a, *(k for k in b if k not in a)]:
            where = f"{path}[{key!r}]"
            if key not in b:
                out += _added_or_removed(where, a[key], "[red]removed[/]")
            elif key not in a:
                out += _added_or_removed(where, b[key], "[green]added[/]")
            else:
                out += _value_changes(a[key], b[key], where)
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and type(a) is type(b):
        out = []
        for i in range(max(len(a), len(b))):
            where = f"{path}[{i}]"
            if i >= len(b):
                out += _added_or_removed(where, a[i], "[red]removed[/]")
            elif i >= len(a):
                out += _added_or_removed(where, b[i], "[green]added[/]")
            else:
                out += _value_changes(a[i], b[i], where)
        return out
    if type(a) is type(b) and a == b:
        return []
    return [(path, "[yellow]changed[/]", f"{_short_repr(a)} -> {_short_repr(b)}")]


def _added_or_removed(path: str, value: object, change: str) -> list[tuple[str, str, str]]:
    # Arrays added or removed are reported by the leaf comparison; only values here.
    if isinstance(value, _LeafMark):
        return []
    return [(path, change, _short_repr(value))]


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("ls")(ls)
    app.command("inspect")(inspect)
    app.command("verify")(verify)
    app.command("gc")(gc)
    app.command("diff")(diff)
