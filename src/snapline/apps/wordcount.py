"""Keyed streaming word count: input splits emit words, counters own words by key group.

Every rank is a source and a counter. The input is ``splits`` independent splits (like the
partitions of a log), each a deterministic Zipf-like stream of ``messages`` words: word ``j``
of split ``s`` depends on ``(s, j)`` only. A split and its offset (how many words it has
emitted) are keyed state, as is the count of each word; so the job can resume on another
number of ranks (``snapline run wordcount --resume -n M``) and still count every word once.

At the start of a job rank ``r`` reads split ``r`` (``splits`` = 0, the default, means one
split per rank of the first run; ``run`` pins it then). Each timer tick a rank emits the next
word of one of its splits, round robin, and sends it to the word's owner: with a complete
topology, the rank owning the word's key group (``snapline.runtime.keyed``); with another
topology, the owner among the rank itself and its outbound neighbours by a stable hash
(``owner``: such a job cannot resize). A word the rank owns is counted locally. The final
counts are exact and schedule-independent. Invariant at every consistent cut: words counted
plus words in transit equal words emitted.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from snapline.apps.spec import AppSpec, CutView
from snapline.runtime import keyed
from snapline.runtime.keyed import Key, KeyedProcess
from snapline.runtime.process import Context, Process, State

_SPLIT = "split:"


def owner(word: str, rank: int, outbound: Sequence[int]) -> int:
    """The rank that counts ``word`` when ``rank`` emits it on a topology that is not complete."""
    candidates = sorted({rank, *outbound})
    return candidates[zlib.crc32(word.encode()) % len(candidates)]


class WordCounter(KeyedProcess):
    """Sources (input splits with offsets) and counters (word -> count), all keyed."""

    def __init__(
        self,
        *,
        rank: int,
        n: int,
        messages: int,
        vocabulary: int,
        step_s: float,
        splits: int,
        key_groups: int,
    ) -> None:
        self.rank = rank
        self.messages = messages
        self.step_s = step_s
        self.key_groups = key_groups
        keyed.check_parallelism(n, key_groups)
        self.words = [f"w{i}" for i in range(vocabulary)]
        # Zipf-like weights: word i is (i + 1) times rarer than word 0.
        total = 0.0
        self.cum_weights: list[float] = []
        for i in range(vocabulary):
            total += 1.0 / (i + 1)
            self.cum_weights.append(total)
        #: split -> words emitted from it so far.
        # Rank r starts with splits r, r + n, r + 2n, ...
        self.offsets: dict[int, int] = {s: 0 for s in range(rank, splits or n, n)}
        self.counts: dict[str, int] = {}
        #: Round robin over the splits: not keyed (a resize restarts it), but checkpointed,
        #: so that a replay re-executes exactly.
        self.turn = 0

    # ---------------------------------------------------------------- state

    def keyed_state(self) -> dict[Key, State]:
        """Word counts under the words, split offsets under ``split:<s>``."""
        items: dict[Key, State] = {f"{_SPLIT}{s}": off for s, off in self.offsets.items()}
        items.update(self.counts)
        return items

    def restore_keyed(self, items: Mapping[Key, State]) -> None:
        """Take the splits and words of this rank's key groups."""
        self.offsets = {}
        self.counts = {}
        for key, value in items.items():
            text = str(key)
            if text.startswith(_SPLIT):
                self.offsets[int(text[len(_SPLIT) :])] = int(value)
            else:
                self.counts[text] = int(value)

    def message_key(self, payload: object) -> Key:
        """A message is one word; its key is the word."""
        return str(payload)

    def state(self) -> State:
        """Split offsets, words emitted and counts so far."""
        return {
            "emitted": sum(self.offsets.values()),
            "splits": {str(s): off for s, off in self.offsets.items()},
            "counts": dict(self.counts),
            "turn": self.turn,
        }

    def restore(self, state: State) -> None:
        """Put back the splits and counters."""
        self.offsets = {int(s): int(off) for s, off in state["splits"].items()}
        self.counts = {str(k): int(v) for k, v in state["counts"].items()}
        self.turn = int(state["turn"])

    # ---------------------------------------------------------------- handlers

    def on_start(self, ctx: Context) -> None:
        """Start emitting (also after a resize: the splits know where they stopped)."""
        if self._pending():
            ctx.set_timer("emit", self.step_s * (0.5 + ctx.random.random()))
        else:
            ctx.finish()

    def on_timer(self, ctx: Context, name: str) -> None:
        """Emit the next word of one split to its owner."""
        pending = self._pending()
        split = pending[self.turn % len(pending)]
        self.turn += 1
        offset = self.offsets[split]
        word = self.word_at(split, offset)
        self.offsets[split] = offset + 1
        dst = self._owner(ctx, word)
        if dst == self.rank:
            self._count(word)
        else:
            ctx.send(dst, word)
        if self._pending():
            ctx.set_timer("emit", self.step_s * (0.5 + ctx.random.random()))
        else:
            ctx.finish()

    def on_message(self, ctx: Context, src: int, payload: Any) -> None:
        """Count a word routed here."""
        self._count(str(payload))

    def result(self) -> object:
        """The counts of the words this rank owns (sorted by word)."""
        return dict(sorted(self.counts.items()))

    # ---------------------------------------------------------------- helpers

    def word_at(self, split: int, offset: int) -> str:
        """Word ``offset`` of split ``split``: the same in every run, on any number of ranks."""
        draw = random.Random(split * 1_000_003 + offset).random() * self.cum_weights[-1]
        lo, hi = 0, len(self.cum_weights) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.cum_weights[mid] < draw:
                lo = mid + 1
            else:
                hi = mid
        return self.words[lo]

    def _pending(self) -> list[int]:
        return sorted(s for s, off in self.offsets.items() if off < self.messages)

    def _owner(self, ctx: Context, word: str) -> int:
        if len(ctx.outbound) == ctx.n - 1:
            return keyed.owner(word, ctx.n, self.key_groups)
        return owner(word, self.rank, ctx.outbound)

    def _count(self, word: str) -> None:
        self.counts[word] = self.counts.get(word, 0) + 1


def _factory(rank: int, n: int, params: Mapping[str, Any]) -> Process:
    return WordCounter(
        rank=rank,
        n=n,
        messages=int(params["messages"]),
        vocabulary=int(params["vocabulary"]),
        step_s=float(params["step_s"]),
        splits=int(params["splits"]),
        key_groups=int(params["key_groups"]),
    )


def _pin_params(params: Mapping[str, Any], n: int) -> dict[str, Any]:
    # The number of splits is fixed when a job starts: a resumed job on another -n keeps it.
    pinned = dict(params)
    if not int(pinned.get("splits", 0)):
        pinned["splits"] = n
    return pinned


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
    expected = (int(params.get("splits", 0)) or n) * int(params["messages"])
    if counted != expected:
        return f"counted {counted} words, {expected} were emitted"
    return None


SPEC = AppSpec(
    name="wordcount",
    description="keyed streaming word count; input splits route words to counters by key",
    factory=_factory,
    default_topology="complete",
    deterministic=True,
    params={
        "messages": 20,
        "vocabulary": 50,
        "step_s": 1.0,
        "splits": 0,
        "key_groups": keyed.DEFAULT_KEY_GROUPS,
    },
    size_param="messages",
    check_cut=check_cut,
    check_final=check_final,
    pin_params=_pin_params,
)
