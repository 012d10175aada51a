"""The replay command a failing run prints must rebuild the very same configuration."""

from __future__ import annotations

import shlex

from snapline.cli.sim_cmds import _option_value
from snapline.runtime.sim.config import SimConfig


def test_protocol_options_survive_the_printed_command() -> None:
    config = SimConfig(
        app="bank",
        n=3,
        protocol="uncoordinated",
        seed=5,
        protocol_options={"gc": False, "every": 3, "name": "x"},
    )
    argv = shlex.split(config.command())
    options = {}
    for i, arg in enumerate(argv):
        if arg == "--option":
            key, _, text = argv[i + 1].partition("=")
            options[key] = _option_value(text)
    assert options == {"gc": False, "every": 3, "name": "x"}
