"""SimConfig, delay specs, partitions, and the replay command."""

from __future__ import annotations

import random

import pytest

from snapline.errors import ConfigError
from snapline.runtime.sim import Delay, Partition, SimConfig


@pytest.mark.parametrize(
    ("spec", "kind", "a", "b"),
    [
        ("const:0.5", "const", 0.5, 0.0),
        ("0.25", "const", 0.25, 0.0),
        ("uniform:0.1:0.3", "uniform", 0.1, 0.3),
        ("exp:2", "exp", 2.0, 0.0),
        ("lognormal:1:0.5", "lognormal", 1.0, 0.5),
    ],
)
def test_delay_specs_parse_and_round_trip(spec: str, kind: str, a: float, b: float) -> None:
    delay = Delay.parse(spec)
    assert (delay.kind, delay.a, delay.b) == (kind, a, b)
    assert Delay.parse(delay.spec()) == delay


@pytest.mark.parametrize("spec", ["gauss:1", "uniform:3:1", "exp:-1", "exp:x", "a:b:c:d"])
def test_bad_delay_specs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match="delay"):
        Delay.parse(spec)


def test_samplers_stay_in_range_and_are_seeded() -> None:
    draws = [Delay.parse("uniform:1:2").sampler(random.Random(4))() for _ in range(3)]
    assert all(1 <= d <= 2 for d in draws) and len(set(draws)) == 1
    exp = Delay.parse("exp:0.5").sampler(random.Random(1))
    mean = sum(exp() for _ in range(4000)) / 4000
    assert 0.45 < mean < 0.55


def test_partition_parse() -> None:
    part = Partition.parse("0,2@10-20.5")
    assert part == Partition(10.0, 20.5, frozenset({0, 2}))
    assert Partition.parse(part.spec()) == part
    for bad in ("0,1", "x@1-2", "0@5-1"):
        with pytest.raises(ConfigError):
            Partition.parse(bad)


@pytest.mark.parametrize(
    "changes",
    [
        {"n": 0},
        {"loss_rate": 1.0},
        {"crash_at": ((9, 1.0),)},
        {"interval_s": 0.0},
        {"delay": "nope:1"},
        {"app": None},
    ],
)
def test_bad_configs_are_config_errors(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SimConfig(**changes)  # type: ignore[arg-type]


def test_command_names_every_non_default_setting() -> None:
    config = SimConfig(
        app="bank",
        n=8,
        protocol="fdas",
        seed=7,
        interval_s=12.5,
        app_params={"messages": 30},
        crash_rate=0.001,
        crash_at=((2, 3.5),),
        max_crashes=4,
        loss_rate=0.1,
        slow_disks={3: "exp:4"},
        partitions=(Partition(1.0, 2.0, frozenset({0})),),
    )
    cmd = config.command()
    for piece in (
        "snapline sim --app bank -n 8 --protocol fdas --seed 7",
        "--interval 12.5",
        "--param messages=30",
        "--crash-rate 0.001",
        "--crash-at 2@3.5",
        "--max-crashes 4",
        "--loss 0.1",
        "--slow-disk 3=exp:4",
        "--partition 0@1-2",
    ):
        assert piece in cmd
    assert "--dup" not in cmd
