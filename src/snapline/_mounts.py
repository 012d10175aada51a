"""Which file system a path lives on, and whether other machines can see it.

A checkpoint that only the machine which wrote it can read is lost with that machine. Engines
that place ranks or actors on several machines ask ``is_shared`` before they accept a store
directory. Detection reads ``/proc/self/mounts`` (Linux); elsewhere the type is unknown and
the store counts as node-local, so the caller must say it is shared.
"""

from __future__ import annotations

import os
from pathlib import Path

#: File system types every machine of a cluster can mount at once (network and cluster file
#: systems, and FUSE mounts of object stores).
SHARED_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "orangefs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "fuse.juicefs",
        "fuse.s3fs",
        "fuse.gcsfuse",
        "fuse.mountpoint-s3",
        "fuse.weka",
    }
)


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def filesystem_of(path: str | os.PathLike[str], mounts: str | None = None) -> str:
    """The type of the file system ``path`` (or its nearest existing parent) is on.

    ``mounts`` is the text of ``/proc/self/mounts`` (read when None); ``"unknown"`` when it
    cannot be read.
    """
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return "unknown"
    target = Path(os.path.abspath(path))
    while not target.exists() and target != target.parent:
        target = target.parent
    target = target.resolve()
    best, best_type = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = target == Path(point) or Path(point) in target.parents
        if inside and len(point) > len(best):
            best, best_type = point, fields[2]
    return best_type


def is_shared(path: str | os.PathLike[str], mounts: str | None = None) -> bool:
    """Whether ``path`` is on a file system other machines can mount (see ``SHARED_TYPES``)."""
    return filesystem_of(path, mounts) in SHARED_TYPES


def refuse_node_local(
    store: str | os.PathLike[str], *, what: str, why: str, say: str, detect: bool = True
) -> None:
    """``ConfigError`` unless ``store`` is on a file system other machines mount.

    For engines that may restart a rank or actor on another machine: ``what`` names the
    store (``"the actor store"``), ``why`` says what spans machines and what would be lost,
    ``say`` how to declare the store shared when detection cannot tell (``"pass ..."``).
    ``detect=False``: the caller was told the store is node-local; refuse without looking.
    """
    if detect and is_shared(store):
        return
    from snapline.errors import ConfigError

    raise ConfigError(
        f"{what} {os.fspath(store)!r} is on a node-local file system ({filesystem_of(store)}) "
        f"but {why}. Put the store on a file system every node mounts at the same path (NFS, "
        f"Lustre ...), or {say} if every node does see this directory"
    )
