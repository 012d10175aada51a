"""Finding and installing the process-level tools: CRIU and DMTCP.

CRIU: a user's ``criu`` is used when ``criu check`` passes. Debian bookworm's 3.17 fails on
recent kernels (vDSO bounds) and 4.1 cannot dump TCP sockets on them; 4.2.1 from Debian's
unstable suite works. ``install_criu`` downloads that package and the libraries it was built
against with a private apt configuration (own source list, own package lists, own cache: the
system's apt state is never touched), unpacks them into ``<cache>/criu`` and writes a wrapper
that runs the binary through the unpacked tree's own dynamic loader. It is idempotent: a
second call that finds a working tree returns at once.

DMTCP is in no package registry. ``find_dmtcp`` looks at ``$SNAPLINE_DMTCP`` (an install
directory with ``bin/``, or a ``.tgz`` of one), then ``dmtcp_launch`` on PATH, then a build
tarball in a ``shared/tools`` directory next to the checkout; a tarball is unpacked into the
cache once.

The cache is ``$SNAPLINE_CACHE``, else ``$XDG_CACHE_HOME/snapline``, else
``~/.cache/snapline``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from snapline.errors import ConfigError

#: The Debian packages CRIU 4.2.1 (unstable) needs: criu and every library it links (used
#: when apt-cache cannot compute the current list).
CRIU_PACKAGES = [
    "criu", "libcompel1", "libbsd0", "libc6", "libffi8", "libgcc-s1", "libgmp10",
    "libgnutls30t64", "libhogweed6t64", "libidn2-0", "libjansson4", "libmd0", "libmnl0",
    "libnet9", "libnettle8t64", "libnftables1", "libnftnl11", "libnl-3-200", "libp11-kit0",
    "libprotobuf-c1", "libtasn1-6", "libunistring5", "libuuid1", "libxtables12",
]  # fmt: skip
CRIU_SUITE_LINE = "deb http://deb.debian.org/debian sid main"
#: The oldest CRIU known to dump TCP connections on current kernels.
CRIU_MIN_VERSION = (4, 2)
_WRAPPER = """#!/bin/sh
R=$(dirname "$(readlink -f "$0")")/root
exec "$R/usr/lib64/ld-linux-x86-64.so.2" --library-path "$R/usr/lib/x86_64-linux-gnu" \\
  "$R/usr/sbin/criu" "$@"
"""


def cache_dir() -> Path:
    """Where snapline keeps tools it installed (see the module docstring)."""
    explicit = os.environ.get("SNAPLINE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "snapline"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCheck:
    """Whether a tool works here: its path (if found), version, and why it does not work."""

    name: str
    path: str | None
    version: str = ""
    ok: bool = False
    problem: str = ""
    fix: str = ""
    #: How it was found (``$SNAPLINE_DMTCP``, PATH, a build tarball).
    source: str = ""


def _run(argv: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
    )


def _criu_version(criu: str) -> tuple[str, tuple[int, ...]]:
    out = _run([criu, "--version"]).stdout
    for line in out.splitlines():
        if line.startswith("Version:"):
            text = line.split(":", 1)[1].strip()
            parts = tuple(int(p) for p in text.split(".") if p.isdigit())
            return text, parts
    raise ConfigError(f"{criu} --version printed no version: {out.strip()!r}")


def check_criu(criu: str) -> ToolCheck:
    """Run ``criu --version`` and ``criu check`` (in a private network namespace)."""
    try:
        version, parts = _criu_version(criu)
    except (OSError, ConfigError, subprocess.SubprocessError) as exc:
        return ToolCheck(name="criu", path=criu, problem=f"cannot run it: {exc}")
    if parts < CRIU_MIN_VERSION:
        return ToolCheck(
            name="criu",
            path=criu,
            version=version,
            problem=f"version {version} is too old (3.x fails on current kernels, 4.1 cannot "
            "dump TCP sockets)",
            fix="snapline doctor --install criu (installs 4.2.1 into snapline's cache)",
        )
    if os.geteuid() != 0:
        return ToolCheck(
            name="criu",
            path=criu,
            version=version,
            problem="CRIU needs root (or CAP_CHECKPOINT_RESTORE and CAP_SYS_ADMIN)",
            fix="run snapline as root",
        )
    # A fresh network namespace with loopback up: what the job supervisor runs criu in.
    check = _run(["unshare", "-n", "sh", "-c", f'ip link set lo up && "{criu}" check'])
    text = (check.stdout + check.stderr).strip()
    if check.returncode != 0 or "Looks good" not in text:
        return ToolCheck(
            name="criu",
            path=criu,
            version=version,
            problem=f"criu check failed: {text.splitlines()[-1] if text else check.returncode}",
            fix="see `criu check --all`; a kernel without CONFIG_CHECKPOINT_RESTORE cannot work",
        )
    return ToolCheck(name="criu", path=criu, version=version, ok=True)


def private_criu() -> Path:
    """The wrapper ``install_criu`` writes (it may not exist)."""
    return cache_dir() / "criu" / "criu"


def find_criu() -> ToolCheck:
    """The CRIU to use: ``$SNAPLINE_CRIU``, then snapline's private install, then ``criu``."""
    candidates: list[str] = []
    explicit = os.environ.get("SNAPLINE_CRIU")
    if explicit:
        candidates.append(explicit)
    if private_criu().is_file():
        candidates.append(str(private_criu()))
    on_path = shutil.which("criu")
    if on_path:
        candidates.append(on_path)
    first: ToolCheck | None = None
    for candidate in candidates:
        check = check_criu(candidate)
        if check.ok:
            return check
        first = first or check
    if first is not None:
        return first
    return ToolCheck(
        name="criu",
        path=None,
        problem="no criu found ($SNAPLINE_CRIU, snapline's cache, PATH)",
        fix="snapline doctor --install criu (root, Debian/Ubuntu with apt)",
    )


