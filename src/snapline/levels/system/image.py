"""Guest images for the system level: a Debian kernel and a busybox initramfs, built by snapline.

Theory of operation
-------------------
A system-level rank is a QEMU guest. Under TCG (no KVM) boot time is what matters, so the guest
is as small as a Linux can be: Debian's generic kernel, unpacked from its ``.deb`` without
installing it, and an initramfs of one static busybox, the eight virtio modules the network card
needs, an ``/init`` and the workload script. No 9p share (a mounted 9p share forbids
migration). By default no disk and no Python: the workload is a busybox shell script. A spec
with ``rootfs = "python"`` adds a read-only disk holding the host's Python and numpy
(``rootfs.py``) and the modules that mount it; ``/init`` then runs the workload ``chroot``-ed
into that disk (``snapline.root=/dev/vda`` on the kernel command line).

The kernel package is fetched with ``apt-get download`` once and its few needed files are cached
under ``cache_dir()`` (``$SNAPLINE_VM_CACHE``, default ``~/.cache/snapline/vm``); an initramfs is
cached under the hash of everything it holds, so building one for a spec that was built before
costs a file lookup. A fresh build takes a few seconds (most of it unpacking the kernel
package); an initramfs alone a fraction of a second.

``/init`` reads its settings from the kernel command line: ``snapline.rank``, ``snapline.n``,
``snapline.ip`` (the guest's IPv4 address on ``eth0``, a /24) and runs ``/workload.sh`` with
``RANK``, ``N`` and ``IP`` in its environment, its output going to the second serial port
(``/dev/ttyS1``): that port is the guest output the host collects. The first serial port is the
kernel console, kept for diagnosis. When the workload exits the guest powers off.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from snapline._durable import write_atomic
from snapline.errors import ConfigError

KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

# What a guest on snapline's virtual network needs (all modules in Debian's generic kernel).
MODULES = ("virtio_pci", "virtio_net")
# What a guest with a root disk needs besides: the disk and its file system (crc32c for
# ext4's metadata checksums, requested by name at mount time, so no module depends on it).
DISK_MODULES = ("virtio_blk", "crc32c_generic", "ext4")
ROOTFS = ("none", "python")
# Files unpacked from the kernel package: the image and the modules above with their
# dependencies (a cache missing any of them is unpacked again).
_KERNEL_FILES = (
    "./boot/vmlinuz-*",
    "*/virtio*",
    "*failover*",
    "*/fs/ext4/*",
    "*/fs/jbd2/*",
    "*/fs/mbcache.ko",
    "*/lib/crc16.ko",
    "*/crypto/crc32c_generic.ko",
)

INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod /mod/$m || echo "snapline init: insmod $m failed"; done
for kv in $(cat /proc/cmdline); do
  case "$kv" in
    snapline.rank=*) RANK=${kv#snapline.rank=} ;;
    snapline.n=*) N=${kv#snapline.n=} ;;
    snapline.ip=*) IP=${kv#snapline.ip=} ;;
    snapline.root=*) ROOT=${kv#snapline.root=} ;;
  esac
done
export RANK N IP PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp
ip link set lo up
if [ -n "$IP" ] && [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  ip addr add "$IP/24" dev eth0
fi
echo "snapline guest $RANK up at $(cut -d' ' -f1 /proc/uptime)s"
if [ -n "$ROOT" ]; then
  # The root disk (read-only) with writable /tmp and /run; the workload runs inside it.
  R=/newroot
  mkdir -p $R
  if mount -t ext4 -o ro "$ROOT" $R; then
    mount -t tmpfs tmp $R/tmp
    mount -t tmpfs run $R/run
    mount -t proc proc $R/proc
    mount -t sysfs sys $R/sys
    mount -t devtmpfs dev $R/dev
    cp /workload.sh $R/tmp/workload.sh
    if [ -f $R/snapline.env ]; then . $R/snapline.env; fi
    chroot $R /bin/sh /tmp/workload.sh </dev/null >/dev/ttyS1 2>&1
  else
    echo "snapline init: cannot mount the root disk $ROOT" >/dev/ttyS1
    false
  fi
else
  sh /workload.sh </dev/null >/dev/ttyS1 2>&1
fi
echo "snapline guest $RANK: workload exited with $?"
sync
poweroff -f
"""


@dataclass(frozen=True, slots=True)
class Kernel:
    """A kernel unpacked from Debian's package: the image and its module tree."""

    version: str
    vmlinuz: Path
    modules: Path  # .../lib/modules/<version>


@dataclass(frozen=True, slots=True)
class GuestImage:
    """What QEMU boots: ``-kernel`` and ``-initrd``, and the read-only root disk if any."""

    kernel: Path
    initrd: Path
    disk: Path | None = None


