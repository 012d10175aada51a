"""A job on a 3-node Ray cluster on this machine loses a node mid-run; print what happened.

Usage: python node_loss.py STORE. Prints one JSON line: the failures and recoveries the job
reported, its results and the checkers' problems (none expected).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from snapline.runtime.local import read_status, run
from snapline.runtime.local.verify import check_run

PARAMS = {"messages": 600, "step_s": 0.01}


def main(store: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    outcome: dict[str, Any] = {}

    def job() -> None:
        try:
            outcome["result"] = run(
                "bank",
                3,
                store=store,
                protocol="chandy-lamport",
                interval="0.2s",
                app_options=PARAMS,
                engine="ray",
                timeout="150s",
            )
        except BaseException as exc:
            outcome["error"] = repr(exc)

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while True:  # until the job runs and has delivered a third of its messages
        assert time.monotonic() < deadline and thread.is_alive(), "the job never got going"
        try:
            status = read_status(Path(store))
        except Exception:
            time.sleep(0.05)
            continue
        if status.state == "running" and status.messages_delivered >= 100:
            break
        time.sleep(0.05)
    # A node that runs a rank (one may hold only the engine's spare actor): Ray's workers are
    # children of their node's raylet.
    parents = {_parent(r.pid) for r in read_status(Path(store)).ranks if r.pid is not None}
    victim = next(node for node in workers if _raylet_pid(node) in parents)
    cluster.remove_node(victim, allow_graceful=False)  # its raylet and workers: SIGKILL
    thread.join(200)
    if "error" in outcome:
        print(json.dumps({"error": outcome["error"]}))
        return
    result = outcome["result"]
    problems = check_run(result, app="bank", app_params=PARAMS, topology="complete")
    print(
        json.dumps(
            {
                "failures": [{"rank": f["rank"], "why": str(f["why"])} for f in result.failures],
                "recoveries": len(result.recoveries),
                "results": result.results,
                "problems": [str(p) for p in problems],
            }
        )
    )
    ray.shutdown()
    cluster.shutdown()


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _raylet_pid(node: Any) -> int:
    return next(int(proc.pid) for kind, proc in node.live_processes() if kind == "raylet")


if __name__ == "__main__":
    main(sys.argv[1])
