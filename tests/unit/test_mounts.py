"""Which file system a path is on, from a /proc/self/mounts text."""

from __future__ import annotations

from pathlib import Path

from snapline._mounts import filesystem_of, is_shared

MOUNTS = """\
/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw 0 0
server:/export {root}/shared nfs4 rw,vers=4.2 0 0
tmpfs {root}/shared/scratch tmpfs rw 0 0
server:/odd {root}/with\\040space lustre rw 0 0
"""


def test_the_longest_mount_point_containing_the_path_wins(tmp_path: Path) -> None:
    mounts = MOUNTS.format(root=tmp_path)
    (tmp_path / "shared" / "scratch").mkdir(parents=True)
    (tmp_path / "with space").mkdir()
    assert filesystem_of(tmp_path / "shared" / "ckpts", mounts) == "nfs4"
    assert is_shared(tmp_path / "shared" / "not" / "yet" / "made", mounts)
    assert filesystem_of(tmp_path / "shared" / "scratch" / "x", mounts) == "tmpfs"
    assert not is_shared(tmp_path / "shared" / "scratch", mounts)
    assert filesystem_of(tmp_path / "with space" / "x", mounts) == "lustre"
    assert filesystem_of(tmp_path / "sharedx", mounts) == "ext4"  # a prefix is not a parent
    assert filesystem_of("/proc/self", mounts) == "proc"


def test_this_machine_answers_for_a_real_path(tmp_path: Path) -> None:
    assert filesystem_of(tmp_path) not in ("", "unknown")
