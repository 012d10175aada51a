"""Pure helpers on a job's directed channel graph, shared by the coordinated protocols.

``topology.py`` cannot be used from ``protocols/`` (it imports ``random`` for random graphs),
so the graph questions protocols ask -- can a control wave started at a rank reach every
rank, and which neighbour leads to a rank? -- live here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

#: Checkpoint indices of incarnation k start at ``k << INDEX_INCARNATION_SHIFT``, so a restored
#: rank never reuses an index its previous incarnation wrote.
INDEX_INCARNATION_SHIFT = 32


def first_hops(edges: Iterable[tuple[int, int]], start: int) -> dict[int, int]:
    """For every rank reachable from ``start``, the first hop of a shortest path to it.

    Breadth-first along the directed ``edges``, smaller ranks first, so every rank that asks
    computes the same paths.
    """
    successors: dict[int, list[int]] = {}
    for src, dst in edges:
        successors.setdefault(src, []).append(dst)
    hops: dict[int, int] = {}
    frontier: deque[int] = deque()
    for dst in sorted(successors.get(start, ())):
        if dst != start and dst not in hops:
            hops[dst] = dst
            frontier.append(dst)
    while frontier:
        node = frontier.popleft()
        for nxt in sorted(successors.get(node, ())):
            if nxt != start and nxt not in hops:
                hops[nxt] = hops[node]
                frontier.append(nxt)
    return hops


def reaches_all(n: int, edges: Iterable[tuple[int, int]], start: int) -> bool:
    """True iff every rank can be reached from ``start`` along the directed ``edges``."""
    return n <= 1 or len(first_hops(edges, start)) == n - 1
