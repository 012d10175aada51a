"""Large messages across a real kill -9: recovery must finish and lose nothing.

Ranks exchange numpy float64 arrays all-to-all (20,000-50,000 elements, 160-400 KB, per
message; one message of 64 MiB in one test), so every channel write and every recovery control
message (a restore's replay, a frozen rank's volatile record, a resume's re-arrivals) is far
larger than a socket buffer. A rank is killed with SIGKILL from this test, timed on what the
ranks wrote to their trace (a given message delivered), and the run must end with exactly the
failure-free result and pass the channel checker. A sweep over every protocol, ranks and kill
points runs behind ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from snapline.protocols import protocol_names
from snapline.runtime.local import RunResult, read_status, run
from snapline.runtime.local.verify import check_channels
from snapline.runtime.process import Context, Process

pytestmark = pytest.mark.timeout(240)

APP = f"{Path(__file__).resolve()}:AllToAll"


def message_size(it: int, src: int, dst: int, *, low: int, high: int, big: tuple[int, int]) -> int:
    """Elements of the array ``src`` sends ``dst`` in iteration ``it`` (``big``: (it, size))."""
    if (it, src, dst) == (big[0], 0, 1):
        return big[1]
    return low + (it * 7919 + src * 104729 + dst * 1299709) % (high - low + 1)


def message(it: int, src: int, size: int) -> np.ndarray:
    return np.arange(size, dtype=np.float64) * (src + 1) + it


class AllToAll(Process):
    """Each iteration every rank sends every other rank an array and waits for theirs.

    Arrays that arrive early (a faster peer's next iteration) wait in ``inbox``; iterations
    are paced by a timer so that checkpoints and the kill fall between them.
    """

    def __init__(
        self,
        rank: int,
        n: int,
        iterations: int = 30,
        low: int = 20_000,
        high: int = 50_000,
        step_s: float = 0.02,
        big_at: int = -1,
        big_size: int = 0,
    ) -> None:
        self.rank, self.n = rank, n
        self.iterations, self.low, self.high, self.step_s = iterations, low, high, step_s
        self.big = (big_at, big_size)
        self.it = 0
        self.sleeping = False
        self.acc = [0.0] * n
        self.inbox: dict[int, dict[int, np.ndarray]] = {}

    def state(self) -> object:
        inbox = {str(i): {str(s): a for s, a in got.items()} for i, got in self.inbox.items()}
        return {"it": self.it, "sleeping": self.sleeping, "acc": list(self.acc), "inbox": inbox}

    def restore(self, state: Any) -> None:
        self.it, self.sleeping = int(state["it"]), bool(state["sleeping"])
        self.acc = [float(x) for x in state["acc"]]
        self.inbox = {
            int(i): {int(s): a for s, a in got.items()} for i, got in state["inbox"].items()
        }

    def _size(self, it: int, src: int, dst: int) -> int:
        return message_size(it, src, dst, low=self.low, high=self.high, big=self.big)

    def _send_round(self, ctx: Context) -> None:
        for dst in range(self.n):
            if dst != self.rank:
                size = self._size(self.it, self.rank, dst)
                ctx.send(dst, [self.it, message(self.it, self.rank, size)])

    def on_start(self, ctx: Context) -> None:
        self._send_round(ctx)

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        it, arr = int(payload[0]), payload[1]
        expected = message(it, src, self._size(it, src, self.rank))
        if not np.array_equal(arr, expected):
            raise AssertionError(f"rank {self.rank}: corrupt array from {src} in iteration {it}")
        self.inbox.setdefault(it, {})[src] = arr
        self._advance(ctx)

    def on_timer(self, ctx: Context, name: str) -> None:
        self.sleeping = False
        self._send_round(ctx)
        self._advance(ctx)

    def _advance(self, ctx: Context) -> None:
        while (
            not self.sleeping
            and self.it < self.iterations
            and len(self.inbox.get(self.it, {})) == self.n - 1
        ):
            for src, arr in self.inbox.pop(self.it).items():
                self.acc[src] += float(arr.sum())
            self.it += 1
            if self.it < self.iterations:
                self.sleeping = True
                ctx.set_timer("next", self.step_s)
        if self.it >= self.iterations:
            ctx.finish()

    def result(self) -> object:
        return {"it": self.it, "acc": self.acc}


def failure_free(n: int, options: dict[str, Any]) -> dict[int, object]:
    """The results of a run without failures, computed directly."""
    low, high = options.get("low", 20_000), options.get("high", 50_000)
    big = (options.get("big_at", -1), options.get("big_size", 0))
    iterations = options["iterations"]
    results: dict[int, object] = {}
    for rank in range(n):
        acc = [0.0] * n
        for it in range(iterations):
            for src in range(n):
                if src != rank:
                    size = message_size(it, src, rank, low=low, high=high, big=big)
                    acc[src] += float(message(it, src, size).sum())
        results[rank] = {"it": iterations, "acc": acc}
    return results


class JobThread(threading.Thread):
    """Runs ``snapline.run`` (supervisor in this process, ranks as real child processes)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(daemon=True)
        self.kwargs = kwargs
        self.result: RunResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = run(**self.kwargs)
        except BaseException as exc:  # handed to the test thread
            self.error = exc

    def outcome(self, timeout_s: float) -> RunResult:
        self.join(timeout_s)
        assert not self.is_alive(), "the job did not finish (nor fail) in time"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def kill_after_delivery(store: Path, job: JobThread, rank: int, src: int, seq: int) -> int:
    """kill -9 ``rank`` once its trace shows message ``seq`` from ``src`` delivered."""
    trace = store / "trace" / f"rank-{rank}.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert job.is_alive(), "the job ended before the kill"
        if trace.exists():
            for line in trace.read_text().splitlines():
                event = json.loads(line)
                if event["kind"] == "deliver" and (event["src"], event["seq"]) == (src, seq):
                    pid = next(r.pid for r in read_status(store).ranks if r.rank == rank)
                    assert pid is not None
                    os.kill(pid, signal.SIGKILL)
                    return pid
        time.sleep(0.01)
    raise AssertionError(f"rank {rank} never delivered message {seq} from {src}")


def run_with_kill(
    tmp_path: Path,
    protocol: str,
    options: dict[str, Any],
    *,
    victim: int,
    after: tuple[int, int],
    heartbeat_timeout: str = "3s",
) -> RunResult:
    n = 4 if "n" not in options else int(options.pop("n"))
    store = tmp_path / "job"
    job = JobThread(
        app=APP,
        n=n,
        store=store,
        protocol=protocol,
        interval="0.3s",
        app_options=options,
        max_restarts=3,
        heartbeat_timeout=heartbeat_timeout,
        timeout="200s",
    )
    job.start()
    kill_after_delivery(store, job, victim, *after)
    result = job.outcome(220.0)
    assert result.restarts >= 1, "the kill was not recovered from (it came after the end?)"
    assert result.violations == []
    assert result.results == failure_free(n, options)
    assert check_channels(result) is None
    return result


@pytest.mark.parametrize("protocol", ["message-logging", "chandy-lamport", "fdas"])
def test_all_to_all_large_arrays_recover_from_kill(tmp_path: Path, protocol: str) -> None:
    # Rank 2 dies after delivering rank 0's 6th array: mid-run, with 160-400 KB messages in
    # every socket, in logs, in recorded channel state and in retransmission buffers.
    options = {"iterations": 16 if protocol == "fdas" else 24}
    run_with_kill(tmp_path, protocol, options, victim=2, after=(0, 6))


def test_a_64_mib_message_survives_its_receivers_kill(tmp_path: Path) -> None:
    # Message logging: rank 1 logs the 64 MiB array before delivering it, so its replacement
    # gets it back in the restore's replay; rank 0 also holds it in its retransmission buffer
    # (its frozen reply) until rank 1 acknowledges it.
    # Copying, hashing and fsyncing 64 MiB several times on a loaded machine takes seconds of
    # a rank's loop: that is work, not a hang, so hang detection gets room for it here.
    options = {"n": 2, "iterations": 8, "big_at": 3, "big_size": 8 * 1024 * 1024}
    run_with_kill(
        tmp_path, "message-logging", options, victim=1, after=(0, 4), heartbeat_timeout="20s"
    )


@pytest.mark.slow
@pytest.mark.parametrize("protocol", [p for p in protocol_names() if p != "none"])
@pytest.mark.parametrize(("victim", "after"), [(2, (0, 3)), (0, (1, 9)), (3, (2, 15))])
def test_sweep_large_arrays_every_protocol(
    tmp_path: Path, protocol: str, victim: int, after: tuple[int, int]
) -> None:
    run_with_kill(tmp_path, protocol, {"iterations": 20}, victim=victim, after=after)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["chandy-lamport", "fdas", "uncoordinated", "two-phase"])
def test_sweep_64_mib_message(tmp_path: Path, protocol: str) -> None:
    options = {"n": 2, "iterations": 8, "big_at": 3, "big_size": 8 * 1024 * 1024}
    run_with_kill(tmp_path, protocol, options, victim=1, after=(0, 4), heartbeat_timeout="20s")
