"""MPICH's shared-memory segments that a job's killed ranks leave in ``/dev/shm``.

MPICH's ranks on one host share a segment ``/dev/shm/mpich_shm_*`` (2-3 MiB each), which it
unlinks once every local rank has attached it. A rank killed before that (``kill -9`` of a
rank, a crash during start-up, ``mpiexec`` ended by the engine) leaves the file behind, and
every failed launch leaks one more into memory-backed ``/dev/shm`` until the host runs out.
Nothing in MPICH cleans them up later, so whoever launches MPI jobs sweeps after them.

A segment is swept when it is this user's, was last modified after the launcher started
(``since``), and no live process maps it (``/proc/*/maps``): a segment of another job still
running is mapped by its ranks. The one case left is a job that started in the same window
and is between creating its segment and mapping it (microseconds); call this only when the
launcher's own ranks are gone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

SHM_DIR = Path("/dev/shm")
PREFIX = "mpich_shm_"


def sweep_orphaned_segments(since: float, shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove the orphaned MPICH segments created since ``since`` (epoch s); their names."""
    uid = os.getuid()
    candidates: list[Path] = []
    with contextlib.suppress(OSError):
        for path in shm_dir.glob(PREFIX + "*"):
            with contextlib.suppress(OSError):
                st = path.stat()
                if st.st_uid == uid and st.st_mtime >= since - 1.0:
                    candidates.append(path)
    if not candidates:
        return []
    in_use = mapped_segments(shm_dir)
    removed = []
    for path in candidates:
        if str(path) in in_use:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path.name)
    return removed


def mapped_segments(shm_dir: Path = SHM_DIR) -> set[str]:
    """Paths of MPICH segments in ``shm_dir`` that a live process maps (that we may read)."""
    prefix = str(shm_dir / PREFIX)
    found: set[str] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/maps", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    at = line.find(prefix)
                    if at >= 0:
                        found.add(line[at:].rstrip("\n").removesuffix(" (deleted)"))
        except OSError:
            continue  # gone, or another user's (which cannot map our 0600 segments)
    return found
