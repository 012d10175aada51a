"""Jobs on a Ray cluster of three "hosts" on this machine; a rank or a node fails mid-run.

Usage: python multi_host.py DIR CASE... where CASE is PROTOCOL:FAULT and FAULT is ``kill9``
(``kill -9`` of a rank's pid on another host, from outside), ``raykill`` (``ray.kill`` of its
actor), ``node`` (its whole Ray node: raylet and workers SIGKILLed) or ``hang`` (``SIGSTOP``:
no FIN on its sockets, as when a host vanishes; heartbeats must find it). Prints one JSON
line per case, then ``{"done": true}``.

The cluster: the head node on this host's address and two nodes on 127.0.0.2 and 127.0.0.3
(Linux routes all of 127/8 to the loopback device), so Ray sees three hosts, the engine runs
its channels and control links over TCP between different addresses, and ranks off the head's
address are watched as remote ones (no pidfd). A lost node is added back before the next case.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from snapline.errors import ConfigError
from snapline.runtime.local import read_status, run
from snapline.runtime.local.config import JOB_FILE
from snapline.runtime.local.status import pid_alive
from snapline.runtime.local.verify import check_run

PARAMS = {"messages": 600, "step_s": 0.01}
OTHER_HOSTS = ("127.0.0.2", "127.0.0.3")


def main(root: str, cases: list[str]) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = {ip: cluster.add_node(num_cpus=1, node_ip_address=ip) for ip in OTHER_HOSTS}
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        refused = Path(root) / "refused"
        why = refused_node_local(refused)
        # Nothing ran: the store holds no job that a rerun with --shared-store must resume.
        print(json.dumps({"refused": why, "left_a_job": (refused / JOB_FILE).exists()}), flush=True)
        for number, case in enumerate(cases):
            protocol, fault = case.split(":")
            report = one_case(Path(root) / f"job-{number}", protocol, fault, cluster, nodes)
            print(json.dumps({"case": case, **report}), flush=True)
            if fault == "node":  # add the lost host back for the next case
                lost = [ip for ip, node in nodes.items() if node not in cluster.worker_nodes]
                for ip in lost:
                    nodes[ip] = cluster.add_node(num_cpus=1, node_ip_address=ip)
                cluster.wait_for_nodes()
        print(json.dumps({"done": True}), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


def refused_node_local(store: Path) -> str:
    """The error a multi-host job gets for a store on a node-local file system."""
    try:
        run("bank", 3, store=store, engine="ray", app_options=PARAMS, timeout="30s")
    except ConfigError as exc:
        return str(exc)
    return ""


def one_case(
    store: Path, protocol: str, fault: str, cluster: Cluster, nodes: dict[str, Any]
) -> dict[str, Any]:
    outcome: dict[str, Any] = {}

    def job() -> None:
        try:
            outcome["result"] = run(
                "bank",
                3,
                store=store,
                protocol=protocol,
                interval="0.2s",
                app_options=PARAMS,
                engine="ray",
                timeout="150s",
                # Every "host" here is this machine, so each does see the directory.
                shared_store=True,
            )
        except BaseException as exc:
            outcome["error"] = repr(exc)

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while True:  # until the job runs and has delivered a sixth of its messages
        assert time.monotonic() < deadline and thread.is_alive(), f"never got going: {outcome}"
        try:
            status = read_status(store)
        except Exception:
            time.sleep(0.05)
            continue
        if (
            status.state == "running"
            and status.messages_delivered >= 100
            and all(r.pid is not None for r in status.ranks)
        ):
            break
        time.sleep(0.05)
    before = {r.rank: (r.node, r.pid) for r in status.ranks}
    # A rank on another "host" (not the head's address: no pidfd watches it).
    victim = next(r for r, (node, _) in sorted(before.items()) if node in OTHER_HOSTS)
    host, pid = before[victim]
    assert pid is not None
    if fault == "kill9":
        os.kill(pid, signal.SIGKILL)
    elif fault == "raykill":
        ray.kill(ray.get_actor(actor_of(store, victim)), no_restart=True)
    elif fault == "node":
        cluster.remove_node(nodes[str(host)], allow_graceful=False)
    elif fault == "hang":
        os.kill(pid, signal.SIGSTOP)
    else:
        raise SystemExit(f"unknown fault {fault!r}")
    thread.join(200)
    # The hung process must not outlive the job (the engine has no pidfd for it: Ray kills it).
    outlived = pid_alive(pid)
    if outlived:
        os.kill(pid, signal.SIGKILL)
    if "error" in outcome or "result" not in outcome:
        return {"error": outcome.get("error", "the job did not end")}
    result = outcome["result"]
    after = read_status(store)
    return {
        "victim": victim,
        "before": {str(r): list(v) for r, v in before.items()},
        "after": {str(r.rank): [r.node, r.pid] for r in after.ranks},
        "addresses": addresses(store),
        "transport": connected(store).get("transport"),
        "outlived": outlived,
        "failures": [{"rank": f["rank"], "why": str(f["why"])} for f in result.failures],
        "recoveries": len(result.recoveries),
        "results": result.results,
        "problems": [
            str(p) for p in check_run(result, app="bank", app_params=PARAMS, topology="complete")
        ],
    }


def log_lines(store: Path) -> list[dict[str, Any]]:
    path = store / "logs" / "supervisor.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def actor_of(store: Path, rank: int) -> str:
    """The Ray actor name of ``rank``'s current actor (the supervisor log says)."""
    spawned = [e for e in log_lines(store) if e["event"] == "spawned" and e["rank"] == rank]
    return str(spawned[-1]["actor"])


def addresses(store: Path) -> dict[str, list[str]]:
    """Every address each rank listened on, in order."""
    seen: dict[str, list[str]] = {}
    for e in log_lines(store):
        if e["event"] == "rank_listens":
            seen.setdefault(str(e["rank"]), []).append(str(e["address"]))
    return seen


def connected(store: Path) -> dict[str, Any]:
    return next(e for e in log_lines(store) if e["event"] == "ray_connected")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
