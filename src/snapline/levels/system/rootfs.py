"""A read-only ext4 root disk holding the host's Python (and numpy), for system-level guests.

Theory of operation
-------------------
A guest with ``rootfs = "python"`` boots the same kernel and initramfs as any other, and its
``/init`` mounts this disk (virtio-blk, read-only) and runs the workload in it with ``chroot``,
so ``python3`` is on the workload's ``PATH``. The disk is not a distribution: it is the
interpreter that runs snapline (``sys.base_prefix``: its binary, its standard library without
tests, IDLE, tkinter and the like), the packages asked for (numpy by default, copied from
wherever this interpreter imports them), every shared library ``ldd`` says those files need,
the static busybox with its applet links (the shell), and a ``/etc/passwd``. The interpreter
and its standard library sit at the path they have on the host, so the interpreter finds its
prefix as it does here; the packages go under ``/opt/snapline-packages/<k>``, one directory
per directory they came from (a virtual environment's ``site-packages``, Debian's
``dist-packages``: a venv under ``/tmp`` would be hidden by the guest's tmpfs there), which
``/snapline.env`` puts on the guest's ``PYTHONPATH``; ``/init`` reads it before it runs the
workload.

The image is built by ``mke2fs -d`` from a staging directory (no mount, no root needed) and
cached under a key of what it would hold (the interpreter, the packages' files with their
sizes and times, busybox, the builder's version), so a second build is a lookup. A guest's
disk is not saved by its checkpoints: it never changes, and the cache keeps it under its key.
QEMU attaches it read-only (``-drive ...,readonly=on``), which also keeps migration allowed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from snapline.errors import ConfigError
from snapline.levels.system.image import cache_dir, find_busybox

BUILDER_VERSION = "3"
DEFAULT_PACKAGES = ("numpy",)
#: Where the guest finds the packages (see the module docstring).
GUEST_PACKAGES = Path("/opt/snapline-packages")
# Parts of the standard library a program in a guest does not need (and that are large).
_SKIP_DIRS = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "site-packages",
        "__phello__",
    }
)
_SKIP_SUFFIXES = (".opt-1.pyc", ".opt-2.pyc", ".a")
_LABEL = "snapline-py"
ENV_FILE = "snapline.env"  # at the disk's root: sourced by /init (image.py) before the workload


def python_rootfs(*, packages: Iterable[str] = DEFAULT_PACKAGES, cache: Path | None = None) -> Path:
    """The ext4 image holding this interpreter and ``packages`` (built on first use, cached).

    ``ConfigError`` when a tool is missing (``mke2fs``, ``ldd``, a static busybox) or a
    package is not importable here.
    """
    cache = cache or cache_dir()
    # What the caller asked for first: a package that is not importable here is named even on
    # a machine that also lacks the tools.
    package_dirs = [d for name in packages for d in _package_dirs(name)]
    mke2fs = _tool("mke2fs", "apt-get install e2fsprogs")
    _tool("ldd", "apt-get install libc-bin")
    busybox = find_busybox()
    prefix = Path(sys.base_prefix)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    executable = prefix / "bin" / f"python{version}"
    if not executable.is_file():
        raise ConfigError(
            f"no interpreter at {executable}: the Python guest disk copies the interpreter "
            f"that runs snapline from its prefix (sys.base_prefix = {prefix})"
        )
    stdlib = prefix / "lib" / f"python{version}"
    placed, search_path = guest_packages(package_dirs)
    trees = [(stdlib, stdlib), *placed]
    key = _key(executable, trees, busybox)
    image = cache / "rootfs" / f"python{version}-{key}.ext4"
    if image.exists():
        return image
    image.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="snapline-rootfs-", dir=image.parent) as tmp:
        stage = Path(tmp) / "root"
        _stage(stage, executable, trees, busybox)
        env = f"export PYTHONPATH={':'.join(search_path)}\n" if search_path else ""
        (stage / ENV_FILE).write_text(env)
        staged = sum(_sizes(stage))
        # ext4 needs room for its metadata besides the files: 30% and 32 MiB was enough for
        # every staging tried (a full disk fails the build with mke2fs's message).
        size_mib = staged * 13 // 10 // 2**20 + 32
        partial = Path(tmp) / "image.ext4"
        done = subprocess.run(
            [mke2fs, "-q", "-t", "ext4", "-O", "^has_journal", "-L", _LABEL,
             "-E", "root_owner=0:0", "-d", str(stage), str(partial), f"{size_mib}M"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise ConfigError(f"mke2fs could not build the Python guest disk: {done.stderr[-800:]}")
        os.replace(partial, image)
    return image


def guest_packages(dirs: list[Path]) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Where each package directory goes in the guest, and the guest's ``PYTHONPATH``.

    Under ``GUEST_PACKAGES``, one directory per directory they came from (so numpy and its
    numpy.libs stay side by side), not at their host path: a virtual environment in /tmp or
    /run would be hidden by the guest's tmpfs there.
    """
    sources = sorted({d.parent for d in dirs})
    placed = [(d, GUEST_PACKAGES / str(sources.index(d.parent)) / d.name) for d in dirs]
    return placed, [str(GUEST_PACKAGES / str(i)) for i in range(len(sources))]


