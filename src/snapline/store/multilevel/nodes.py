"""Which node each rank is on, and what that makes its partner node and XOR group.

A node is a name: the host by default, or what ``--node-of`` says (so that one machine can
play several nodes, each with its own local directory). The nodes, in order of their first
rank, form a ring: a node's partner is the next one. XOR groups are consecutive runs of
``K`` nodes in that order; a last run shorter than ``K`` joins the group before it (a group
of ``g`` nodes holds ``g - 1`` data segments and one parity segment of each checkpoint).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from snapline.errors import ConfigError
from snapline.store.multilevel.spec import LevelsConfig


def this_host() -> str:
    """The default node name: the host name up to its first dot."""
    return socket.gethostname().split(".")[0] or "localhost"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeLayout:
    """Where each level of each rank lives (``node_of[r]`` is rank ``r``'s node)."""

    levels: LevelsConfig
    node_of: tuple[str, ...]

    def __post_init__(self) -> None:
        count = len(self.nodes)
        if self.levels.partner and count < 2:
            raise ConfigError(
                f"the partner level needs at least 2 nodes; every rank is on node "
                f"{self.node_of[0]!r}. On one machine give each rank a node with --node-of "
                "(e.g. --node-of 0,0,1,1), or drop 'partner' from --levels"
            )
        if self.levels.xor_group and count < self.levels.xor_group:
            raise ConfigError(
                f"xor:{self.levels.xor_group} needs at least {self.levels.xor_group} nodes; "
                f"the job has {count} ({', '.join(self.nodes)}). Use a smaller group or "
                "more nodes (--node-of)"
            )

    @property
    def nodes(self) -> tuple[str, ...]:
        """The distinct nodes, in the order of their first rank."""
        return tuple(dict.fromkeys(self.node_of))

    def root(self, node: str) -> Path:
        """The local directory of ``node``."""
        template = self.levels.local
        if "{node}" in template:
            return Path(template.replace("{node}", node))
        return Path(template) / node

    def partner_of(self, node: str) -> str:
        """The node that holds ``node``'s partner copies (the next one in the ring)."""
        nodes = self.nodes
        return nodes[(nodes.index(node) + 1) % len(nodes)]

    def xor_group_of(self, node: str) -> tuple[str, ...]:
        """The XOR group ``node`` belongs to, in ring order."""
        k = self.levels.xor_group
        nodes = self.nodes
        if not k:
            return ()
        groups = [list(nodes[i : i + k]) for i in range(0, len(nodes), k)]
        if len(groups) > 1 and len(groups[-1]) < k:
            groups[-2].extend(groups.pop())
        return next(tuple(g) for g in groups if node in g)

    # -- a rank's places ------------------------------------------------------------------
    def local_store(self, rank: int) -> Path:
        """Rank ``rank``'s store on its own node."""
        return self.root(self.node_of[rank]) / f"rank-{rank}"

    def partner_store(self, rank: int) -> Path:
        """Where the partner copies of rank ``rank`` go (on the next node)."""
        return self.root(self.partner_of(self.node_of[rank])) / "partner" / f"rank-{rank}"

    def xor_dirs(self, rank: int) -> tuple[Path, ...]:
        """One directory per node of rank ``rank``'s XOR group, for its segments."""
        group = self.xor_group_of(self.node_of[rank])
        return tuple(self.root(node) / "xor" / f"rank-{rank}" for node in group)

    def remote_store(self, rank: int) -> str:
        """Rank ``rank``'s store on the remote level (a URL or a path)."""
        remote = self.levels.remote
        if "://" in remote and not remote.startswith("file://"):
            return remote.rstrip("/") + f"/rank-{rank}"
        base = remote[len("file://") :] if remote.startswith("file://") else remote
        return str(Path(base) / f"rank-{rank}")
