"""Multi-level checkpoints on real directories (one per "node"), a real S3 server, kill -9.

Each test writes checkpoints of three ranks on three nodes (``a``, ``b``, ``c``: one local
directory each under ``scratch/``), then loses something -- a node's directory, every local
directory, a bit of a partner copy -- and checks that a fresh store of the rank (a restarted
process) loads the exact state from the next level that holds it intact.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from s3_support import S3Server, client_env
from snapline.errors import CheckpointNotFound, CorruptCheckpoint
from snapline.store import open_store
from snapline.store.multilevel import MultiLevelStore, NodeLayout, parse_levels

pytestmark = pytest.mark.timeout(120)

NODES = ("a", "b", "c")


def state(rank: int, step: int, kib: int = 256) -> dict[str, Any]:
    rng = np.random.default_rng(rank * 1000 + step)
    return {"rank": rank, "step": step, "w": rng.random(kib * 128)}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a
    )


def layout(tmp_path: Path, spec: str, flush_every: int | None = None) -> NodeLayout:
    levels = parse_levels(spec.format(tmp=tmp_path), flush_every=flush_every)
    return NodeLayout(levels=levels, node_of=NODES)


def write_steps(lay: NodeLayout, steps: range) -> dict[int, list[str]]:
    """Every rank saves ``steps``; returns the levels each rank's last save reported."""
    held: dict[int, list[str]] = {}
    for rank in range(len(NODES)):
        with MultiLevelStore(lay, rank) as store:
            for step in steps:
                info = store.save_async(state(rank, step), step=step).result()
                held[rank] = info.meta["levels"]
            store.wait_flushed()
    return held


def test_a_lost_node_is_served_by_its_partner_copy_and_put_back(tmp_path: Path) -> None:
    lay = layout(tmp_path, "local:{tmp}/scratch,partner")
    assert write_steps(lay, range(1, 4)) == {r: ["local", "partner"] for r in range(3)}
    shutil.rmtree(tmp_path / "scratch" / "b")  # node b: rank 1's state, rank 0's partner copy
    with MultiLevelStore(lay, 1) as store:
        assert store.steps() == [1, 2, 3]
        assert same(store.load(3), state(1, 3))
        assert store.served == {3: "partner"}
        assert same(store.load(3), state(1, 3)) and store.served == {3: "local"}
    with MultiLevelStore(lay, 0) as store:  # its own node is intact
        assert same(store.load(3), state(0, 3)) and store.served == {3: "local"}


def test_a_lost_node_is_rebuilt_from_xor_parity(tmp_path: Path) -> None:
    lay = layout(tmp_path, "local:{tmp}/scratch,xor:3")
    assert write_steps(lay, range(1, 3)) == {r: ["local", "xor"] for r in range(3)}
    shutil.rmtree(tmp_path / "scratch" / "c")
    for rank in range(3):
        with MultiLevelStore(lay, rank) as store:
            assert same(store.load(2), state(rank, 2))
            assert store.served == {2: "xor" if rank == 2 else "local"}


def test_every_local_directory_lost_is_served_by_the_remote_level(tmp_path: Path) -> None:
    lay = layout(tmp_path, "local:{tmp}/scratch,partner,remote:{tmp}/shared", flush_every=2)
    write_steps(lay, range(1, 6))
    shutil.rmtree(tmp_path / "scratch")
    for rank in range(3):
        with MultiLevelStore(lay, rank) as store:
            assert store.steps() == [2, 4]  # every 2nd checkpoint was flushed
            with pytest.raises(CheckpointNotFound, match="holds step 5"):
                store.load(5)
            assert same(store.load(4), state(rank, 4)) and store.served == {4: "remote"}
            assert open_store(tmp_path / "shared" / f"rank-{rank}").verify().ok


def test_old_steps_leave_the_remote_level_only_once_a_newer_one_is_there(
    tmp_path: Path,
) -> None:
    lay = layout(tmp_path, "local:{tmp}/scratch,remote:{tmp}/shared", flush_every=2)
    remote = open_store(tmp_path / "shared" / "rank-0")
    with MultiLevelStore(lay, 0) as store:
        for step in (1, 2, 3):
            store.save_async(state(0, step), step=step).result()
        store.wait_flushed()
        assert remote.steps() == [2]
        store.delete(1)
        store.delete(2)  # step 3 is newer, but only locally: the remote level keeps 2
        store.wait_flushed()
        assert remote.steps() == [2] and store.steps() == [3]  # deleted: not listed
        store.save_async(state(0, 4), step=4).result()
        store.wait_flushed()
        assert remote.steps() == [4]  # 2 went once 4 was flushed
        store.delete(4)  # the newest step undone (a rollback): gone from every level
        store.wait_flushed()
        assert remote.steps() == [] and store.steps() == [3]
        assert remote.backend.list_keys("chunks/") == []  # and their chunks reclaimed
    remote.close()


