"""Durable file operations shared by the journal and the MPI checkpointer (private).

A rename or unlink is durable only once the directory entry is, so each writer here fsyncs the
directory after it; a file written atomically goes to a temporary name first, is fsynced, then
renamed over the final one, so a crash leaves either the old file or the complete new one.
Errors are the ``OSError`` of the failing call: callers say what it means for their data.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make renames, creations and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, temp: Path | None = None) -> None:
    """Write ``data`` to ``path`` via ``temp`` (default ``path`` + ``.tmp``), fsync, rename and
    a directory fsync."""
    temp = temp if temp is not None else path.with_name(path.name + ".tmp")
    with open(temp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)
    fsync_dir(path.parent)
