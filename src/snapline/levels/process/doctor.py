"""``snapline doctor``: which levels, backends and engines work on this machine, and if not, why.

Each check runs the real thing where that is cheap (``criu check`` in a private network
namespace, a test checkpoint of ``sleep`` under DMTCP, importing mpi4py and finding mpiexec)
rather than guessing from versions, and says what to do when it fails.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One line of the doctor's report."""

    area: str  # level | backend | engine
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _kernel() -> str:
    return os.uname().release


def check_all() -> list[Finding]:
    """Every check, in the order the report shows them."""
    from snapline.levels.process.install import check_dmtcp, find_criu, find_dmtcp

    out = [
        Finding(area="level", name="application", ok=True, detail="Process.state() into a store"),
        Finding(area="engine", name="sim", ok=True, detail="deterministic simulator"),
        Finding(area="engine", name="local", ok=True, detail="OS processes on this machine"),
        _mpi(),
        _ray(),
    ]
    criu = find_criu()
    kernel_ok = Path("/proc/sys/kernel/ns_last_pid").exists()
    out.append(
        Finding(
            area="backend",
            name="criu",
            ok=criu.ok and kernel_ok,
            detail=(
                f"CRIU {criu.version} at {criu.path}, `criu check` passes (kernel {_kernel()})"
                if criu.ok
                else f"{criu.problem} (kernel {_kernel()})"
            ),
            fix=criu.fix
            if kernel_ok
            else "the kernel lacks CONFIG_CHECKPOINT_RESTORE: use a kernel built with it",
        )
    )
    dmtcp = check_dmtcp(find_dmtcp())
    out.append(
        Finding(
            area="backend",
            name="dmtcp",
            ok=dmtcp.ok,
            detail=(
                f"{dmtcp.version} at {dmtcp.path} ({dmtcp.source}), a test checkpoint works"
                if dmtcp.ok
                else (f"{dmtcp.version} at {dmtcp.path} ({dmtcp.source}): " if dmtcp.path else "")
                + dmtcp.problem
            ),
            fix=dmtcp.fix,
        )
    )
    tools = [t for t in ("ip", "unshare") if shutil.which(t) is None]
    root = os.geteuid() == 0
    checkpointer = (criu.ok and kernel_ok) or dmtcp.ok
    process_ok = checkpointer and root and not tools
    why = []
    if not root:
        why.append("needs root (CRIU, and a private network namespace per job)")
    if tools:
        why.append(f"missing {', '.join(tools)} (apt-get install iproute2 util-linux)")
    if not checkpointer:
        why.append("no working checkpointer (criu and dmtcp above)")
    backends = [b for b, ok in (("criu", criu.ok and kernel_ok), ("dmtcp", dmtcp.ok)) if ok]
    out.append(
        Finding(
            area="level",
            name="process",
            ok=process_ok,
            detail=f"snapline run --level process (--backend {' or '.join(backends)})"
            + (", checkpoint, restore" if "criu" in backends else "")
            if process_ok
            else "; ".join(why),
            fix="" if process_ok else "fix what is listed; snapline doctor --install criu",
        )
    )
    out.append(
        Finding(
            area="backend",
            name="blcr",
            ok=False,
            detail="BLCR is dead: last release 0.8.5 (2013), a kernel module for Linux <= 3.17 "
            "only; CRIU and DMTCP replaced it",
            fix="use --backend criu or --backend dmtcp",
        )
    )
    out.append(_system())
    return out


def _system() -> Finding:
    """The system level: QEMU, the QMP client and a static busybox for the guest image."""
    from snapline.errors import ConfigError
    from snapline.levels.system.image import BUSYBOX_CANDIDATES
    from snapline.levels.system.machine import find_qemu, qmp_client_class

    try:
        qemu = find_qemu()
        qmp_client_class()
    except ConfigError as exc:
        return Finding(
            area="level",
            name="system",
            ok=False,
            detail=str(exc),
            fix="apt-get install qemu-system-x86 qemu-utils busybox-static; "
            "pip install 'snapline[vm]'",
        )
    if not any(Path(b).is_file() for b in BUSYBOX_CANDIDATES):
        return Finding(
            area="level",
            name="system",
            ok=False,
            detail="no static busybox for the guest image",
            fix="apt-get install busybox-static",
        )
    return Finding(
        area="level",
        name="system",
        ok=True,
        detail=f"QEMU at {qemu} (guests run under TCG), qemu.qmp importable",
    )


def _mpi() -> Finding:
    from snapline.errors import ConfigError
    from snapline.mpi._launch import find_mpiexec

    try:
        import mpi4py  # noqa: F401

        where = find_mpiexec()
    except ImportError:
        return Finding(
            area="engine",
            name="mpi",
            ok=False,
            detail="mpi4py is not installed",
            fix="pip install 'snapline[mpi]'",
        )
    except ConfigError as exc:
        return Finding(area="engine", name="mpi", ok=False, detail=str(exc))
    return Finding(area="engine", name="mpi", ok=True, detail=f"mpi4py, {where}")


def _ray() -> Finding:
    # The installed version, without importing ray (seconds): the doctor must stay quick.
    from importlib import metadata

    try:
        version = metadata.version("ray")
    except metadata.PackageNotFoundError:
        return Finding(
            area="engine",
            name="ray",
            ok=False,
            detail="ray is not installed",
            fix="pip install 'snapline[ray]'",
        )
    return Finding(area="engine", name="ray", ok=True, detail=f"ray {version} is installed")
