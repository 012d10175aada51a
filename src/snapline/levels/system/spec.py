"""The spec file of a system-level job (TOML): how many guests, how big, what they run.

::

    guests = 2             # number of VMs (ranks), 1..64
    memory_mib = 256       # RAM per guest
    workload = "pingpong.sh"   # busybox shell script run in every guest (path relative to
                               # this file); it sees RANK, N and IP (10.77.0.<rank+1>)
    network = "switch"     # "switch": every guest on snapline's switch; "none": no network
    rootfs = "none"        # "python": a read-only root disk with the host's Python and numpy;
                           # the workload (still a shell script) then has python3 on its PATH

The workload's standard output and error are the guest output the host collects.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapline.errors import ConfigError
from snapline.levels.system.image import ROOTFS

NETWORKS = ("switch", "none")


@dataclass(frozen=True, slots=True, kw_only=True)
class VmSpec:
    """A parsed spec: the workload is its text, so a job does not depend on the file later."""

    guests: int
    memory_mib: int
    workload: str
    network: str = "switch"
    rootfs: str = "none"

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form (kept in the job directory)."""
        return {
            "guests": self.guests,
            "memory_mib": self.memory_mib,
            "workload": self.workload,
            "network": self.network,
            "rootfs": self.rootfs,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> VmSpec:
        """Inverse of ``to_json``, checked."""
        return _checked(raw, "job file")


def load_spec(path: Path) -> VmSpec:
    """Read and check a spec file (``ConfigError`` saying what is wrong)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read VM spec {path}: {exc}") from exc
    script = raw.get("workload")
    if not isinstance(script, str) or not script:
        raise ConfigError(f"{path}: 'workload' must name a shell script file")
    try:
        raw["workload"] = (path.parent / script).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read workload {script}: {exc}") from exc
    return _checked(raw, str(path))


def _checked(raw: dict[str, Any], where: str) -> VmSpec:
    unknown = set(raw) - {"guests", "memory_mib", "workload", "network", "rootfs"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    guests, memory, network = (
        raw.get("guests", 1),
        raw.get("memory_mib", 256),
        raw.get("network", "switch"),
    )
    if type(guests) is not int or not 1 <= guests <= 64:
        raise ConfigError(f"{where}: guests must be an int in 1..64, got {guests!r}")
    if type(memory) is not int or not 64 <= memory <= 65536:
        raise ConfigError(f"{where}: memory_mib must be an int in 64..65536, got {memory!r}")
    if network not in NETWORKS:
        raise ConfigError(f"{where}: network must be one of {NETWORKS}, got {network!r}")
    rootfs = raw.get("rootfs", "none")
    if rootfs not in ROOTFS:
        raise ConfigError(f"{where}: rootfs must be one of {ROOTFS}, got {rootfs!r}")
    return VmSpec(
        guests=guests, memory_mib=memory, workload=raw["workload"], network=network, rootfs=rootfs
    )
