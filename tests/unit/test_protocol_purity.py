"""protocols/ must stay sans-I/O: no imports of I/O, threads, clocks, randomness or drivers."""

from __future__ import annotations

import ast
from pathlib import Path

import snapline.protocols

FORBIDDEN_ROOTS = {
    "asyncio",
    "socket",
    "threading",
    "multiprocessing",
    "subprocess",
    "time",
    "os",
    "random",
    "io",
    "selectors",
    "signal",
    "shutil",
    "tempfile",
    "pathlib",
    "datetime",
}
FORBIDDEN_PACKAGES = ("snapline.runtime", "snapline.store", "snapline.journal", "snapline.cli")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_protocol_modules_import_no_io_and_no_driver() -> None:
    root = Path(snapline.protocols.__file__).parent
    files = sorted(root.glob("*.py"))
    assert files, "no protocol modules found"
    offenders = []
    for path in files:
        for name in _imports(path):
            if name.split(".")[0] in FORBIDDEN_ROOTS or name.startswith(FORBIDDEN_PACKAGES):
                offenders.append(f"{path.name}: import {name}")
    assert offenders == []


def test_purity_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom snapline.store import open_store\n")
    assert _imports(bad) == ["time", "snapline.store"]
