"""Chatter: ranks message random neighbours and output every send and every receipt.

Every rank makes ``messages`` sends, one per timer tick (delays from ``ctx.random``), each to a
random outbound neighbour, with payload ``[src, k]`` (``k`` counts the sender's sends from 1).
It outputs ``["sent", dst, k]`` for each send and ``["got", src, k]`` for each receipt. Which
messages a rank receives is fixed by the seed, but in which order depends on the schedule, so
a re-execution after a rollback may produce the same outputs in another order under the same
output ids: the app exists to exercise output commit (released output must be neither repeated
nor lost). Each rank's outputs are deterministic as a multiset, and so are the results (counts
and a checksum of what was received). Invariant at every consistent cut: the sends made equal
the receipts plus the messages in transit. Works on any directed topology; a rank without
outbound channels only receives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from snapline.apps.spec import AppSpec, CutView
from snapline.runtime.process import Context, Process, State


class Chatterer(Process):
    """One rank: counts of sends and receipts, and a checksum of what it received."""

    def __init__(self, *, messages: int, step_s: float) -> None:
        self.messages = messages
        self.step_s = step_s
        self.sent = 0
        self.got = 0
        self.checksum = 0

    def state(self) -> State:
        """Sends made, receipts, checksum of the receipts."""
        return {"sent": self.sent, "got": self.got, "checksum": self.checksum}

    def restore(self, state: State) -> None:
        """Put back the counters."""
        self.sent = int(state["sent"])
        self.got = int(state["got"])
        self.checksum = int(state["checksum"])

    def on_start(self, ctx: Context) -> None:
        """Schedule the first send, or finish at once when there is nothing to send."""
        if self.messages > 0 and ctx.outbound:
            ctx.set_timer("send", self.step_s * (0.5 + ctx.random.random()))
        else:
            ctx.finish()

    def on_timer(self, ctx: Context, name: str) -> None:
        """Send to a random neighbour and output the send."""
        dst = ctx.random.choice(ctx.outbound)
        self.sent += 1
        ctx.send(dst, [ctx.rank, self.sent])
        ctx.output(["sent", dst, self.sent])
        if self.sent < self.messages:
            ctx.set_timer("send", self.step_s * (0.5 + ctx.random.random()))
        else:
            ctx.finish()

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        """Count the receipt and output it."""
        sender, k = int(payload[0]), int(payload[1])
        self.got += 1
        # Order-independent: the same set of receipts gives the same checksum.
        self.checksum += (sender + 1) * 1_000_003 + k
        ctx.output(["got", src, k])

    def result(self) -> object:
        """Sends, receipts and the receipts' checksum."""
        return {"sent": self.sent, "got": self.got, "checksum": self.checksum}


def _factory(rank: int, n: int, params: Mapping[str, Any]) -> Process:
    return Chatterer(messages=int(params["messages"]), step_s=float(params["step_s"]))


def check_cut(cut: CutView) -> str | None:
    """Every send made is received or in transit."""
    sent = sum(int(s["sent"]) for s in cut.states.values())
    got = sum(int(s["got"]) for s in cut.states.values())
    if sent != got + len(cut.in_transit):
        return f"chatter: {sent} sends made, {got} received + {len(cut.in_transit)} in transit"
    return None


def check_final(results: Sequence[object], params: Mapping[str, Any], n: int) -> str | None:
    """At the end every send was received."""
    counts = [(int(r["sent"]), int(r["got"])) for r in results]  # type: ignore[index]
    sent = sum(s for s, _ in counts)
    got = sum(g for _, g in counts)
    if sent != got:
        return f"chatter: {sent} sends made but {got} received at the end"
    return None


SPEC = AppSpec(
    name="chatter",
    description="random messages; every send and receipt is output (exercises output commit)",
    factory=_factory,
    default_topology="complete",
    deterministic=True,
    params={"messages": 20, "step_s": 1.0},
    size_param="messages",
    check_cut=check_cut,
    check_final=check_final,
    outputs_deterministic=True,
)
