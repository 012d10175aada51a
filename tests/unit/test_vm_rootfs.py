"""The Python guest disk's builder, in the parts that need no QEMU and no mke2fs run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from snapline.errors import ConfigError
from snapline.levels.system import rootfs


def test_a_package_this_python_cannot_import_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'snapline_no_such_package' is not importable"):
        rootfs.python_rootfs(packages=("snapline_no_such_package",), cache=tmp_path)


def test_a_missing_tool_says_how_to_install_it() -> None:
    with pytest.raises(ConfigError, match="needs snapline-no-such-tool; install it: apt-get x"):
        rootfs._tool("snapline-no-such-tool", "apt-get x")


def test_the_loader_and_libc_of_the_interpreter_are_found() -> None:
    executable = (
        Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    )
    libs = {p.name for p in rootfs._shared_libraries([executable])}
    assert "libc.so.6" in libs
    assert any(name.startswith("ld-linux") for name in libs), libs


def test_tests_and_optimized_bytecode_stay_off_the_disk(tmp_path: Path) -> None:
    for name in ("a.py", "__pycache__/a.cpython-311.pyc", "__pycache__/a.cpython-311.opt-1.pyc",
                 "test/t.py", "pkg/tests/t.py", "pkg/b.py", "libx.a"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    kept = sorted(str(p.relative_to(tmp_path)) for p in rootfs._walk(tmp_path))
    assert kept == ["__pycache__/a.cpython-311.pyc", "a.py", "pkg/b.py"]


def test_packages_are_placed_where_the_guest_tmpfs_does_not_hide_them() -> None:
    # A fresh clone's venv under /tmp: the guest mounts a tmpfs on /tmp and /run.
    venv = Path("/tmp/clone/.venv/lib/python3.11/site-packages")
    system = Path("/usr/lib/python3/dist-packages")
    placed, search_path = rootfs.guest_packages(
        [venv / "numpy", venv / "numpy.libs", system / "yaml"]
    )
    guest = {src: dst for src, dst in placed}
    assert all(
        not dst.is_relative_to("/tmp") and not dst.is_relative_to("/run") for dst in guest.values()
    )
    # numpy's extension modules find numpy.libs beside it ($ORIGIN/../numpy.libs).
    assert guest[venv / "numpy"].parent == guest[venv / "numpy.libs"].parent
    assert sorted(search_path) == sorted(
        {str(guest[venv / "numpy"].parent), str(guest[system / "yaml"].parent)}
    )
