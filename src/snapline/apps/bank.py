"""A bank: branches move money to each other; the total is conserved.

Every branch starts with ``initial_balance`` and makes ``messages`` transfers, one per timer
tick, each of a random amount (from ``ctx.random``) to a random outbound neighbour. Transfers
are unconditional (balances may go negative), so each branch's outgoing transfers depend only
on its own random stream and the final balances are the same under any schedule: the app is
deterministic. Invariant at every consistent cut: the balances plus the amounts in transit add
up to ``n * initial_balance``. Works on any directed topology; a branch without outbound
channels only receives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from snapline.apps.spec import AppSpec, CutView
from snapline.runtime.process import Context, Process, State


class BankBranch(Process):
    """One branch: a balance and a count of transfers made."""

    def __init__(
        self, *, messages: int, initial_balance: int, max_amount: int, step_s: float
    ) -> None:
        self.messages = messages
        self.max_amount = max_amount
        self.step_s = step_s
        self.balance = initial_balance
        self.transfers = 0

    def state(self) -> State:
        """Balance and transfers made."""
        return {"balance": self.balance, "transfers": self.transfers}

    def restore(self, state: State) -> None:
        """Put back a saved balance."""
        self.balance = int(state["balance"])
        self.transfers = int(state["transfers"])

    def on_start(self, ctx: Context) -> None:
        """Schedule the first transfer, or finish at once when there is nothing to send."""
        if self.messages > 0 and ctx.outbound:
            ctx.set_timer("transfer", self.step_s * (0.5 + ctx.random.random()))
        else:
            ctx.finish()

    def on_timer(self, ctx: Context, name: str) -> None:
        """Move a random amount to a random neighbour."""
        dst = ctx.random.choice(ctx.outbound)
        amount = ctx.random.randint(1, self.max_amount)
        self.balance -= amount
        self.transfers += 1
        ctx.send(dst, amount)
        if self.transfers < self.messages:
            ctx.set_timer("transfer", self.step_s * (0.5 + ctx.random.random()))
        else:
            ctx.finish()

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        """Credit an incoming transfer."""
        self.balance += int(payload)

    def result(self) -> object:
        """The final balance."""
        return self.balance


def _factory(rank: int, n: int, params: Mapping[str, Any]) -> Process:
    return BankBranch(
        messages=int(params["messages"]),
        initial_balance=int(params["initial_balance"]),
        max_amount=int(params["max_amount"]),
        step_s=float(params["step_s"]),
    )


def check_cut(cut: CutView) -> str | None:
    """Money is conserved: balances plus transfers in transit equal the initial total."""
    total = sum(int(s["balance"]) for s in cut.states.values())
    in_transit = sum(int(p) for p in cut.in_transit)  # type: ignore[call-overload]
    expected = cut.n * int(cut.params["initial_balance"])
    if total + in_transit != expected:
        return f"bank total not conserved: balances {total} + in transit {in_transit} != {expected}"
    return None


def check_final(results: Sequence[object], params: Mapping[str, Any], n: int) -> str | None:
    """At the end nothing is in transit, so the balances alone add up to the total."""
    total = sum(int(r) for r in results)  # type: ignore[call-overload]
    expected = n * int(params["initial_balance"])
    if total != expected:
        return f"bank final balances sum to {total}, expected {expected}"
    return None


SPEC = AppSpec(
    name="bank",
    description="random transfers between branches; the total is conserved",
    factory=_factory,
    default_topology="complete",
    deterministic=True,
    params={"messages": 20, "initial_balance": 1000, "max_amount": 100, "step_s": 1.0},
    size_param="messages",
    check_cut=check_cut,
    check_final=check_final,
)
