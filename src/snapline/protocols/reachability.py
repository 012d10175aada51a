"""Pure helpers on a job's directed channel graph, shared by the coordinated protocols.

``topology.py`` cannot be used from ``protocols/`` (it imports ``random`` for random graphs),
so the one graph question protocols ask -- can a control wave started at a rank reach every
rank? -- lives here.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Checkpoint indices of incarnation k start at ``k << INDEX_INCARNATION_SHIFT``, so a restored
#: rank never reuses an index its previous incarnation wrote.
INDEX_INCARNATION_SHIFT = 32


def reaches_all(n: int, edges: Iterable[tuple[int, int]], start: int) -> bool:
    """True iff every rank can be reached from ``start`` along the directed ``edges``."""
    successors: dict[int, list[int]] = {}
    for src, dst in edges:
        successors.setdefault(src, []).append(dst)
    seen = {start}
    frontier = [start]
    while frontier:
        for nxt in successors.get(frontier.pop(), []):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return len(seen) == n
