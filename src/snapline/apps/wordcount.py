"""Keyed streaming word count: sources emit words, counters own keys by hash.

Every rank is a source and a counter. As a source it emits ``messages`` words from a seeded
Zipf-like stream (``ctx.random``), one per timer tick; each word goes to its owner among the
rank itself and its outbound neighbours, chosen by a stable hash of the word (CRC-32), and a
word the rank owns is counted locally. As a counter it adds up the words it receives. The
final counts are exact and schedule-independent (deterministic). Invariant at every consistent
cut: words counted plus words in transit equal words emitted.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from snapline.apps.spec import AppSpec, CutView
from snapline.runtime.process import Context, Process, State


def owner(word: str, rank: int, outbound: Sequence[int]) -> int:
    """The rank that counts ``word`` when ``rank`` emits it."""
    candidates = sorted({rank, *outbound})
    return candidates[zlib.crc32(word.encode()) % len(candidates)]


class WordCounter(Process):
    """A source and a counter."""

    def __init__(self, *, rank: int, messages: int, vocabulary: int, step_s: float) -> None:
        self.rank = rank
        self.messages = messages
        self.step_s = step_s
        self.words = [f"w{i}" for i in range(vocabulary)]
        # Zipf-like weights: word i is (i + 1) times rarer than word 0.
        total = 0.0
        self.cum_weights: list[float] = []
        for i in range(vocabulary):
            total += 1.0 / (i + 1)
            self.cum_weights.append(total)
        self.emitted = 0
        self.counts: dict[str, int] = {}

    def state(self) -> State:
        """Words emitted and counts so far."""
        return {"emitted": self.emitted, "counts": dict(self.counts)}

    def restore(self, state: State) -> None:
        """Put back the counters."""
        self.emitted = int(state["emitted"])
        self.counts = {str(k): int(v) for k, v in state["counts"].items()}

    def on_start(self, ctx: Context) -> None:
        """Start emitting."""
        if self.messages > 0:
            ctx.set_timer("emit", self.step_s * (0.5 + ctx.random.random()))
        else:
            ctx.finish()

    def on_timer(self, ctx: Context, name: str) -> None:
        """Emit one word to its owner."""
        word = ctx.random.choices(self.words, cum_weights=self.cum_weights)[0]
        self.emitted += 1
        dst = owner(word, self.rank, ctx.outbound)
        if dst == self.rank:
            self._count(word)
        else:
            ctx.send(dst, word)
        if self.emitted < self.messages:
            ctx.set_timer("emit", self.step_s * (0.5 + ctx.random.random()))
        else:
            ctx.finish()

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        """Count a word routed here."""
        self._count(str(payload))

    def _count(self, word: str) -> None:
        self.counts[word] = self.counts.get(word, 0) + 1

    def result(self) -> object:
        """The counts of the words this rank owns (sorted by word)."""
        return dict(sorted(self.counts.items()))


def _factory(rank: int, n: int, params: Mapping[str, Any]) -> Process:
    return WordCounter(
        rank=rank,
        messages=int(params["messages"]),
        vocabulary=int(params["vocabulary"]),
        step_s=float(params["step_s"]),
    )


def check_cut(cut: CutView) -> str | None:
    """Words counted plus words in transit equal words emitted."""
    emitted = sum(int(s["emitted"]) for s in cut.states.values())
    counted = sum(sum(int(c) for c in s["counts"].values()) for s in cut.states.values())
    if counted + len(cut.in_transit) != emitted:
        return (
            f"word count off: counted {counted} + in transit {len(cut.in_transit)} "
            f"!= emitted {emitted}"
        )
    return None


def check_final(results: Sequence[object], params: Mapping[str, Any], n: int) -> str | None:
    """Every emitted word was counted exactly once."""
    counted = 0
    for counts in results:
        assert isinstance(counts, dict)
        counted += sum(int(c) for c in counts.values())
    expected = n * int(params["messages"])
    if counted != expected:
        return f"counted {counted} words, {expected} were emitted"
    return None


SPEC = AppSpec(
    name="wordcount",
    description="keyed streaming word count; sources route words to counters by hash",
    factory=_factory,
    default_topology="complete",
    deterministic=True,
    params={"messages": 20, "vocabulary": 50, "step_s": 1.0},
    size_param="messages",
    check_cut=check_cut,
    check_final=check_final,
)
