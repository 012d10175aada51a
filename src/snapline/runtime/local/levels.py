"""A rank's stable storage over the multi-level store, when the job has ``--levels``.

Without ``--levels`` a rank's checkpoints live in ``<job dir>/rank-N`` (one store). With it
they live on the levels ``snapline.store.multilevel`` describes; what stays in the job
directory -- ledgers (checkpoint, commit and output records), ``job.json``, logs, traces --
is small and is the job's record of truth, so the job directory must be on storage every node
reaches and that survives a node (as the remote level does). The ledger's ``ckpt`` record of
a checkpoint names the levels that hold it (``levels``) and its ``checkpoint_id``; it is
written only once those levels are durable. A later ``flushed`` record adds the remote level.
A restore asks the levels for exactly the checkpoint the ledger names (``expect``), so a copy
of an older checkpoint of the same index on a slower level is never restored by mistake.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapline.errors import ConfigError
from snapline.runtime.local.config import JobConfig
from snapline.runtime.local.ledger import LedgerView

if TYPE_CHECKING:  # the store is imported late by the worker: it is the heavier part
    from snapline.store import Store
    from snapline.store.multilevel import MultiLevelStore, NodeLayout


def node_layout(config: JobConfig) -> NodeLayout:
    """The job's levels and node mapping (``ConfigError`` for a bad spec)."""
    from snapline.store.multilevel import NodeLayout, parse_levels, parse_node_of, this_host

    if not config.levels:
        raise ConfigError("--flush-every and --node-of need --levels (e.g. --levels local:DIR,...)")
    levels = parse_levels(config.levels, flush_every=config.flush_every or None)
    if config.node_of:
        nodes = parse_node_of(",".join(config.node_of), config.n)
    else:
        nodes = [this_host()] * config.n
    return NodeLayout(levels=levels, node_of=tuple(nodes))


def rank_store(
    config: JobConfig, rank: int, on_flushed: Callable[[int, str], None]
) -> Store | MultiLevelStore:
    """Rank ``rank``'s store: ``<job dir>/rank-N``, or its levels under ``--levels``."""
    from snapline.store import open_store
    from snapline.store.multilevel import MultiLevelStore

    if not config.levels:
        return open_store(Path(config.store) / f"rank-{rank}")
    return MultiLevelStore(node_layout(config), rank, on_flushed=on_flushed)


def load_checkpoint(
    store: Store | MultiLevelStore,
    view: LedgerView,
    index: int,
    *,
    allow_pickle: bool,
    log: Callable[..., None],
) -> Any:
    """The state of checkpoint ``index`` -- on levels, exactly the one the ledger recorded
    (``log`` says which level served it)."""
    from snapline.store.multilevel import MultiLevelStore

    if not isinstance(store, MultiLevelStore):
        return store.load(index, allow_pickle=allow_pickle)
    state = store.load(index, allow_pickle=allow_pickle, expect=view.checkpoint_ids.get(index))
    log("checkpoint_served", index=index, level=store.served.get(index, "local"))
    return state


def flushed_record(index: int, checkpoint_id: str) -> dict[str, Any]:
    """The ledger record saying the remote level holds checkpoint ``index``."""
    return {"k": "flushed", "index": index, "id": checkpoint_id, "level": "remote"}
