"""Two-phase sender log: how much of it checkpoints carry, with and without pruning.

Every two-phase checkpoint stores the rank's sender log in its meta (recovery re-delivers
in-transit messages from it). Without pruning the log holds every message the rank ever sent;
pruned at the receivers' committed checkpoints it holds about two checkpoint intervals of
messages. This runs one simulated job (no crash) twice -- with pruning switched off, then on --
and reports the longest log stored in a checkpoint, the total meta bytes of the stored
checkpoints and the log entries held at the end. Prints a table and writes
``bench/results/two_phase_log.json``.

    python bench/two_phase_log_bench.py                  # bank, 8 ranks x 200 messages each
    python bench/two_phase_log_bench.py --app chatter --ranks 16 --messages 500
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgpack

from snapline.protocols.coordinated_two_phase import TwoPhaseCoordinated
from snapline.runtime.sim import SimConfig
from snapline.runtime.sim.driver import Simulator


class Unpruned(TwoPhaseCoordinated):
    """Two-phase with the sender log never pruned (how it was before pruning)."""

    def _prune_log(self, dst: int, acked: int) -> None:
        return


def measure(cls: type[TwoPhaseCoordinated], args: argparse.Namespace) -> dict[str, Any]:
    """Run the job under ``cls`` and measure the logs it stored."""
    config = SimConfig(
        app=args.app,
        protocol="two-phase",
        protocol_cls=cls,
        n=args.ranks,
        seed=args.seed,
        interval_s=args.interval_s,
        app_params={"messages": args.messages, "step_s": 0.2},
        reference=False,
    )
    sim = Simulator(config)
    _, stats, _, _ = sim.run()
    metas = [c.image.record.meta for ckpts in sim.storage.checkpoints for c in ckpts.values()]
    return {
        "pruned": cls is TwoPhaseCoordinated,
        "messages_sent": stats["messages_sent"],
        "checkpoints": len(metas),
        "longest_log_in_a_checkpoint": max(
            (sum(len(v) for v in m["log"].values()) for m in metas), default=0
        ),
        "meta_bytes": sum(len(msgpack.packb(m, use_bin_type=True)) for m in metas),
        "log_entries_at_end": sum(
            e.protocol.sender_log_entries()  # type: ignore[attr-defined]
            for e in sim.engines
            if e is not None
        ),
    }


def main() -> None:
    """Measure without and with pruning; print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="bank")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--interval-s", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(cls, args) for cls in (Unpruned, TwoPhaseCoordinated)]
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(str(row[k]) for k in keys))
    out = Path(__file__).parent / "results" / "two_phase_log.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
