"""MkDocs hook: render the CLI reference from the real ``snapline`` commands.

The page ``cli.md`` holds the marker below; at build time it is replaced by one section per
command with that command's ``--help``, taken from the typer app itself, so the reference
cannot drift from the code. (mkdocs-click does not fit: typer ships its own copy of click,
whose command classes mkdocs-click does not recognize, and typer draws help with rich.)
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from typing import Any

MARKER = "<!-- snapline-cli-reference -->"
PAGE = "cli.md"
#: Width of the rendered help, fixed so the page does not depend on the terminal.
WIDTH = "100"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _root() -> Any:
    import typer.main

    from snapline.cli.main import app

    return typer.main.get_command(app)


def command_paths() -> list[list[str]]:
    """Every command and group below ``snapline``, as argument lists: ``["journal", "inspect"]``."""
    root = _root()
    paths: list[list[str]] = []

    def walk(group: Any, path: list[str], ctx: Any) -> None:
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            paths.append([*path, name])
            if hasattr(command, "list_commands"):
                walk(command, [*path, name], command.context_class(command, parent=ctx))

    walk(root, [], root.context_class(root, info_name="snapline"))
    return paths


def help_text(path: list[str]) -> str:
    """``snapline PATH --help`` as plain text (no colours), at a fixed width."""
    saved = {key: os.environ.get(key) for key in ("COLUMNS", "NO_COLOR")}
    os.environ.update(COLUMNS=WIDTH, NO_COLOR="1")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            _root().main(args=[*path, "--help"], prog_name="snapline", standalone_mode=False)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    lines = [_ANSI.sub("", line).rstrip() for line in out.getvalue().splitlines()]
    return "\n".join(lines).strip("\n")


def reference() -> str:
    """The generated Markdown: the top-level help, then one section per command."""
    parts = ["## snapline\n", "```text\n" + help_text([]) + "\n```\n"]
    for path in command_paths():
        parts.append(f"## snapline {' '.join(path)}\n")
        parts.append("```text\n" + help_text(path) + "\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace the marker on the CLI page with the generated reference."""
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"docs/{PAGE} lost its marker {MARKER}; put it back where the commands go")
    return markdown.replace(MARKER, reference())
