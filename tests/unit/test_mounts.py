"""Which file system a path is on, from a /proc/self/mounts text."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapline._mounts import filesystem_of, is_shared, refuse_node_local
from snapline.errors import ConfigError

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


def test_a_node_local_store_is_refused_with_what_to_do(tmp_path: Path) -> None:
    kinds = filesystem_of(tmp_path)
    if is_shared(tmp_path):
        pytest.skip(f"{tmp_path} is on a shared file system ({kinds})")
    with pytest.raises(ConfigError) as refused:
        refuse_node_local(tmp_path, what="the store", why="the job spans 2 hosts", say="pass -S")
    message = str(refused.value)
    assert f"node-local file system ({kinds})" in message
    assert "the job spans 2 hosts" in message and "or pass -S if every node" in message


def test_a_store_said_to_be_node_local_is_refused_without_looking(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="node-local"):
        refuse_node_local(tmp_path, what="w", why="y", say="s", detect=False)