def _apt(argv: list[str], cwd: Path, *, log: bool) -> None:
    if log:
        print("+", " ".join(argv[:1] + argv[-2:]), flush=True)
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise ConfigError(
            f"installing CRIU: {' '.join(argv[:1] + argv[-2:])} failed: "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )


def _closure(options: list[str]) -> list[str]:
    """criu and everything it depends on, as the unstable suite has it now (the suite moves;
    a fixed list would break when a library is renamed). Empty when apt-cache cannot say."""
    done = subprocess.run(
        ["apt-cache", *options, "depends", "--recurse", "--no-recommends", "--no-suggests",
         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", "criu"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        return []
    names = {ln.strip() for ln in done.stdout.splitlines() if ln and not ln[0].isspace()}
    return sorted(n for n in names if re.fullmatch(r"[a-z0-9][a-z0-9+.-]+", n))


def install_criu(*, force: bool = False, log: bool = False) -> ToolCheck:
    """Install CRIU 4.2.1 into ``<cache>/criu`` (see the module docstring); idempotent."""
    target = cache_dir() / "criu"
    if not force and private_criu().is_file():
        check = check_criu(str(private_criu()))
        if check.ok:
            return check
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ConfigError("installing CRIU needs apt-get and dpkg-deb (Debian or Ubuntu)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".criu-install-") as tmp:
        work = Path(tmp)
        for sub in ("lists/partial", "cache/archives/partial", "debs", "tree/root"):
            (work / sub).mkdir(parents=True)
        (work / "sources.list").write_text(CRIU_SUITE_LINE + "\n", encoding="utf-8")
        options = [
            "-o", f"Dir::Etc::SourceList={work / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={work / 'lists'}",
            "-o", f"Dir::Cache={work / 'cache'}",
            "-o", "Debug::NoLocking=1",
        ]  # fmt: skip
        _apt(["apt-get", *options, "-q", "update"], work, log=log)
        packages = _closure(options) or CRIU_PACKAGES
        _apt(["apt-get", *options, "-q", "download", *packages], work / "debs", log=log)
        for deb in sorted((work / "debs").glob("*.deb")):
            subprocess.run(
                ["dpkg-deb", "-x", str(deb), str(work / "tree" / "root")], check=True, timeout=120
            )
        wrapper = work / "tree" / "criu"
        wrapper.write_text(_WRAPPER, encoding="utf-8")
        wrapper.chmod(0o755)
        check = check_criu(str(wrapper))
        if not check.ok:
            raise ConfigError(f"the downloaded CRIU does not work here: {check.problem}")
        if target.exists():
            shutil.rmtree(target)
        (work / "tree").rename(target)
    return check_criu(str(private_criu()))


# -- DMTCP ---------------------------------------------------------------------------------
DMTCP_TARBALL = "dmtcp-5.0-x86_64-linux.tgz"


def _tarball_candidates() -> list[Path]:
    here = Path(__file__).resolve()
    out = [p / "shared" / "tools" / DMTCP_TARBALL for p in here.parents]
    out.append(Path("/work/shared/tools") / DMTCP_TARBALL)
    return out


def _unpack(tgz: Path) -> Path:
    """Unpack a DMTCP build tarball into the cache once; return the directory with ``bin/``."""
    target = cache_dir() / "dmtcp" / tgz.name.removesuffix(".tgz").removesuffix(".tar.gz")
    if not (target / ".unpacked").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".unpack-") as tmp:
            with tarfile.open(tgz) as tar:
                tar.extractall(tmp, filter="tar")
            (Path(tmp) / ".unpacked").write_text(str(tgz), encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            Path(tmp).rename(target)
            os.makedirs(tmp)  # TemporaryDirectory wants something to remove
    return _bin_root(target)


def _bin_root(top: Path) -> Path:
    if (top / "bin" / "dmtcp_launch").is_file():
        return top
    for found in top.rglob("dmtcp_launch"):
        if found.parent.name == "bin":
            return found.parent.parent
    raise ConfigError(f"{top} holds no bin/dmtcp_launch")


def find_dmtcp() -> ToolCheck:
    """The DMTCP install to use (``path`` is the directory holding ``bin/dmtcp_launch``)."""
    fix = (
        "install DMTCP from source (github.com/dmtcp/dmtcp: ./configure --prefix=DIR && make "
        "&& make install) and put DIR/bin on PATH or set SNAPLINE_DMTCP=DIR"
    )
    source = ""
    try:
        root: Path | None = None
        explicit = os.environ.get("SNAPLINE_DMTCP")
        if explicit:
            p = Path(explicit)
            root = _unpack(p) if p.is_file() else _bin_root(p)
            source = f"SNAPLINE_DMTCP={explicit}"
        elif shutil.which("dmtcp_launch"):
            root = Path(str(shutil.which("dmtcp_launch"))).resolve().parent.parent
            source = "dmtcp_launch on PATH"
        else:
            for tgz in _tarball_candidates():
                if tgz.is_file():
                    root = _unpack(tgz)
                    source = f"unpacked from {tgz}"
                    break
    except (OSError, tarfile.TarError, ConfigError) as exc:
        return ToolCheck(name="dmtcp", path=None, problem=str(exc), fix=fix)
    if root is None:
        return ToolCheck(name="dmtcp", path=None, problem="no DMTCP found", fix=fix)
    try:
        out = _run([str(root / "bin" / "dmtcp_launch"), "--version"])
    except (OSError, subprocess.SubprocessError) as exc:
        return ToolCheck(name="dmtcp", path=str(root), problem=f"cannot run it: {exc}", fix=fix)
    first = (out.stdout or out.stderr).strip().splitlines()
    version = first[0] if first else ""
    if out.returncode != 0:
        return ToolCheck(
            name="dmtcp",
            path=str(root),
            version=version,
            problem="dmtcp_launch --version failed",
            fix=fix,
            source=source,
        )
    return ToolCheck(name="dmtcp", path=str(root), version=version, ok=True, source=source)


#: A checkpoint of ``sleep`` under a private coordinator, in a private network namespace
#: with loopback up (as the job supervisor runs DMTCP); prints the images written.
_DMTCP_PROBE = r"""
set -e
ip link set lo up
B="$1/bin"; D=$(mktemp -d); trap 'rm -rf "$D"' EXIT
"$B/dmtcp_coordinator" --daemon --exit-on-last -p 7779 --ckptdir "$D" >/dev/null 2>&1
export DMTCP_COORD_HOST=127.0.0.1 DMTCP_COORD_PORT=7779
"$B/dmtcp_launch" --no-gzip --ckptdir "$D" sleep 30 >/dev/null 2>&1 &
i=0; until "$B/dmtcp_command" --list 2>/dev/null | grep -q '\[4'; do
  i=$((i+1)); [ $i -lt 200 ] || { echo "dmtcp_launch did not reach the coordinator"; exit 1; }
  sleep 0.05
done
"$B/dmtcp_command" --bcheckpoint
"$B/dmtcp_command" --quit >/dev/null 2>&1 || true
ls "$D" | grep -c '\.dmtcp$'
"""


def check_dmtcp(found: ToolCheck) -> ToolCheck:
    """Checkpoint a ``sleep`` with the DMTCP ``found`` (about a second): does it work here?"""
    if not found.ok or found.path is None:
        return found
    if os.geteuid() != 0:
        return ToolCheck(
            name="dmtcp",
            path=found.path,
            version=found.version,
            problem="the job supervisor needs root (a private network namespace per job)",
            fix="run snapline as root",
            source=found.source,
        )
    try:
        done = _run(["unshare", "-n", "sh", "-c", _DMTCP_PROBE, "probe", found.path], 60)
    except (OSError, subprocess.SubprocessError) as exc:
        return ToolCheck(
            name="dmtcp",
            path=found.path,
            version=found.version,
            problem=f"probe failed: {exc}",
            source=found.source,
        )
    lines = (done.stdout + done.stderr).strip().splitlines()
    if done.returncode != 0 or not lines or lines[-1] != "1":
        return ToolCheck(
            name="dmtcp",
            path=found.path,
            version=found.version,
            problem="a test checkpoint of `sleep` failed: "
            + (lines[-1] if lines else f"exit {done.returncode}"),
            fix="see DMTCP's messages: run the commands in docs/howto/process-level.md by hand",
            source=found.source,
        )
    return found
