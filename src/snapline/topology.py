"""Directed topologies: which channels ``src -> dst`` exist in a job."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from snapline.errors import ConfigError

#: Every topology spec ``Topology.parse`` accepts; ``--help`` texts and errors list these.
TOPOLOGY_SPECS: tuple[str, ...] = ("complete", "ring", "bidir-ring", "line", "star", "random:K")


@dataclass(frozen=True, slots=True)
class Topology:
    """``n`` ranks and a set of directed channels ``(src, dst)``, ``src != dst``."""

    n: int
    edges: frozenset[tuple[int, int]]

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ConfigError(f"a job needs at least 1 rank, got n={self.n}")
        for src, dst in self.edges:
            if not (0 <= src < self.n and 0 <= dst < self.n) or src == dst:
                raise ConfigError(f"bad channel {src}->{dst} for n={self.n}")

    def outbound(self, rank: int) -> frozenset[int]:
        """Ranks ``rank`` can send to."""
        return frozenset(d for s, d in self.edges if s == rank)

    def inbound(self, rank: int) -> frozenset[int]:
        """Ranks that can send to ``rank``."""
        return frozenset(s for s, d in self.edges if d == rank)

    @classmethod
    def from_edges(cls, n: int, edges: Iterable[tuple[int, int]]) -> Topology:
        """A topology from an explicit edge list."""
        return cls(n, frozenset(edges))

    @classmethod
    def complete(cls, n: int) -> Topology:
        """Every rank has a channel to every other rank."""
        return cls(n, frozenset((s, d) for s in range(n) for d in range(n) if s != d))

    @classmethod
    def ring(cls, n: int, *, bidirectional: bool = False) -> Topology:
        """``i -> i+1 mod n`` (and back, if bidirectional)."""
        edges = {(i, (i + 1) % n) for i in range(n) if n > 1}
        if bidirectional:
            edges |= {(d, s) for s, d in edges}
        return cls(n, frozenset(edges))

    @classmethod
    def line(cls, n: int) -> Topology:
        """Neighbours ``i <-> i+1`` (a 1-D stencil)."""
        edges = {(i, i + 1) for i in range(n - 1)} | {(i + 1, i) for i in range(n - 1)}
        return cls(n, frozenset(edges))

    @classmethod
    def star(cls, n: int, *, center: int = 0) -> Topology:
        """``center <-> every other rank``."""
        edges = {(center, i) for i in range(n) if i != center}
        edges |= {(i, center) for i in range(n) if i != center}
        return cls(n, frozenset(edges))

    @classmethod
    def random_graph(cls, n: int, *, degree: int, seed: int) -> Topology:
        """A random strongly connected digraph: a ring plus ``degree - 1`` random out-edges."""
        rng = random.Random(seed)
        edges = set(cls.ring(n).edges)
        for s in range(n):
            others = [d for d in range(n) if d != s]
            for d in rng.sample(others, min(len(others), max(0, degree - 1))):
                edges.add((s, d))
        return cls(n, frozenset(edges))

    @classmethod
    def parse(cls, spec: str, n: int, *, seed: int = 0) -> Topology:
        """``complete`` | ``ring`` | ``bidir-ring`` | ``line`` | ``star`` | ``random:K``."""
        if spec == "complete":
            return cls.complete(n)
        if spec == "ring":
            return cls.ring(n)
        if spec == "bidir-ring":
            return cls.ring(n, bidirectional=True)
        if spec == "line":
            return cls.line(n)
        if spec == "star":
            return cls.star(n)
        if spec.startswith("random:"):
            return cls.random_graph(n, degree=int(spec.split(":", 1)[1]), seed=seed)
        raise ConfigError(f"unknown topology {spec!r}: use one of {', '.join(TOPOLOGY_SPECS)}")
