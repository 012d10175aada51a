"""Graph questions protocols ask: collector routes, and which ranks reach every rank."""

from __future__ import annotations

import pytest

from snapline.protocols.reachability import collector_routes, initiators, reaches_all
from snapline.topology import Topology


def edges_option(edges: frozenset[tuple[int, int]]) -> list[list[int]]:
    """The channel list as the drivers pass it in ``options["edges"]``."""
    return [[s, d] for s, d in sorted(edges)]


def distances(edges: frozenset[tuple[int, int]], start: int) -> dict[int, int]:
    """Hops from ``start`` to every rank it reaches (breadth-first)."""
    dist, frontier = {start: 0}, [start]
    while frontier:
        frontier = [
            d
            for s in frontier
            for s2, d in sorted(edges)
            if s2 == s and d not in dist and not dist.setdefault(d, dist[s] + 1) < 0
        ]
    return dist


def test_collector_routes_are_shortest_and_agree_with_every_rank() -> None:
    topo = Topology.parse("random:3", 40, seed=4)
    edges = edges_option(topo.edges)
    routes = collector_routes(edges, 5)
    assert collector_routes(edges, 5) is routes  # cached per channel list
    to_collector = distances(frozenset((d, s) for s, d in topo.edges), 5)
    from_collector = distances(topo.edges, 5)
    assert len(to_collector) == len(from_collector) == 40
    for rank in range(40):
        if rank == 5:
            continue
        hops, node = 0, rank
        while node != 5:
            assert (node, routes.up[node]) in topo.edges
            node, hops = routes.up[node], hops + 1
        assert hops == to_collector[rank]
        assert len(routes.down[rank]) == from_collector[rank]
        # Down: every rank on the path forwards to the next one, which ends at the rank.
        node, path = 5, []
        while node != rank:
            nxt = routes.next_hop_down(node, rank)
            assert nxt is not None and (node, nxt) in topo.edges
            node = nxt
            path.append(node)
        assert tuple(path) == routes.down[rank]
        # The tree's children lists hold every rank once, under the rank above it.
        parent = path[-2] if len(path) > 1 else 5
        assert rank in routes.children[parent]
    assert sorted(d for below in routes.children.values() for d in below) == [
        r for r in range(40) if r != 5
    ]


@pytest.mark.parametrize("spec", ["complete", "ring", "random:2", "random:3", "line"])
@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_initiators_are_the_ranks_that_reach_every_rank(spec: str, n: int) -> None:
    topo = Topology.parse(spec, n, seed=n)
    edges = edges_option(topo.edges)
    expected = {r for r in range(n) if reaches_all(n, topo.edges, r)}
    assert initiators(n, edges) == expected
    # A directed acyclic graph: only a source can reach all, and only if it is the only one.
    dag = [[0, 1], [0, 2], [1, 2]]
    assert initiators(3, dag) == {0}
    assert initiators(4, [[0, 1], [1, 0], [2, 3], [3, 2]]) == frozenset()
