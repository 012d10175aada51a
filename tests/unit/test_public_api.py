"""Every public name resolves, and nothing private leaks into ``__all__``."""

from __future__ import annotations

import subprocess
import sys

import snapline


def test_every_public_name_resolves() -> None:
    for name in snapline.__all__:
        assert getattr(snapline, name) is not None, name
        assert not name.startswith("_") or name == "__version__"


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        snapline.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_every_protocol_name_resolves_to_a_protocol_class() -> None:
    from snapline.protocols.base import Protocol

    for name in snapline.protocol_names():
        cls = snapline.protocol_class(name)
        assert issubclass(cls, Protocol)
        assert cls.name == name


def test_python_dash_m_shows_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "snapline", "--help"], capture_output=True, text=True, check=True
    )
    assert "Usage" in out.stdout
