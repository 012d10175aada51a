"""Store commands: ``ls``, ``inspect``, ``verify``, ``gc`` and ``diff`` on a checkpoint store.

They never create a store (``NotAStore`` for a path that is not one) and never unpickle:
pickled values show as ``<pickled N bytes>``. ``verify`` exits 1 when anything is damaged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table
from rich.tree import Tree

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
    return open_store(directory, create=False)


def _when(unix_s: float) -> str:
    return dt.datetime.fromtimestamp(unix_s).strftime("%m-%d %H:%M:%S")


def ls(directory: str = typer.Argument(..., help="Store directory (or file:// URL).")) -> None:
    """List checkpoints: step, time, size, bytes new vs shared with the previous step."""
    with _open(directory) as store:
        infos = store.list()
        table = Table(title=f"checkpoints in {store.url}")
        for name in ("step", "time", "size", "stored", "new", "shared", "chunks", "meta"):
            table.add_column(name, justify="left" if name in ("time", "meta") else "right")
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
                ", ".join(f"{k}={v}" for k, v in info.meta.items()),
            )
        console.print(table if infos else f"no checkpoints in {store.url}")


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
    before = {c.key for c in previous.chunks} if previous else set()
    c, off, length = manifest.skeleton
    raw = read_chunk(store.backend, manifest.chunks[c], step=manifest.step)[off : off + length]

    def resolve(index: int) -> object:
        leaf = manifest.leaves[index]
        shared = sum(1 for ci, _, _ in leaf.extents if manifest.chunks[ci].key in before)
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
    directory: str = typer.Argument(..., help="Store directory (or file:// URL)."),
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
    directory: str = typer.Argument(..., help="Store directory (or file:// URL)."),
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
            "`snapline load` falls back to the newest intact step"
        )
        raise typer.Exit(1)


def gc(
    directory: str = typer.Argument(..., help="Store directory (or file:// URL)."),
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
    directory: str = typer.Argument(..., help="Store directory (or file:// URL)."),
    a: int = typer.Argument(..., help="First step."),
    b: int = typer.Argument(..., help="Second step."),
) -> None:
    """Compare two checkpoints leaf by leaf (by chunk hashes; no data is read)."""
    with _open(directory) as store:
        ma, mb = store.manifest(a), store.manifest(b)
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
        # Small leaves share pack chunks, so a leaf packed with a changed one shows as changed.
        if changed:
            detail = f"{changed}/{len(ids_a)} chunk(s) differ"
            if len(ids_a) == 1 and la.nbytes < ma.chunks[la.extents[0][0]].size:
                detail = "its pack chunk differs (it or a small leaf packed with it changed)"
            table.add_row(path, "[yellow]changed[/]", detail)
        else:
            same += 1
    skel_a = ma.chunks[ma.skeleton[0]].id
    skel_b = mb.chunks[mb.skeleton[0]].id
    if table.row_count:
        console.print(table)
    console.print(
        f"{same} leaf/leaves unchanged; non-array values "
        f"{'unchanged' if skel_a == skel_b else 'changed'}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("ls")(ls)
    app.command("inspect")(inspect)
    app.command("verify")(verify)
    app.command("gc")(gc)
    app.command("diff")(diff)