def _tool(name: str, install: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise ConfigError(f"building the Python guest disk needs {name}; install it: {install}")
    return path


def _package_dirs(name: str) -> list[Path]:
    """A package's directory, and its ``<name>.libs`` beside it (auditwheel's vendored libs)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"package {name!r} is not importable by this Python ({sys.executable}), so it "
            "cannot be copied into the guest disk: install it here or leave it out"
        )
    found = Path(next(iter(spec.submodule_search_locations)))
    libs = found.with_name(f"{name}.libs")
    return [found, libs] if libs.is_dir() else [found]


def _walk(root: Path) -> Iterator[Path]:
    """The files under ``root`` the disk keeps (sorted, for a stable key)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            if not name.endswith(_SKIP_SUFFIXES):
                yield Path(dirpath) / name


def _key(executable: Path, trees: list[tuple[Path, Path]], busybox: Path) -> str:
    digest = hashlib.sha256(f"{BUILDER_VERSION}\0{executable}\0".encode())
    for path in (executable, busybox):
        st = path.stat()
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for src, dst in trees:
        digest.update(f"{src}>{dst}\0".encode())
        for path in _walk(src):
            st = path.lstat()
            digest.update(f"{path.relative_to(src)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def _sizes(root: Path) -> Iterator[int]:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            yield (Path(dirpath) / name).lstat().st_size


def _inside(stage: Path, path: Path) -> Path:
    return stage / path.relative_to("/")


def _stage(stage: Path, executable: Path, trees: list[tuple[Path, Path]], busybox: Path) -> None:
    for d in ("bin", "tmp", "run", "proc", "sys", "dev", "root", "etc", "var/tmp", "usr/bin"):
        (stage / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, stage / "bin" / "busybox")
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (stage / "bin" / applet).symlink_to("busybox")
    binary = _inside(stage, executable)
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executable, binary)
    for link in ("bin/python3", "bin/python", "usr/bin/python3"):
        (stage / link).unlink(missing_ok=True)
        (stage / link).symlink_to(executable)
    elves = [executable]
    for src, dst in trees:
        for path in _walk(src):
            target = _inside(stage, dst / path.relative_to(src))
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                target.symlink_to(os.readlink(path))
                continue
            shutil.copy2(path, target)
            if ".so" in path.name:
                elves.append(path)
    for lib in _shared_libraries(elves):
        if any(lib.is_relative_to(src) for src, _ in trees):
            continue  # staged already, where its users' RPATH ($ORIGIN) looks
        target = _inside(stage, lib)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib.resolve(), target)
    (stage / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (stage / "etc" / "group").write_text("root:x:0:\n")


def _shared_libraries(files: list[Path]) -> set[Path]:
    """Every library the dynamic loader would load for ``files`` (as ``ldd`` resolves them)."""
    found: set[Path] = set()
    for start in range(0, len(files), 200):
        done = subprocess.run(
            ["ldd", *map(str, files[start : start + 200])],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        for line in done.stdout.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) > parts.index("=>") + 1:
                path = parts[parts.index("=>") + 1]
            elif parts and parts[0].startswith("/") and not parts[0].endswith(":"):
                path = parts[0]
            else:
                continue
            if path.startswith("/") and Path(path).exists():
                found.add(Path(path))
    return found
