"""The VM spec file and the initramfs archive format (no QEMU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapline.errors import ConfigError
from snapline.levels.system.image import newc_archive
from snapline.levels.system.spec import VmSpec, load_spec


def _spec(tmp_path: Path, text: str) -> Path:
    (tmp_path / "w.sh").write_text("echo hi\n")
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def test_a_spec_reads_its_workload_and_round_trips(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, 'guests = 3\nmemory_mib = 128\nworkload = "w.sh"\n'))
    assert spec == VmSpec(guests=3, memory_mib=128, workload="echo hi\n", network="switch")
    assert VmSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('guests = 0\nworkload = "w.sh"\n', "guests must be"),
        ('memory_mib = 8\nworkload = "w.sh"\n', "memory_mib must be"),
        ('network = "wifi"\nworkload = "w.sh"\n', "network must be"),
        ('workload = "missing.sh"\n', "cannot read workload"),
        ('workload = "w.sh"\ncpus = 2\n', "unknown keys"),
        ("guests = 2\n", "'workload' must name"),
    ],
)
def test_a_wrong_spec_says_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_spec(_spec(tmp_path, text))


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    out, pos = {}, 0
    while True:
        assert data[pos : pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_len = fields[1], fields[6], fields[11]
        pos += 110
        name = data[pos : pos + name_len - 1].decode()
        pos += name_len + (-(110 + name_len) % 4)
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_the_initramfs_archive_is_newc_with_its_directories() -> None:
    files = {"init": (b"#!/bin/sh\n", 0o755), "mod/a.ko": (b"x" * 5, 0o644)}
    entries = _read_newc(newc_archive(files))
    assert entries["init"] == (0o100755, b"#!/bin/sh\n")
    assert entries["mod/a.ko"] == (0o100644, b"xxxxx")
    assert entries["mod"] == (0o040755, b"")


def test_a_spec_asks_for_the_python_root_disk(tmp_path: Path) -> None:
    spec = load_spec(_spec(tmp_path, 'workload = "w.sh"\nrootfs = "python"\n'))
    assert spec.rootfs == "python"
    assert VmSpec.from_json(spec.to_json()) == spec
    # A job file written before rootfs existed reads as a guest without a disk.
    old = {k: v for k, v in spec.to_json().items() if k != "rootfs"}
    assert VmSpec.from_json(old).rootfs == "none"
    with pytest.raises(ConfigError, match="rootfs must be one of"):
        load_spec(_spec(tmp_path, 'workload = "w.sh"\nrootfs = "debian"\n'))
