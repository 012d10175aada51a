"""Blocking time and bytes stored: the costs `snapline compare` reports per protocol."""

from __future__ import annotations

import numpy as np

from snapline.protocols.base import initial_record
from snapline.runtime.engine import CheckpointImage
from snapline.runtime.sim import SimConfig, run_simulation
from snapline.runtime.sim.storage import checkpoint_size_bytes


def _run(protocol: str) -> dict[str, object]:
    config = SimConfig(app="bank", n=4, protocol=protocol, seed=3, interval_s=2.0)
    return run_simulation(config).stats


def test_blocking_protocol_reports_blocking_time_and_non_blocking_does_not() -> None:
    blocking = _run("two-phase")
    assert float(blocking["blocking_s"]) > 0  # type: ignore[arg-type]
    assert float(_run("chandy-lamport")["blocking_s"]) == 0  # type: ignore[arg-type]


def test_bytes_stored_counts_persisted_checkpoints() -> None:
    assert _run("none")["bytes_stored"] == 0
    stats = _run("uncoordinated")
    assert int(stats["checkpoints_basic"]) > 0  # type: ignore[call-overload]
    assert int(stats["bytes_stored"]) > 0  # type: ignore[call-overload]
    assert stats["unsized_checkpoints"] == 0


def test_checkpoint_size_counts_array_bytes() -> None:
    small = CheckpointImage(record=initial_record(0), state={"a": np.zeros(10)}, extras={})
    big = CheckpointImage(record=initial_record(0), state={"a": np.zeros(1000)}, extras={})
    small_size, big_size = checkpoint_size_bytes(small), checkpoint_size_bytes(big)
    assert small_size is not None and big_size is not None
    assert big_size - small_size == 990 * 8
    unencodable = CheckpointImage(record=initial_record(0), state={"a": object()}, extras={})
    assert checkpoint_size_bytes(unencodable) is None
