"""The ``--levels`` spec, the node layout and the flush schedule of multi-level checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapline.errors import ConfigError
from snapline.runtime.local.config import JobConfig
from snapline.store.multilevel import (
    LevelsConfig,
    NodeLayout,
    flush_due,
    parse_levels,
    parse_node_of,
)


def test_a_full_spec_parses_into_a_typed_config_and_back() -> None:
    config = parse_levels("local:/scratch,partner,xor:4,remote:s3://b/p", flush_every=5)
    assert config == LevelsConfig(
        local="/scratch", partner=True, xor_group=4, remote="s3://b/p", flush_every=5
    )
    assert config.names == ("local", "partner", "xor", "remote")
    assert LevelsConfig.from_json(config.to_json()) == config


def test_a_remote_level_without_flush_every_flushes_every_checkpoint() -> None:
    assert parse_levels("local:/s,remote:/shared").flush_every == 1
    assert parse_levels("local:/s").flush_every == 0


@pytest.mark.parametrize(
    ("spec", "flush_every", "says"),
    [
        ("", None, "--levels is empty"),
        ("local:/s,tape:/t", None, "unknown level 'tape'"),
        ("local:/s,xor:1", None, "at least 2 nodes"),
        ("local:/s,xor:four", None, "whole number of nodes"),
        ("local:/s", 5, "needs a remote level"),
        ("local:/s,remote:/r", 0, "whole number >= 1"),
        ("partner,local:/s", None, "fastest first"),
        ("local:/s,partner,partner", None, "given twice"),
        ("partner", None, "must start with the node-local level"),
        ("local:", None, "'local' needs a directory"),
        ("local:/s,remote", None, "'remote' needs a URL"),
        ("local:/s,partner:x", None, "takes no argument"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, flush_every: int | None, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_levels(spec, flush_every=flush_every)


def test_node_of_gives_one_node_per_rank() -> None:
    assert parse_node_of("0,0,1,1", 4) == ["0", "0", "1", "1"]
    with pytest.raises(ConfigError, match="2 node\\(s\\) for 3 rank"):
        parse_node_of("a,b", 3)
    with pytest.raises(ConfigError, match="not a valid name"):
        parse_node_of("a,../b", 2)


def test_layout_places_partner_copies_on_the_next_node_and_xor_groups_in_runs() -> None:
    levels = parse_levels("local:/scratch/{node}/ckpt,partner,xor:2")
    layout = NodeLayout(levels=levels, node_of=("a", "a", "b", "c", "d", "e"))
    assert layout.nodes == ("a", "b", "c", "d", "e")
    assert layout.local_store(1) == Path("/scratch/a/ckpt/rank-1")
    assert layout.partner_store(1) == Path("/scratch/b/ckpt/partner/rank-1")
    assert layout.partner_store(5) == Path("/scratch/a/ckpt/partner/rank-5")  # the ring
    # Groups of 2 in node order; the short last run (e) joins the group before it.
    assert layout.xor_group_of("a") == ("a", "b")
    assert layout.xor_group_of("e") == ("c", "d", "e")
    assert NodeLayout(levels=parse_levels("local:/s"), node_of=("x",)).root("x") == Path("/s/x")


def test_layout_refuses_levels_the_nodes_cannot_hold() -> None:
    with pytest.raises(ConfigError, match="partner level needs at least 2 nodes"):
        NodeLayout(levels=parse_levels("local:/s,partner"), node_of=("h", "h"))
    with pytest.raises(ConfigError, match="xor:3 needs at least 3 nodes"):
        NodeLayout(levels=parse_levels("local:/s,xor:3"), node_of=("a", "b"))


def test_the_remote_level_is_flushed_by_checkpoint_number() -> None:
    assert [s for s in range(1, 11) if flush_due(s, 5)] == [5, 10]
    incarnation_1 = 1 << 32
    assert flush_due(incarnation_1 + 5, 5) and not flush_due(incarnation_1 + 6, 5)
    assert not flush_due(5, 0)


def test_job_config_checks_levels_when_validated(tmp_path: Path) -> None:
    config = JobConfig(app="bank", n=2, store=str(tmp_path), levels="local:/s,partner")
    with pytest.raises(ConfigError, match="partner level needs at least 2 nodes"):
        config.validate()
    config.node_of = ["0", "1"]
    config.validate()
    with pytest.raises(ConfigError, match="need --levels"):
        JobConfig(app="bank", n=2, store=str(tmp_path), node_of=["0", "1"]).validate()