def cache_dir() -> Path:
    """Where kernels and initramfs images are cached (``$SNAPLINE_VM_CACHE`` overrides)."""
    env = os.environ.get("SNAPLINE_VM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "snapline" / "vm"


def find_busybox() -> Path:
    """The host's static busybox (Debian package ``busybox-static``)."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and b"statically linked" in _file_kind(path):
            return path
    raise ConfigError("no static busybox found; install it: apt-get install busybox-static")


def _file_kind(path: Path) -> bytes:
    # A static binary has no PT_INTERP (no dynamic loader named in it); `file` may be missing.
    data = path.read_bytes()[:65536]
    return b"dynamically linked" if b"ld-linux" in data else b"statically linked"


def kernel(*, cache: Path | None = None) -> Kernel:
    """The Debian kernel, downloaded and unpacked on first use (needs ``apt-get``)."""
    cache = cache or cache_dir()
    root = cache / "kernel"
    found = _unpacked_kernel(root)
    if found is not None:
        return found
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ConfigError("building a guest kernel needs apt-get and dpkg-deb (a Debian host)")
    package = _kernel_package()
    with tempfile.TemporaryDirectory(prefix="snapline-kernel-") as tmp:
        work = Path(tmp)
        # apt-get download writes into the current directory.
        _run(["apt-get", "download", "-q", package], cwd=work)
        (deb,) = work.glob("*.deb")
        stage = work / "stage"
        stage.mkdir()
        tar_in = subprocess.run(
            ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
        ).stdout
        _run(["tar", "-x", "--wildcards", *_KERNEL_FILES], cwd=stage, input=tar_in)
        root.parent.mkdir(parents=True, exist_ok=True)
        partial = root.with_name(f"{root.name}.{os.getpid()}.partial")
        shutil.move(str(stage), partial)
        if _unpacked_kernel(root) is None:
            # An older cache (fewer modules) is moved aside first: a reader sees either tree.
            old = root.with_name(f"{root.name}.{os.getpid()}.old")
            if root.exists():
                os.replace(root, old)
            os.replace(partial, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            shutil.rmtree(partial)  # another process unpacked it meanwhile
    found = _unpacked_kernel(root)
    if found is None:
        raise ConfigError(f"{package} did not hold a kernel image and its modules")
    return found


def _kernel_package() -> str:
    out = subprocess.run(
        ["apt-cache", "depends", KERNEL_META_PACKAGE], check=False, capture_output=True, text=True
    ).stdout
    match = re.search(r"Depends: (linux-image-\S+)", out)
    if match is None:
        raise ConfigError(
            f"apt does not know {KERNEL_META_PACKAGE}; run apt-get update (a Debian host is needed)"
        )
    return match.group(1)


def _unpacked_kernel(root: Path) -> Kernel | None:
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        return None
    version = images[-1].name[len("vmlinuz-") :]
    modules = root / "lib" / "modules" / version
    if not (modules / "kernel" / "fs" / "ext4" / "ext4.ko").is_file():
        return None  # missing, or unpacked by an older snapline without the disk modules
    return Kernel(version=version, vmlinuz=images[-1], modules=modules)


def module_order(modules: Path, wanted: tuple[str, ...] = MODULES) -> list[Path]:
    """The ``.ko`` files ``wanted`` needs, dependencies first (read from each module's
    ``.modinfo``: the kernel package ships no ``modules.dep``)."""
    by_name = {p.name[: -len(".ko")].replace("-", "_"): p for p in modules.rglob("*.ko")}
    order: list[Path] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        path = by_name.get(name)
        if path is None:
            raise ConfigError(f"kernel module {name} (needed by {' <- '.join(trail)}) not found")
        if path in order:
            return
        match = re.search(rb"depends=([^\x00]*)\x00", path.read_bytes())
        for dep in match.group(1).decode().split(",") if match else []:
            if dep:
                visit(dep.replace("-", "_"), (*trail, name))
        order.append(path)

    for name in wanted:
        visit(name, (name,))
    return order


def build_image(workload: str, *, rootfs: str = "none", cache: Path | None = None) -> GuestImage:
    """A guest image whose ``/workload.sh`` is ``workload`` (cached by content); with
    ``rootfs="python"`` also the Python root disk (``rootfs.python_rootfs``)."""
    if rootfs not in ROOTFS:
        raise ConfigError(f"rootfs must be one of {ROOTFS}, got {rootfs!r}")
    cache = cache or cache_dir()
    kern = kernel(cache=cache)
    busybox = find_busybox()
    disk = None
    if rootfs == "python":
        from snapline.levels.system.rootfs import python_rootfs

        disk = python_rootfs(cache=cache)
    mods = module_order(kern.modules, MODULES + (DISK_MODULES if disk else ()))
    files: dict[str, tuple[bytes, int]] = {
        "init": (INIT.encode(), 0o755),
        "workload.sh": (workload.encode(), 0o755),
        "bin/busybox": (busybox.read_bytes(), 0o755),
        "modules.order": ("".join(p.name + "\n" for p in mods).encode(), 0o644),
    }
    for path in mods:
        files[f"mod/{path.name}"] = (path.read_bytes(), 0o644)
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name][0] + b"\0")
    initrd = cache / "initrd" / f"{digest.hexdigest()[:24]}.cpio.gz"
    if not initrd.exists():
        initrd.parent.mkdir(parents=True, exist_ok=True)
        data = gzip.compress(newc_archive(files), compresslevel=1, mtime=0)
        write_atomic(initrd, data, temp=initrd.with_name(f"{initrd.name}.{os.getpid()}.tmp"))
    return GuestImage(kernel=kern.vmlinuz, initrd=initrd, disk=disk)


def newc_archive(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A cpio archive in the kernel's ``newc`` format: directories implied by the paths are
    added first; ``files`` maps path -> (content, permission bits)."""
    out = io.BytesIO()
    inode = 1

    def entry(name: str, mode: int, data: bytes) -> None:
        nonlocal inode
        raw = name.encode() + b"\0"
        fields = (inode, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))
        inode += 1

    dirs = sorted(
        {str(parent) for name in files for parent in Path(name).parents if str(parent) != "."}
    )
    for d in dirs:
        entry(d, 0o040755, b"")
    for name in sorted(files):
        data, perms = files[name]
        entry(name, 0o100000 | perms, data)
    entry("TRAILER!!!", 0, b"")
    return out.getvalue()


def _run(argv: list[str], *, cwd: Path, input: bytes | None = None) -> None:
    proc = subprocess.run(argv, cwd=cwd, input=input, capture_output=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(
            f"{' '.join(argv)} failed ({proc.returncode}): "
            f"{proc.stderr.decode(errors='replace')[-800:]}"
        )
