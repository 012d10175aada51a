"""Multi-level checkpoint benchmark: blocking time of local + partner vs the remote level, and
XOR encode/rebuild throughput vs memcpy.

Run: ``python bench/multilevel_bench.py [--size-mib 64] [--rounds 5]``. It starts moto's
standalone server on 127.0.0.1 (as ``s3_bench.py`` does) for the object store, and uses a
directory of the same disk as the "shared directory" remote. Each round times, back to back
on the same fresh state (new random bytes, so no chunk is deduplicated):

* ``multilevel_block_s``: what the application waits for with levels ``local,partner`` --
  ``save_async`` returning (state captured; the writes go on in the background);
* ``multilevel_protected_s``: until that checkpoint is durable on the local *and* the
  partner level (``result()``), which is when the job may count it;
* ``local_save_s``: a plain blocking ``Store.save`` to a local directory (one level);
* ``remote_dir_save_s`` / ``remote_s3_save_s``: a blocking ``Store.save`` straight to the
  remote level (shared directory / S3 on moto), what a job without levels waits for.

Ratios (per round, then the median): ``s3_vs_block`` = remote S3 save / multi-level blocking
time (how much less the application waits), ``s3_vs_protected`` = remote S3 save /
time-to-protected, ``dir_vs_protected`` likewise for the shared directory. On one machine
"local", "partner" and "shared directory" are the same disk, so the directory ratio shows
the cost of the extra copy rather than a network's.

XOR: ``xor_encode_gbps`` / ``xor_rebuild_gbps`` (k=4, a blob of ``--size-mib``) against
``memcpy_gbps`` (``np.copyto`` of the same bytes), all in GB/s of blob bytes; the ratios are
``encode_vs_memcpy`` and ``rebuild_vs_memcpy``. JSON: ``bench/results/multilevel_bench.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from snapline.store import open_store
from snapline.store.multilevel import MultiLevelStore, NodeLayout, parse_levels, xor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from s3_bench import make_state, moto_server


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def checkpoint_round(root: Path, s3_url: str, size_mib: int, seed: int) -> dict[str, float]:
    state = make_state(size_mib, seed)
    out: dict[str, float] = {}
    work = root / f"round-{seed}"

    def multilevel() -> None:
        levels = parse_levels(f"local:{work / 'scratch'},partner")
        with MultiLevelStore(NodeLayout(levels=levels, node_of=("a", "b")), 0) as store:
            start = time.perf_counter()
            pending = store.save_async(state, step=1)
            out["multilevel_block_s"] = time.perf_counter() - start
            held = pending.result().meta["levels"]
            out["multilevel_protected_s"] = time.perf_counter() - start
            assert held == ["local", "partner"], held

    def local() -> None:
        with open_store(work / "plain") as plain:
            out["local_save_s"] = timed(lambda: plain.save(state, step=1))

    def remote_dir() -> None:
        with open_store(work / "shared") as shared:
            out["remote_dir_save_s"] = timed(lambda: shared.save(state, step=1))

    def remote_s3() -> None:
        with open_store(f"{s3_url}/round-{seed}") as remote:
            out["remote_s3_save_s"] = timed(lambda: remote.save(state, step=1))
            remote.delete(1)
            remote.gc()

    # Each round starts with another measurement: whatever the previous one left for the
    # disk to write back (or the server to digest) does not always land on the same one.
    order = [multilevel, local, remote_dir, remote_s3]
    for measure in order[seed % 4 :] + order[: seed % 4]:
        measure()
    shutil.rmtree(work)
    out["s3_vs_block"] = out["remote_s3_save_s"] / out["multilevel_block_s"]
    out["s3_vs_protected"] = out["remote_s3_save_s"] / out["multilevel_protected_s"]
    out["dir_vs_protected"] = out["remote_dir_save_s"] / out["multilevel_protected_s"]
    return out


def xor_round(size_mib: int, seed: int, k: int = 4) -> dict[str, float]:
    blob = np.random.default_rng(seed).integers(0, 256, size_mib * 2**20, np.uint8).tobytes()
    gb = len(blob) / 1e9
    src = np.frombuffer(blob, np.uint8)
    dst = np.empty_like(src)
    memcpy_s = timed(lambda: np.copyto(dst, src))
    segments: list[memoryview | None] = []
    encode_s = timed(lambda: segments.extend(xor.encode(blob, k)))
    segments[1] = None  # one node lost
    rebuilt: list[memoryview] = []
    rebuild_s = timed(lambda: rebuilt.append(xor.rebuild(segments, len(blob))))
    assert rebuilt[0] == blob
    return {
        "memcpy_gbps": gb / memcpy_s,
        "xor_encode_gbps": gb / encode_s,
        "xor_rebuild_gbps": gb / rebuild_s,
        "encode_vs_memcpy": memcpy_s / encode_s,
        "rebuild_vs_memcpy": memcpy_s / rebuild_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/multilevel_bench.json"))
    args = parser.parse_args()

    rounds: list[dict[str, float]] = []
    with contextlib.ExitStack() as stack:
        endpoint = stack.enter_context(moto_server())
        for name, value in {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            os.environ.setdefault(name, value)
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        import boto3

        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ml-bench-")))
        for r in range(args.rounds):
            row = checkpoint_round(root, f"s3://{bucket}/bench", args.size_mib, seed=r)
            row.update(xor_round(args.size_mib, seed=r))
            rounds.append(row)

    medians = {key: statistics.median(row[key] for row in rounds) for key in rounds[0]}
    table = Table(title=f"multi-level checkpoints, {args.size_mib} MiB, {args.rounds} rounds")
    table.add_column("figure")
    table.add_column("median", justify="right")
    for key, value in medians.items():
        unit = "s" if key.endswith("_s") else ("GB/s" if key.endswith("gbps") else "x")
        table.add_row(key, f"{value:.3f} {unit}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
                "size_mib": args.size_mib,
                "rounds": rounds,
                "medians": medians,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
