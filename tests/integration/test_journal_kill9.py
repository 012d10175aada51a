"""Acknowledged journal operations survive ``kill -9`` of a real writer process.

A child process opens a key-value journal (checkpointer thread on, small segments, so kills
also land in rolls, merges and retention) and appends from four threads; after each
acknowledged append it writes ``thread seq`` to its stdout pipe. The parent kills it with
SIGKILL at a random moment, reopens the journal and checks:

* every acknowledged op is in the recovered state (per thread, the recovered ops are a prefix
  at least as long as the acknowledged one; each thread has at most two ops in flight);
* the state equals replaying *exactly* a prefix of the issued ops: per thread, the thread's keys
  equal its op stream's prefix, and the journal's last txid equals the sum of the prefixes (no
  op lost, none duplicated, none invented).

The next child continues each thread's op stream where the recovered prefix ends.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from snapline.errors import JournalError
from snapline.journal import KEY_VALUE, JournalConfig, JournalWarning, open_journal

THREADS = 4
PREFIX_CHECKED = 20_000

# Shared by the child (as source) and the parent: op ``seq`` of thread ``t``.
OP_SOURCE = """
def op_for(t, seq):
    if seq % 3 == 2:
        return {"op": "delete", "key": f"{t}:{seq - 2}"}
    return {"op": "set", "key": f"{t}:{seq}", "value": [seq, "x" * (seq % 17)]}
"""

CHILD = (
    OP_SOURCE
    + """
import os, sys, threading
from snapline.journal import KEY_VALUE, JournalConfig, open_journal

directory, starts = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
config = JournalConfig(
    checkpoint_period_s=0.03, checkpoint_every_ops=150, images_kept=2, segment_bytes_max=8192
)
journal = open_journal(directory, KEY_VALUE, config)

def work(t):
    seq = starts[t]
    while True:
        if t == 3:  # one thread appends pairs through the batch API
            journal.append_batch([op_for(t, seq), op_for(t, seq + 1)])
            os.write(1, f"{t} {seq}\\n{t} {seq + 1}\\n".encode())
            seq += 2
        else:
            journal.append(op_for(t, seq))
            os.write(1, f"{t} {seq}\\n".encode())
            seq += 1

os.write(1, b"ready\\n")
for t in range(THREADS_N):
    threading.Thread(target=work, args=(t,), daemon=True).start()
threading.Event().wait()
""".replace("THREADS_N", str(THREADS))
)

_ns: dict[str, Any] = {}
exec(OP_SOURCE, _ns)
op_for = _ns["op_for"]


def _thread_state(t: int, length: int) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for seq in range(length):
        KEY_VALUE.apply(state, op_for(t, seq))
    return state


def _recover(directory: Path) -> tuple[dict[str, Any], int]:
    manual = JournalConfig(checkpointer="off", checkpoint_period_s=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", JournalWarning)  # torn tails are expected here
        with open_journal(directory, KEY_VALUE, manual) as journal:
            return dict(journal.state), journal.recovery.last_txid


def test_acknowledged_ops_survive_kill_9(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    directory = tmp_path / "journal"
    prefix = [0] * THREADS  # recovered ops per thread so far
    acked_total = 0
    for round_ in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(directory), ",".join(map(str, prefix))],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n", f"child did not start (seed {seed})"
            time.sleep(rng.uniform(0.0, 0.15))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            out, _ = child.communicate()
        assert child.returncode == -signal.SIGKILL
        acked = list(prefix)
        for line in out.decode().splitlines():
            t, seq = map(int, line.split())
            acked[t] = max(acked[t], seq + 1)
            acked_total += 1
        state, last_txid = _recover(directory)
        context = f"seed {seed}, round {round_}"
        for t in range(THREADS):
            mine = {k: v for k, v in state.items() if k.startswith(f"{t}:")}
            matches = [n for n in range(acked[t], acked[t] + 3) if _thread_state(t, n) == mine]
            assert matches, f"thread {t}: state is no prefix >= acked {acked[t]} ({context})"
            # Every prefix of an op stream gives a different state (checked in the test
            # below), so the recovered prefix is known exactly.
            assert len(matches) == 1 and matches[0] < PREFIX_CHECKED
            prefix[t] = matches[0]
        assert last_txid == sum(prefix), f"log holds other ops than the prefixes ({context})"
    assert acked_total > 100, f"too few ops were acknowledged to test anything (seed {seed})"


def test_every_prefix_of_an_op_stream_gives_a_different_state() -> None:
    # Distinct fingerprints imply distinct states; the fingerprint (number of keys, sum and
    # sum of squares of the key numbers) is kept up to date incrementally to stay linear.
    seen: set[tuple[int, int, int]] = set()
    state: dict[str, Any] = {}
    count = total = squares = 0
    for seq in range(PREFIX_CHECKED):
        op = op_for(0, seq)
        number = int(op["key"].split(":")[1])
        if op["op"] == "set" and op["key"] not in state:
            count, total, squares = count + 1, total + number, squares + number * number
        elif op["op"] == "delete" and op["key"] in state:
            count, total, squares = count - 1, total - number, squares - number * number
        KEY_VALUE.apply(state, op)
        fingerprint = (count, total, squares)
        assert fingerprint not in seen, seq
        seen.add(fingerprint)


def test_a_writer_in_another_process_locks_out_this_one(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    holder = (
        "import sys\nfrom snapline.journal import KEY_VALUE, JournalConfig, open_journal\n"
        "j = open_journal(sys.argv[1], KEY_VALUE, JournalConfig(checkpointer='off'))\n"
        "print('open', flush=True)\nsys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", holder, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"open\n"
        with pytest.raises(JournalError, match=rf"already open for writing.*pid {child.pid}"):
            open_journal(directory, KEY_VALUE, JournalConfig(checkpointer="off"))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate()
    _recover(directory)  # the kernel released the lock of the killed writer
