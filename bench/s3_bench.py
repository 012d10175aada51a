"""Object store benchmark: snapline save/load on ``s3://`` against raw PUT/GET of the same bytes.

Run: ``python bench/s3_bench.py [--size-mib 128] [--rounds 5]``. Without ``--endpoint`` it
starts moto's standalone server on 127.0.0.1 (the same server the tests use); with
``--endpoint URL --bucket NAME`` it measures an existing S3-compatible server (credentials from
the environment, as for snapline). Each round times the raw baselines right next to the
snapline call they are compared with, on the same server, so a figure is a ratio of two
timings taken seconds apart; the table shows the median over rounds of each per-round ratio.
JSON: ``bench/results/s3_bench.json``.

Baselines (same bytes: the state's arrays, cut into 16 MiB objects like snapline's packs):

* ``raw s3fs``: ``pipe_file`` / ``cat_file`` of those objects from ``io_threads`` threads (the
  same parallelism snapline uses), through s3fs -- snapline's own client.
* ``raw obstore``: the same through obstore (Rust, object_store), to see whether a faster
  client would pay off against this server.
* ``raw s3fs, 1 object``: one PUT / GET of all bytes.

Figures: ``save_vs_raw_put`` = raw s3fs put time / snapline ``save`` time (>= 0.8 means
snapline reaches 80% of the raw throughput); ``load_vs_raw_get`` likewise for ``load`` with
hash verification; ``obstore_vs_s3fs_put/get``: s3fs time / obstore time (> 1: obstore is
faster).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from snapline.store import open_store

N_ARRAYS = 8
OBJECT_BYTES = 16 * 2**20
IO_THREADS = 4


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto server on a free loopback port (killed on exit); yields its endpoint."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.kill()
        proc.wait()


def make_state(size_mib: int, seed: int) -> dict[str, np.ndarray[Any, Any]]:
    per = size_mib * 2**20 // N_ARRAYS // 4
    rng = np.random.default_rng(seed)
    return {f"layer{i}": rng.random(per, dtype=np.float32) for i in range(N_ARRAYS)}


def pieces_of(state: dict[str, np.ndarray[Any, Any]]) -> list[bytes]:
    """The state's bytes cut into objects of ``OBJECT_BYTES`` (what a raw client would PUT)."""
    blob = b"".join(memoryview(a).cast("B") for a in state.values())
    return [blob[i : i + OBJECT_BYTES] for i in range(0, len(blob), OBJECT_BYTES)]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Raw:
    """Parallel PUT/GET of a list of byte strings through one client."""

    def __init__(
        self,
        put: Callable[[str, bytes], None],
        get: Callable[[str], bytes],
        delete: Callable[[str], None],
    ) -> None:
        self.put, self.get, self.delete = put, get, delete
        self.pool = ThreadPoolExecutor(IO_THREADS)

    def put_all(self, prefix: str, pieces: list[bytes]) -> list[str]:
        keys = [f"{prefix}/{i}" for i in range(len(pieces))]
        list(self.pool.map(self.put, keys, pieces))
        return keys

    def get_all(self, keys: list[str]) -> int:
        return sum(len(b) for b in self.pool.map(self.get, keys))


def s3fs_raw(bucket: str, endpoint: str) -> Raw:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    return Raw(
        lambda k, b: fs.pipe_file(f"{bucket}/{k}", b),
        lambda k: fs.cat_file(f"{bucket}/{k}"),
        lambda k: fs.rm_file(f"{bucket}/{k}"),
    )


def obstore_raw(bucket: str, endpoint: str) -> Raw | None:
    try:
        import obstore
        from obstore.store import S3Store
    except ImportError:
        return None
    store = S3Store(
        bucket,
        endpoint=endpoint,
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        client_options={"allow_http": True},
    )
    return Raw(
        lambda k, b: obstore.put(store, k, b),
        lambda k: bytes(obstore.get(store, k).bytes()),
        lambda k: obstore.delete(store, k),
    )


