"""Multi-level checkpoints: node-local, partner copy, XOR parity and a remote level.

Big jobs cannot write every checkpoint to remote storage. As SCR, VeloC and FTI do, a rank
writes each checkpoint to its node's own directory first, then (in the background) protects
it with a copy on a partner node and/or XOR parity over a group of nodes, and flushes every
K-th checkpoint to a remote store (a shared directory or an object store). A restart takes
each checkpoint from the fastest level that holds it intact.

``parse_levels`` reads a ``--levels`` spec; ``NodeLayout`` says where each level of each rank
lives; ``MultiLevelStore`` is one rank's store over the levels (``composite.py`` has the
theory of operation).
"""

from __future__ import annotations

from snapline.store.multilevel.composite import LevelledSave, MultiLevelStore, flush_due
from snapline.store.multilevel.nodes import NodeLayout, this_host
from snapline.store.multilevel.spec import LEVEL_NAMES, LevelsConfig, parse_levels, parse_node_of

__all__ = [
    "LEVEL_NAMES",
    "LevelledSave",
    "LevelsConfig",
    "MultiLevelStore",
    "NodeLayout",
    "flush_due",
    "parse_levels",
    "parse_node_of",
    "this_host",
]
