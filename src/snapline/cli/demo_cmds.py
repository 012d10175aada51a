"""``snapline demo``: the distributed demo (``runtime.local.demo``); ``--store-only``: store tour.

``store_demo(directory)`` holds the whole tour so it can later move behind
``snapline demo --store-only``: it saves a few checkpoints of a sample training-like state,
lists them, flips one bit in a chunk only the newest checkpoint uses, shows ``verify``
catching it and ``load()`` falling back to the previous intact checkpoint with a warning.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from snapline.errors import CheckpointDamagedWarning
from snapline.store import open_store

console = Console()
DEFAULT_DEMO_DIR = "demo-out/store"
DEFAULT_DISTRIBUTED_DIR = "demo-out/distributed"


def _sample_state(rng: np.random.Generator) -> dict[str, object]:
    return {
        "model": {
            "embed": rng.standard_normal((2048, 1024), dtype=np.float32),  # 8 MiB
            "layers": [rng.standard_normal((1024, 1024), dtype=np.float32) for _ in range(4)],
            "bias": np.zeros(1024, np.float32),
        },
        "optimizer": {"lr": 3e-4, "betas": (0.9, 0.999), "count": np.int64(0)},
        "step": 0,
        "name": "demo-run",
    }


def store_demo(directory: Path) -> None:
    """Run the store tour in ``directory`` (recreated from scratch); see the module docstring."""
    started = time.perf_counter()
    if directory.exists():
        shutil.rmtree(directory)
    rng = np.random.default_rng(7)
    state = _sample_state(rng)
    model = state["model"]
    assert isinstance(model, dict)
    console.rule("[bold]snapline store demo")
    with open_store(directory) as store:
        console.print(f"store: {store.url}")
        for step in range(1, 5):
            # A training step touches the bias and one layer; the rest stays put.
            model["bias"] += 0.01
            layer = model["layers"][step % 4]
            layer[: 64 * step] *= 0.5
            state["step"] = step
            info = store.save(state, step=step, meta={"loss": round(1.0 / step, 4)})
            console.print(
                f"saved step {step}: {info.total_bytes / 2**20:.1f} MiB state, "
                f"wrote {info.written_bytes / 2**20:.1f} MiB (incremental)"
            )
        table = Table(title="snapline ls")
        for name in ("step", "size", "new", "shared", "meta"):
            table.add_column(name, justify="right")
        for item in store.list():
            table.add_row(
                str(item.step),
                f"{item.total_bytes / 2**20:.1f} MiB",
                f"{item.new_bytes / 2**20:.1f} MiB",
                f"{item.shared_bytes / 2**20:.1f} MiB",
                str(item.meta),
            )
        console.print(table)

        newest = store.manifest(4)
        older = {c.key for s in (1, 2, 3) for c in store.manifest(s).chunks}
        victim = next(c for c in newest.chunks if c.key not in older and c.size > 1024)
        path = directory / victim.key  # its pack file; the chunk starts at victim.offset
        with open(path, "r+b") as f:
            f.seek(victim.offset + victim.size // 2)
            byte = f.read(1)[0]
            f.seek(victim.offset + victim.size // 2)
            f.write(bytes([byte ^ 0x10]))
        console.print(f"[yellow]flipped one bit[/] in {path.relative_to(directory)} (step 4 only)")

        report = store.verify()
        for d in report.damage:
            console.print(f"verify: [red]step {d.step}[/] {d.key}: {d.reason}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CheckpointDamagedWarning)
            loaded = store.load()
        for w in caught:
            console.print(f"[yellow]warning[/]: {w.message}")
        console.print(f"load() returned step {loaded['step']} (the newest intact checkpoint)")
        stored = sum(p.stat().st_size for p in (directory / "chunks").rglob("*") if p.is_file())
    elapsed = time.perf_counter() - started
    console.print(
        Panel(
            f"4 checkpoints of {info.total_bytes / 2**20:.1f} MiB take "
            f"{stored / 2**20:.1f} MiB on disk (shared chunks).\n"
            f"verify found damage in step(s) {list(report.damaged_steps)}; load() fell back to "
            f"step {loaded['step']}.\nTry: snapline ls {directory} ; snapline inspect {directory}"
            f" ; snapline verify {directory}\nDone in {elapsed:.1f} s.",
            title="summary",
        )
    )


def demo(
    directory: str = typer.Option(
        None, "--dir", metavar="DIR", help="Where to put the demo's files (recreated)."
    ),
    store_only: bool = typer.Option(
        False, "--store-only", metavar="", help="Only the tour of the checkpoint store."
    ),
) -> None:
    """Run a bank on 6 processes, kill -9 one, watch it recover (--store-only: store tour)."""
    if store_only:
        store_demo(Path(directory or DEFAULT_DEMO_DIR))
        return
    from snapline.runtime.local.demo import distributed_demo

    distributed_demo(Path(directory or DEFAULT_DISTRIBUTED_DIR), console)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("demo")(demo)
