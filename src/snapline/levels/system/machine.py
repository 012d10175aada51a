"""One QEMU guest (a system-level rank) and the QMP calls snapline makes to it.

Every guest runs under TCG (``-accel tcg``): snapline's own tests found KVM guests hanging on
the machines they run on, and TCG behaves the same everywhere. ``-nic none`` keeps QEMU's
default network card out (the only card is the one on snapline's switch), ``-no-reboot`` with
``panic=-1`` turns a guest that dies or powers off into a QEMU that exits.

QMP goes through ``qemu.qmp`` (the QEMU project's own client). Its client is asyncio; the
supervisor is not, so ``Monitors`` owns one event loop and runs every QMP call to every guest
on it: a coordinated ``stop`` is one ``gather`` of all the guests' ``stop`` commands, so they
stop within a millisecond of each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from snapline.errors import ConfigError, RuntimeFailure
from snapline.levels.system.image import GuestImage

QEMU = "qemu-system-x86_64"
MIGRATE_BANDWIDTH = 8 * 1024**3  # bytes/s; QEMU's default cap is 32 MiB/s
_T = TypeVar("_T")


def find_qemu() -> str:
    """The QEMU binary (``ConfigError`` naming the package to install when missing)."""
    path = shutil.which(QEMU)
    if path is None:
        raise ConfigError(
            f"{QEMU} not found; install QEMU: apt-get install qemu-system-x86 qemu-utils"
        )
    return path


def qmp_client_class() -> Any:
    """``qemu.qmp.QMPClient`` (``ConfigError`` when the vm extra is missing)."""
    try:
        from qemu.qmp import QMPClient
    except ImportError as exc:
        raise ConfigError(
            "the system level needs the QMP client: pip install 'snapline[vm]'"
        ) from exc
    return QMPClient


@dataclass(slots=True, kw_only=True)
class GuestConfig:
    """How to start guest ``rank`` (the same for every incarnation)."""

    rank: int
    n: int
    memory_mib: int
    image: GuestImage
    ip: str
    netdev: list[str]


class Machine:
    """A running QEMU process for one rank, in incarnation ``incarnation``."""

    def __init__(
        self, config: GuestConfig, run_dir: Path, incarnation: int, *, incoming: Path | None
    ) -> None:
        self.config = config
        self.rank = config.rank
        self.incarnation = incarnation
        self.qmp_path = run_dir / f"qmp-{self.rank}.sock"
        self.console_path = run_dir / f"console-{self.rank}-{incarnation}.log"
        self.output_path = run_dir / f"output-{self.rank}-{incarnation}.log"
        self.migration_path = run_dir / f"migration-{self.rank}.bin"
        self.errors_path = run_dir / f"qemu-{self.rank}-{incarnation}.err"
        with contextlib.suppress(FileNotFoundError):
            self.qmp_path.unlink()
        append = (
            f"console=ttyS0 quiet panic=-1 snapline.rank={self.rank} snapline.n={config.n} "
            f"snapline.ip={config.ip}"
        )
        disk: list[str] = []
        if config.image.disk is not None:
            append += " snapline.root=/dev/vda"
            # Read-only: the disk is shared by every guest and incarnation and never saved.
            disk = ["-drive", f"file={config.image.disk},format=raw,if=virtio,readonly=on"]
        argv = [
            find_qemu(),
            "-accel", "tcg",
            "-cpu", "max",
            "-machine", "pc",
            "-m", str(config.memory_mib),
            "-smp", "1",
            "-display", "none",
            "-no-reboot",
            "-nic", "none",
            "-monitor", "none",
            "-serial", f"file:{self.console_path}",
            "-serial", f"file:{self.output_path}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-kernel", str(config.image.kernel),
            "-initrd", str(config.image.initrd),
            "-append", append,
            *disk,
            *config.netdev,
        ]  # fmt: skip
        if incoming is not None:
            argv += ["-incoming", f"exec:cat {shlex.quote(str(incoming))}"]
        self.argv = argv
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.errors_path, "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        self.qmp: Any = None
        self.output_read = 0  # bytes of output_path read so far

    @property
    def pid(self) -> int:
        """The QEMU process id (what ``snapline ps`` shows and a test kills)."""
        return self.process.pid

    def exited(self) -> int | None:
        """QEMU's exit status once it has exited (negative: killed by that signal)."""
        return self.process.poll()

    def kill(self) -> None:
        """SIGKILL QEMU and reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def read_output(self) -> bytes:
        """Guest output (second serial port) written since the last call."""
        try:
            with open(self.output_path, "rb") as fh:
                fh.seek(self.output_read)
                data = fh.read()
        except FileNotFoundError:
            return b""
        self.output_read += len(data)
        return data

    def errors_tail(self, limit: int = 800) -> str:
        """The end of QEMU's own error output."""
        try:
            return self.errors_path.read_bytes()[-limit:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, limit: int = 2000) -> str:
        """The end of the kernel console (for error messages)."""
        try:
            return self.console_path.read_bytes()[-limit:].decode(errors="replace")
        except FileNotFoundError:
            return ""