def _flip_a_bit(store_dir: Path, step: int) -> None:
    """Flip one bit inside the largest chunk of ``step`` in the store at ``store_dir``."""
    with open_store(store_dir, create=False) as store:
        ref = max(store.manifest(step).chunks, key=lambda c: c.stored_size)
    path = store_dir / ref.key
    data = bytearray(path.read_bytes())
    data[ref.offset + ref.stored_size // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_bit_flip_in_the_partner_copy_makes_the_next_level_serve(tmp_path: Path) -> None:
    lay = layout(tmp_path, "local:{tmp}/scratch,partner,xor:3")
    write_steps(lay, range(1, 3))
    shutil.rmtree(tmp_path / "scratch" / "a")  # rank 0's node
    _flip_a_bit(lay.partner_store(0), 2)  # its partner copy, on node b
    with MultiLevelStore(lay, 0) as store:
        assert same(store.load(2), state(0, 2)) and store.served == {2: "xor"}


def test_a_checkpoint_no_level_holds_intact_fails_as_a_damaged_one(tmp_path: Path) -> None:
    lay = layout(tmp_path, "local:{tmp}/scratch,partner")
    write_steps(lay, range(1, 3))
    _flip_a_bit(lay.local_store(0), 2)
    _flip_a_bit(lay.partner_store(0), 2)
    with MultiLevelStore(lay, 0) as store:
        with pytest.raises(CorruptCheckpoint, match="no level of rank 0 holds step 2 intact"):
            store.load(2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Without a step: the newest checkpoint some level holds intact, as Store.load.
            assert store.load()["step"] == 1


def test_a_stale_copy_of_a_step_on_a_slower_level_is_never_restored(tmp_path: Path) -> None:
    flushing = layout(tmp_path, "local:{tmp}/scratch,remote:{tmp}/shared", flush_every=1)
    with MultiLevelStore(flushing, 0) as store:
        old_id = store.save_async(state(0, 1), step=1).result().meta["checkpoint_id"]
        store.wait_flushed()
    # A rolled-back rank saves step 1 again; this time it is not flushed.
    quiet = layout(tmp_path, "local:{tmp}/scratch,remote:{tmp}/shared", flush_every=2)
    with MultiLevelStore(quiet, 0) as store:
        new = state(0, 101)
        new_id = store.save_async(new, step=1, overwrite=True).result().meta["checkpoint_id"]
    assert new_id != old_id
    shutil.rmtree(tmp_path / "scratch")
    with MultiLevelStore(quiet, 0) as store:
        with pytest.raises(CorruptCheckpoint, match="another checkpoint of that step"):
            store.load(1, expect=new_id)
        assert same(store.load(1, expect=old_id), state(0, 1))


def test_a_level_that_cannot_be_written_is_left_out_of_the_levels_held(tmp_path: Path) -> None:
    lay = layout(tmp_path, "local:{tmp}/scratch,partner")
    (tmp_path / "scratch" / "b").mkdir(parents=True)
    (tmp_path / "scratch" / "b" / "partner").write_text("not a directory")
    with MultiLevelStore(lay, 0) as store:
        assert store.save_async(state(0, 1), step=1).result().meta["levels"] == ["local"]
    with MultiLevelStore(lay, 1) as store:  # rank 1's partner is node c: fine
        assert store.save_async(state(1, 1), step=1).result().meta["levels"] == [
            "local",
            "partner",
        ]


FLUSHER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from snapline.store.multilevel import MultiLevelStore, NodeLayout, parse_levels

    scratch, url, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
    levels = parse_levels(f"local:{scratch},remote:{url}", flush_every=1)
    store = MultiLevelStore(NodeLayout(levels=levels, node_of=("a",)), 0)
    store.save_async({"step": 1, "w": np.arange(1000.0)}, step=1).result()
    store.wait_flushed()
    print("flushed 1", flush=True)
    # A slow link from here on: every pack takes a second more, so the flush of step 2 is
    # still running for seconds after its first pack is up (the test kills it then).
    from snapline.store import ObjectStore
    upload = ObjectStore.write
    def slow_upload(self, key, pieces):
        upload(self, key, pieces)
        if "/packs/" in key:
            time.sleep(1.0)
    ObjectStore.write = slow_upload
    w = np.random.default_rng(2).random(mib * 131_072)
    store.save_async({"step": 2, "w": w}, step=2).result()
    print("saved 2 locally; flushing", flush=True)
    store.wait_flushed()
    print("flushed 2", flush=True)
    """
)


def test_a_flush_killed_midway_leaves_the_remote_level_consistent(
    s3_env: S3Server, tmp_path: Path
) -> None:
    bucket = s3_env.new_bucket("flush")
    url = f"s3://{bucket}/job"
    script = tmp_path / "flusher.py"
    script.write_text(FLUSHER)
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "scratch"), url, "24"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **client_env(s3_env.endpoint)},
    )
    client: Any = s3_env.client()

    def packs() -> int:
        listing = client.list_objects_v2(Bucket=bucket, Prefix="job/rank-0/chunks/packs/")
        return int(listing.get("KeyCount", 0))

    try:
        deadline = time.monotonic() + 60
        while packs() < 2:  # step 1's pack, and one of step 2's (24 MiB: several packs)
            assert child.poll() is None, child.communicate()[0]
            assert time.monotonic() < deadline, "the flush never started"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        output, _ = child.communicate(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert "flushed 1" in output and "flushed 2" not in output
    remote = open_store(f"{url}/rank-0", create=False)
    assert remote.steps() == [1]
    assert remote.verify().ok
    assert remote.load()["step"] == 1
    remote.close()
    # The node survived: its local level still holds step 2, which a restart loads.
    lay = NodeLayout(
        levels=parse_levels(f"local:{tmp_path / 'scratch'},remote:{url}"), node_of=("a",)
    )
    with MultiLevelStore(lay, 0) as store:
        assert store.load(2)["step"] == 2 and store.served == {2: "local"}
    # The node is lost too: the remote level serves the last flushed checkpoint.
    shutil.rmtree(tmp_path / "scratch")
    with MultiLevelStore(lay, 0) as store:
        assert store.steps() == [1]
        assert store.load(1)["step"] == 1 and store.served == {1: "remote"}