def one_round(
    url: str, raws: dict[str, Raw], size_mib: int, seed: int, step: int
) -> dict[str, float]:
    state = make_state(size_mib, seed)  # new random bytes: every chunk of the save is new
    pieces = pieces_of(state)
    out: dict[str, float] = {}
    s3 = raws["s3fs"]
    keys: list[str] = []

    def raw_put(name: str) -> None:
        nonlocal keys
        keys = raws[name].put_all(f"raw-{uuid.uuid4().hex}", pieces)

    with open_store(url, io_threads=IO_THREADS) as store:
        for name in raws:
            out[f"raw_put_{name}_s"] = timed(lambda name=name: raw_put(name))  # type: ignore[misc]
            out[f"raw_get_{name}_s"] = timed(lambda name=name: raws[name].get_all(keys))  # type: ignore[misc]
            for k in keys:
                raws[name].delete(k)
        whole = b"".join(pieces)
        out["raw_put_1_object_s"] = timed(lambda: s3.put("raw-whole", whole))
        out["raw_get_1_object_s"] = timed(lambda: s3.get("raw-whole"))
        s3.delete("raw-whole")
        out["save_s"] = timed(lambda: store.save(state, step=step))
        loaded: dict[str, Any] = {}
        out["load_s"] = timed(lambda: loaded.update(store.load(step=step)))
        assert all(np.array_equal(loaded[k], v) for k, v in state.items())
        store.delete(step)
        store.gc()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--endpoint", help="an existing S3-compatible server (default: moto)")
    parser.add_argument("--bucket", help="bucket on --endpoint (must exist)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/s3_bench.json"))
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        if args.endpoint:
            endpoint, bucket = args.endpoint, args.bucket
            if not bucket:
                parser.error("--endpoint needs --bucket")
        else:
            endpoint = stack.enter_context(moto_server())
            for name, value in {
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench-secret",
                "AWS_DEFAULT_REGION": "us-east-1",
            }.items():
                os.environ.setdefault(name, value)
            bucket = f"bench-{uuid.uuid4().hex[:12]}"
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        os.environ["AWS_ENDPOINT_URL"] = endpoint
        raws = {"s3fs": s3fs_raw(bucket, endpoint)}
        ob = obstore_raw(bucket, endpoint)
        if ob is not None:
            raws["obstore"] = ob
        url = f"s3://{bucket}/bench-{uuid.uuid4().hex[:8]}"
        rounds = [
            one_round(url, raws, args.size_mib, seed, step)
            for step, seed in enumerate(range(args.rounds), start=1)
        ]

    size = args.size_mib * 2**20

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def ratio(num: str, den: str) -> tuple[float, list[float]]:
        per = [r[num] / r[den] for r in rounds]
        return statistics.median(per), per

    figures = {
        "save_vs_raw_put": ratio("raw_put_s3fs_s", "save_s"),
        "load_vs_raw_get": ratio("raw_get_s3fs_s", "load_s"),
        "save_vs_raw_put_1_object": ratio("raw_put_1_object_s", "save_s"),
        "load_vs_raw_get_1_object": ratio("raw_get_1_object_s", "load_s"),
    }
    if "obstore" in raws:
        figures["obstore_vs_s3fs_put"] = ratio("raw_put_s3fs_s", "raw_put_obstore_s")
        figures["obstore_vs_s3fs_get"] = ratio("raw_get_s3fs_s", "raw_get_obstore_s")
        figures["save_vs_raw_put_obstore"] = ratio("raw_put_obstore_s", "save_s")
        figures["load_vs_raw_get_obstore"] = ratio("raw_get_obstore_s", "load_s")

    console = Console()
    table = Table(title=f"s3 store, {args.size_mib} MiB, median of {args.rounds} rounds")
    for col in ("figure", "median", "per round"):
        table.add_column(col)
    for name, (med, per) in figures.items():
        table.add_row(name, f"{med:.2f}x", " ".join(f"{p:.2f}" for p in per))
    console.print(table)
    times = sorted({k for r in rounds for k in r})
    for key in times:
        console.print(f"{key:>24}: {median(key):.3f} s  ({size / 2**20 / median(key):.0f} MiB/s)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": f"{platform.node()} {os.cpu_count()} cpus",
                "endpoint": "moto (loopback)" if not args.endpoint else "external",
                "size_mib": args.size_mib,
                "rounds": rounds,
                "figures": {k: {"median": m, "per_round": p} for k, (m, p) in figures.items()},
            },
            indent=1,
        )
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
