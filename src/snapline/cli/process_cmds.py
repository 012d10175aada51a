"""``snapline checkpoint``, ``snapline restore`` (one process tree) and ``snapline doctor``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from snapline.cli.options import FLAG

console = Console()


def register(app: typer.Typer) -> None:
    """Add ``checkpoint``, ``restore`` and ``doctor`` to ``app``."""

    @app.command("checkpoint")
    def checkpoint_cmd(
        pid: Annotated[int, typer.Argument(help="Root of the process tree to checkpoint.")],
        store: Annotated[
            Path, typer.Option("--store", metavar="DIR", help="Store to put the images in.")
        ],
        kill: Annotated[
            bool,
            typer.Option("--kill", metavar=FLAG, help="Stop the tree once it is checkpointed."),
        ] = False,
        tcp: Annotated[
            bool,
            typer.Option(
                "--tcp", metavar=FLAG, help="Also checkpoint established TCP connections."
            ),
        ] = False,
        backend: Annotated[
            str,
            typer.Option(
                "--backend",
                help="criu (dmtcp can only checkpoint processes started under dmtcp_launch: "
                "use snapline run --level process --backend dmtcp).",
            ),
        ] = "criu",
    ) -> None:
        """Checkpoint the process tree of PID (CRIU) into a store, as its next step."""
        from snapline.levels.process.single import checkpoint_tree, require_tree_backend

        require_tree_backend(backend)
        done = checkpoint_tree(pid, store, leave_running=not kill, tcp=tcp)
        console.print(
            f"checkpoint {done.step} of pid {pid}: {done.info.total_bytes / 2**20:.1f} MiB of "
            f"images, {done.info.written_bytes / 2**20:.1f} MiB written, "
            f"dump {done.dump_s:.2f}s; restore it with: snapline restore {store}"
        )

    @app.command("restore")
    def restore_cmd(
        store: Annotated[
            Path, typer.Argument(metavar="DIR", help="Store written by snapline checkpoint.")
        ],
        step: Annotated[
            int | None, typer.Option("--step", help="Checkpoint to restore (default: newest).")
        ] = None,
    ) -> None:
        """Restore a process tree checkpointed with snapline checkpoint (same pids)."""
        from snapline.levels.process.single import restore_tree

        pid = restore_tree(store, step=step)
        console.print(f"restored: pid {pid}")

    @app.command("doctor")
    def doctor_cmd(
        install: Annotated[
            str | None,
            typer.Option(
                "--install",
                metavar="TOOL",
                help="Install TOOL first (criu: CRIU 4.2.1 into snapline's cache; root, apt).",
            ),
        ] = None,
    ) -> None:
        """Say which levels, backends and engines work here and, for the others, why not."""
        from snapline.errors import ConfigError
        from snapline.levels.process.doctor import check_all
        from snapline.levels.process.install import install_criu

        if install is not None:
            if install != "criu":
                raise ConfigError(
                    f"--install {install!r}: only criu can be installed by snapline (DMTCP is "
                    "built from source; see docs/howto/process-level.md)"
                )
            check = install_criu()
            console.print(f"criu {check.version} installed at {check.path}")
        # Plain lines, not a table: paths and reasons must stay whole on narrow terminals.
        for f in check_all():
            mark = "[green]ok[/]" if f.ok else "[red]no[/]"
            line = f"{f.area:<7} {f.name:<12} {f.detail}"
            console.print(f"{mark}  {escape(line)}", highlight=False)
            if f.fix:  # escaped: "pip install 'snapline[ray]'" is no markup
                console.print(f"    {'':<20} fix: {escape(f.fix)}", highlight=False)
