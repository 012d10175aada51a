"""The ``--levels`` specification: which storage levels a job writes, and where.

A spec is a comma-separated list of levels, fastest first::

    local:/scratch,partner,xor:4,remote:s3://bucket/prefix

* ``local:DIR`` (required, first): each node's own directory. ``{node}`` in ``DIR`` is
  replaced by the node's name; without it each node uses ``DIR/<node>``.
* ``partner``: a copy of each checkpoint in the local directory of the next node (the nodes
  in a ring); needs at least two nodes.
* ``xor:K``: XOR parity over groups of ``K`` nodes (``K >= 2``); any one node of a group
  can lose its local directory and its checkpoints are rebuilt from the others.
* ``remote:URL``: a store every node can reach (a shared directory or an object store URL
  such as ``s3://bucket/prefix``), written in the background every ``flush_every``-th
  checkpoint (default: every one).

Parsing gives a ``LevelsConfig`` (plain, JSON-able data); every mistake is a ``ConfigError``
that says what was wrong and how to write it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapline.errors import ConfigError

LEVEL_NAMES = ("local", "partner", "xor", "remote")
"""The levels, fastest first (the order a spec must list them in)."""

_EXAMPLE = "e.g. --levels local:/scratch,partner,xor:4,remote:s3://bucket/prefix"
_NODE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True, slots=True, kw_only=True)
class LevelsConfig:
    """Parsed ``--levels``/``--flush-every`` (see the module docstring)."""

    local: str
    partner: bool = False
    xor_group: int = 0
    remote: str = ""
    flush_every: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        """The configured levels, fastest first."""
        out = ["local"]
        if self.partner:
            out.append("partner")
        if self.xor_group:
            out.append("xor")
        if self.remote:
            out.append("remote")
        return tuple(out)

    def spec(self) -> str:
        """The ``--levels`` text this config parses from."""
        parts = [f"local:{self.local}"]
        if self.partner:
            parts.append("partner")
        if self.xor_group:
            parts.append(f"xor:{self.xor_group}")
        if self.remote:
            parts.append(f"remote:{self.remote}")
        return ",".join(parts)

    def absolute(self) -> LevelsConfig:
        """The same levels with relative directories made absolute (from the current one),
        so that ranks started elsewhere (MPI, Ray) find them."""
        remote = self.remote
        if remote and ("://" not in remote or remote.startswith("file://")):
            plain = remote[len("file://") :] if remote.startswith("file://") else remote
            remote = str(Path(plain).absolute())
        return dataclasses.replace(self, local=str(Path(self.local).absolute()), remote=remote)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able form (``from_json`` reads it back)."""
        return {"levels": self.spec(), "flush_every": self.flush_every}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> LevelsConfig:
        """Inverse of ``to_json``."""
        return parse_levels(str(raw["levels"]), flush_every=int(raw["flush_every"]))


def parse_levels(spec: str, *, flush_every: int | None = None) -> LevelsConfig:
    """Parse a ``--levels`` spec and ``--flush-every`` into a ``LevelsConfig``.

    ``flush_every`` is how often (every how many checkpoints) the remote level is written;
    None means every checkpoint when a remote level is given.
    """
    if not spec or not spec.strip():
        raise ConfigError(f"--levels is empty; {_EXAMPLE}")
    found: dict[str, str] = {}
    order: list[str] = []
    for item in spec.split(","):
        name, sep, arg = item.strip().partition(":")
        name = name.strip().lower()
        if name not in LEVEL_NAMES:
            raise ConfigError(
                f"--levels: unknown level {name or item!r}; the levels are "
                f"{', '.join(LEVEL_NAMES)} ({_EXAMPLE})"
            )
        if name in found:
            raise ConfigError(f"--levels: level {name!r} is given twice")
        if order and LEVEL_NAMES.index(name) < LEVEL_NAMES.index(order[-1]):
            raise ConfigError(
                f"--levels: list the levels fastest first ({' < '.join(LEVEL_NAMES)}); "
                f"{name!r} comes after {order[-1]!r}"
            )
        if name == "partner" and sep:
            raise ConfigError("--levels: 'partner' takes no argument (the next node holds it)")
        if name in ("local", "remote", "xor") and not arg.strip():
            need = {"local": "a directory", "remote": "a URL or directory", "xor": "a group size"}
            raise ConfigError(f"--levels: {name!r} needs {need[name]}, e.g. {name}:{_arg(name)}")
        found[name] = arg.strip()
        order.append(name)
    if "local" not in found:
        raise ConfigError(f"--levels must start with the node-local level local:DIR; {_EXAMPLE}")
    xor_group = 0
    if "xor" in found:
        try:
            xor_group = int(found["xor"])
        except ValueError:
            raise ConfigError(
                f"--levels: xor:{found['xor']} needs a whole number of nodes, e.g. xor:4"
            ) from None
        if xor_group < 2:
            raise ConfigError(
                f"--levels: xor:{xor_group}: an XOR group needs at least 2 nodes "
                "(parity over one node protects nothing)"
            )
    remote = found.get("remote", "")
    if flush_every is not None:
        if type(flush_every) is not int or flush_every < 1:
            raise ConfigError(f"--flush-every must be a whole number >= 1, got {flush_every!r}")
        if not remote:
            raise ConfigError(
                "--flush-every needs a remote level to flush to: add remote:URL to --levels"
            )
    return LevelsConfig(
        local=found["local"],
        partner="partner" in found,
        xor_group=xor_group,
        remote=remote,
        flush_every=(flush_every or 1) if remote else 0,
    )


def _arg(name: str) -> str:
    return {"local": "/scratch", "remote": "s3://bucket/prefix", "xor": "4"}[name]


def parse_node_of(text: str, n: int) -> list[str]:
    """``--node-of 0,0,1,1``: the node of each rank, rank 0 first (``n`` names).

    Names are letters, digits, ``.``, ``_`` and ``-`` (they become directory names).
    """
    names = [part.strip() for part in text.split(",")]
    if len(names) != n:
        raise ConfigError(
            f"--node-of names {len(names)} node(s) for {n} rank(s); give one node per rank, "
            "rank 0 first, e.g. --node-of 0,0,1,1 for 4 ranks on 2 nodes"
        )
    for rank, name in enumerate(names):
        if not _NODE_NAME.match(name):
            raise ConfigError(
                f"--node-of: rank {rank}'s node {name!r} is not a valid name (use letters, "
                "digits, '.', '_' or '-')"
            )
    return names