class Monitors:
    """QMP connections to a set of machines, all driven from one private event loop."""

    def __init__(self, *, timeout_s: float = 10.0) -> None:
        self.loop = asyncio.new_event_loop()
        self.timeout_s = timeout_s

    def close(self) -> None:
        """Close the event loop (disconnect machines first with ``disconnect``)."""
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, _T], timeout_s: float | None = None) -> _T:
        """Run ``coro`` on the loop, failing with ``TimeoutError`` after ``timeout_s``."""
        return self.loop.run_until_complete(
            asyncio.wait_for(coro, timeout_s if timeout_s is not None else self.timeout_s)
        )

    def all(self, calls: list[Awaitable[_T]], timeout_s: float | None = None) -> list[_T]:
        """Run the calls concurrently; their results in order."""

        async def gather() -> list[_T]:
            return list(await asyncio.gather(*calls))

        return self.run(gather(), timeout_s)

    async def connect(self, machine: Machine, timeout_s: float) -> None:
        """Connect to ``machine``'s QMP socket as soon as QEMU has made it."""
        client = qmp_client_class()(f"snapline-vm-{machine.rank}")
        deadline = time.monotonic() + timeout_s
        while True:
            if machine.exited() is not None:
                raise RuntimeFailure(
                    f"QEMU for rank {machine.rank} exited with {machine.exited()} while "
                    f"starting: {machine.errors_tail()}"
                )
            if machine.qmp_path.exists():
                try:
                    await client.connect(str(machine.qmp_path))
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
            elif time.monotonic() > deadline:
                raise RuntimeFailure(f"QEMU for rank {machine.rank} made no QMP socket in time")
            await asyncio.sleep(0.02)
        machine.qmp = client
        await client.execute("migrate-set-parameters", {"max-bandwidth": MIGRATE_BANDWIDTH})

    @staticmethod
    async def execute(machine: Machine, command: str, args: dict[str, Any] | None = None) -> Any:
        """One QMP command; its ``return`` value."""
        return await machine.qmp.execute(command, args)

    @staticmethod
    async def disconnect(machine: Machine) -> None:
        """Drop the QMP connection (quietly: QEMU may be gone)."""
        if machine.qmp is not None:
            with contextlib.suppress(Exception):
                await machine.qmp.disconnect()
            machine.qmp = None

    @staticmethod
    async def migrate_to_file(machine: Machine) -> int:
        """Save the stopped guest's RAM, devices and CPU state to its migration file."""
        target = shlex.quote(str(machine.migration_path))
        await machine.qmp.execute("migrate", {"uri": f"exec:cat > {target}"})
        return await Monitors._wait_migration(machine)

    @staticmethod
    async def wait_incoming(machine: Machine) -> int:
        """Wait until an ``-incoming`` guest has loaded its state."""
        return await Monitors._wait_migration(machine)

    @staticmethod
    async def _wait_migration(machine: Machine) -> int:
        while True:
            info = await machine.qmp.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return int(info.get("ram", {}).get("total", 0))
            if status in ("failed", "cancelled"):
                raise RuntimeFailure(
                    f"migration of rank {machine.rank} {status}: {info.get('error-desc', '')}"
                )
            await asyncio.sleep(0.005)
