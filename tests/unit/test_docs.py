"""The documentation site's sources stay in step with the code (cheap checks, no site build).

``./dev test`` builds the site with ``mkdocs build --strict`` before pytest; these tests check
what a strict build cannot: that the CLI reference covers every command of the real app, and
that the API reference documents every public name.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import snapline

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def _cli_hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cli_reference", DOCS / "hooks" / "cli_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_pages() -> list[str]:
    """The Markdown files mkdocs.yml's nav names (``- Title: path.md`` lines)."""
    nav = (ROOT / "mkdocs.yml").read_text().split("\nnav:\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r":\s*(\S+\.md)\s*$", nav, re.M)


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    pages = _nav_pages()
    assert "index.md" in pages and "tutorial.md" in pages and "cli.md" in pages
    for page in pages:
        assert (DOCS / page).is_file(), f"mkdocs.yml names docs/{page}, which does not exist"
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert on_disk == set(pages), f"pages missing from the nav: {sorted(on_disk - set(pages))}"


def test_cli_reference_has_every_command_with_its_help() -> None:
    hook = _cli_hook()
    assert hook.MARKER in (DOCS / hook.PAGE).read_text()
    paths = hook.command_paths()
    names = {" ".join(path) for path in paths}
    # The app's commands, as its own top-level help lists them.
    assert {"run", "sim", "compare", "ls", "journal", "journal inspect"} <= names
    page = hook.reference()
    assert "\x1b" not in page, "colour codes leaked into the reference"
    for path in paths:
        command = " ".join(["snapline", *path])
        assert f"## {command}\n" in page, f"no section for {command}"
        assert f"Usage: {command} " in page, f"no --help output for {command}"


def test_api_reference_documents_every_public_name() -> None:
    text = (DOCS / "api.md").read_text()
    documented = {
        line.split()[-1].rsplit(".", 1)[-1] for line in text.splitlines() if line.startswith("::: ")
    }
    undocumented = set(snapline.__all__) - documented - {"__version__"}
    assert not undocumented, f"add to docs/api.md: {sorted(undocumented)}"
