"""A token ring: one token circulates ``messages`` rounds; every rank counts its visits.

Rank 0 injects the token; each rank passes it to its successor -- the smallest outbound
neighbour above its own rank, else the smallest one (the ring ``i -> i+1`` on ring and complete
topologies). The token carries the number of hops made so far. Rank 0 stops the token after it
came back ``messages`` times. Every rank finishes at once: it has no work of its own, and the
job ends when the token stops. Invariants: at a consistent cut there is at most one token in
transit and the visits counted so far add up to the hops it made; at the end rank 0 counted
exactly ``messages`` returns. Deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from snapline.apps.spec import AppSpec, CutView
from snapline.runtime.process import Context, Process, State


def successor(rank: int, outbound: Sequence[int]) -> int:
    """Where ``rank`` passes the token."""
    above = [d for d in outbound if d > rank]
    return min(above) if above else min(outbound)


class TokenRingMember(Process):
    """One member of the ring."""

    def __init__(self, *, rank: int, rounds: int) -> None:
        self.rank = rank
        self.rounds = rounds
        self.visits = 0
        self.last_hop = 0

    def state(self) -> State:
        """Visits counted and the hop count of the last token seen."""
        return {"visits": self.visits, "last_hop": self.last_hop}

    def restore(self, state: State) -> None:
        """Put back the counters."""
        self.visits = int(state["visits"])
        self.last_hop = int(state["last_hop"])

    def on_start(self, ctx: Context) -> None:
        """Rank 0 injects the token; everyone finishes (the token drives the rest)."""
        if self.rank == 0 and self.rounds > 0 and ctx.outbound:
            ctx.send(successor(0, ctx.outbound), 1)
        ctx.finish()

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        """Count a visit and pass the token on, unless it completed its rounds."""
        hop = int(payload)
        self.visits += 1
        self.last_hop = hop
        if self.rank == 0 and self.visits >= self.rounds:
            return
        ctx.send(successor(self.rank, ctx.outbound), hop + 1)

    def result(self) -> object:
        """How many times the token came by."""
        return self.visits


def _factory(rank: int, n: int, params: Mapping[str, Any]) -> Process:
    return TokenRingMember(rank=rank, rounds=int(params["messages"]))


def check_cut(cut: CutView) -> str | None:
    """At most one token; visits so far add up to its hop count."""
    tokens = [int(p) for p in cut.in_transit]  # type: ignore[call-overload]
    if len(tokens) > 1:
        return f"{len(tokens)} tokens in transit"
    visits = sum(int(s["visits"]) for s in cut.states.values())
    if tokens and visits != tokens[0] - 1:
        return f"token in transit after {tokens[0]} hops, but visits add up to {visits}"
    if not tokens:
        last = max((int(s["last_hop"]) for s in cut.states.values()), default=0)
        if visits != last:
            return f"no token in transit, last hop {last}, visits add up to {visits}"
    return None


def check_final(results: Sequence[object], params: Mapping[str, Any], n: int) -> str | None:
    """Rank 0 saw the token come back exactly ``messages`` times."""
    rounds = int(params["messages"])
    if n > 1 and results and results[0] != rounds:
        return f"rank 0 saw the token {results[0]} times, expected {rounds}"
    return None


SPEC = AppSpec(
    name="token-ring",
    description="one token circulates for a number of rounds; visits are counted",
    factory=_factory,
    default_topology="ring",
    deterministic=True,
    params={"messages": 10},
    size_param="messages",
    check_cut=check_cut,
    check_final=check_final,
)
