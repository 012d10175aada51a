"""Pure helpers on a job's directed channel graph, shared by the protocols.

``topology.py`` cannot be used from ``protocols/`` (it imports ``random`` for random graphs),
so the graph questions protocols ask -- can a control wave started at a rank reach every
rank, which neighbour leads to a rank, how do reports reach one collector rank and its answers
come back? -- live here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from snapline.errors import ConfigError

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


@dataclass(frozen=True, slots=True)
class CollectorRoutes:
    """Shortest paths between every rank and one collector rank, the same at every rank.

    ``up[r]``: the next hop from ``r`` on a shortest path to the collector (ranks that cannot
    reach it are missing). ``down[d]``: the ranks of a shortest path from the collector to
    ``d``, the collector left out and ``d`` last (ranks it cannot reach are missing). The down
    paths form one breadth-first tree, so a rank on the path to ``d`` finds its next hop at
    its own depth in ``down[d]``: every rank forwards an answer the same way the collector
    would, and a batch for a whole subtree travels as one message per tree edge.
    """

    collector: int
    up: dict[int, int]
    down: dict[int, tuple[int, ...]]
    #: rank -> the ranks one hop below it on the down tree (the collector's included).
    children: dict[int, tuple[int, ...]]

    def next_hop_down(self, rank: int, dst: int) -> int | None:
        """The hop after ``rank`` toward ``dst`` on the tree, or None if ``dst`` is not below it."""
        path = self.down.get(dst)
        depth = 0 if rank == self.collector else len(self.down.get(rank, ()))
        if path is None or len(path) <= depth:
            return None
        if depth and path[depth - 1] != rank:
            return None
        return path[depth]


#: The last few answers computed per channel list: (the list object, what was asked, the
#: answer). The list is kept referenced, so its id cannot be reused while it is here; every
#: rank of a simulated job, and every restored protocol object, shares one list.
_CACHE: list[tuple[object, tuple[str, int], object]] = []
_CACHE_SIZE = 8


def _cached(edges: object, question: tuple[str, int]) -> object | None:
    for cached_edges, cached_question, answer in _CACHE:
        if cached_edges is edges and cached_question == question:
            return answer
    return None


def _remember(edges: object, question: tuple[str, int], answer: object) -> None:
    _CACHE.append((edges, question, answer))
    del _CACHE[:-_CACHE_SIZE]


def _adjacency(
    edges: Sequence[Sequence[int]],
) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Successors and predecessors of each rank along ``edges``."""
    successors: dict[int, list[int]] = {}
    predecessors: dict[int, list[int]] = {}
    for src, dst in edges:
        successors.setdefault(int(src), []).append(int(dst))
        predecessors.setdefault(int(dst), []).append(int(src))
    return successors, predecessors


def collector_routes(edges: Sequence[Sequence[int]], collector: int) -> CollectorRoutes:
    """``CollectorRoutes`` to ``collector`` over the directed ``edges`` (cached per list).

    Two breadth-first searches, smaller ranks first so every rank computes the same paths: one
    along reversed edges for the way up, one along the edges for the way down.
    """
    cached = _cached(edges, ("routes", collector))
    if isinstance(cached, CollectorRoutes):
        return cached
    successors, predecessors = _adjacency(edges)
    up: dict[int, int] = {}
    frontier: deque[int] = deque([collector])
    while frontier:
        node = frontier.popleft()
        for prev in sorted(predecessors.get(node, ())):
            if prev != collector and prev not in up:
                up[prev] = node
                frontier.append(prev)
    down: dict[int, tuple[int, ...]] = {collector: ()}
    frontier = deque([collector])
    while frontier:
        node = frontier.popleft()
        for nxt in sorted(successors.get(node, ())):
            if nxt not in down:
                down[nxt] = (*down[node], nxt)
                frontier.append(nxt)
    del down[collector]
    children: dict[int, list[int]] = {}
    for dst, path in down.items():
        children.setdefault(path[-2] if len(path) > 1 else collector, []).append(dst)
    routes = CollectorRoutes(
        collector=collector,
        up=up,
        down=down,
        children={rank: tuple(sorted(below)) for rank, below in children.items()},
    )
    _remember(edges, ("routes", collector), routes)
    return routes


def initiators(n: int, edges: Sequence[Sequence[int]]) -> frozenset[int]:
    """The ranks that reach every rank along the directed ``edges`` (cached per list).

    In O(E), not one search per rank: the vertex a depth-first search finishes last lies in a
    source component of the graph, so if any rank reaches all, that one does; and then a rank
    reaches all iff it reaches that one (a search along reversed edges).
    """
    cached = _cached(edges, ("initiators", n))
    if isinstance(cached, frozenset):
        return cached
    successors, predecessors = _adjacency(edges)
    seen: set[int] = set()
    last = 0
    for root in range(n):
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(successors.get(root, ())))]
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in seen:
                    seen.add(child)
                    stack.append((child, iter(successors.get(child, ()))))
                    break
            else:
                stack.pop()
                last = node  # finishes after everything it reaches
    answer: frozenset[int] = frozenset()
    if len(first_hops(((s, d) for s, ds in successors.items() for d in ds), last)) == n - 1:
        reversed_hops = first_hops(((d, s) for d, ss in predecessors.items() for s in ss), last)
        answer = frozenset({last, *reversed_hops})
    elif n == 1:
        answer = frozenset({0})
    _remember(edges, ("initiators", n), answer)
    return answer


def routes_to_collector(
    *, n: int, options: Mapping[str, object]
) -> tuple[int, CollectorRoutes | None]:
    """The collector rank (option ``gc_collector``, default 0) and the routes to and from it.

    Routes come from ``options["edges"]``, the job's channel list (both drivers pass it);
    without one, None: send directly, over whatever channels the rank has to the collector.
    """
    collector = int(options.get("gc_collector", 0))  # type: ignore[call-overload]
    if not 0 <= collector < n:
        raise ConfigError(f"gc_collector must be a rank in 0..{n - 1}, not {collector}")
    edges = options.get("edges")
    if edges is None:
        return collector, None
    if not isinstance(edges, list | tuple):
        raise ConfigError(f"options edges must be a list of [src, dst] pairs, not {edges!r}")
    return collector, collector_routes(edges, collector)
