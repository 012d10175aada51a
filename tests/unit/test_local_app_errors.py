"""How a local job names an application's failure: the user's frames; when two are the same."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import snapline
from snapline.cli.main import main
from snapline.errors import ConfigError
from snapline.runtime.local.config import (
    error_signature,
    load_app_class,
    raised_in_user_code,
    user_traceback,
)

USER_CODE = """
def handler(value):
    return helper(value)


def helper(value):
    if value < 0:
        raise ValueError(f"negative: {value}")
    return value
"""


#: A frame compiled under this name counts as snapline's machinery (as the engine's frames do).
MACHINERY = str(Path(snapline.__file__).parent / "runtime" / "engine.py")


def _caught_in_snapline(fn: Callable[[], object]) -> BaseException:
    """Call ``fn`` from a frame of snapline's, which catches what it raises (as the worker does)."""
    namespace: dict[str, Any] = {"fn": fn, "caught": []}
    code = "try:\n    fn()\nexcept Exception as exc:\n    caught.append(exc)\n"
    exec(compile(code, MACHINERY, "exec"), namespace)
    assert namespace["caught"], "fn did not raise"
    return namespace["caught"][0]  # type: ignore[no-any-return]


def _raise_through_snapline(tmp_path: Path, value: int) -> BaseException:
    """The user's handler, called by snapline, raises through a helper of theirs."""
    path = tmp_path / "user_app.py"
    path.write_text(USER_CODE)
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    return _caught_in_snapline(functools.partial(namespace["handler"], value))


def test_user_traceback_keeps_only_the_users_frames(tmp_path: Path) -> None:
    exc = _raise_through_snapline(tmp_path, -1)
    text = user_traceback(exc)
    assert text.startswith("Traceback (most recent call last):")
    assert "in handler" in text and "in helper" in text
    assert "config.py" not in text and "make_process" not in text
    assert text.endswith("ValueError: negative: -1")
    assert raised_in_user_code(exc)


def test_a_traceback_without_user_frames_is_kept_whole() -> None:
    exc = _caught_in_snapline(functools.partial(load_app_class, "no-colon"))
    assert isinstance(exc, ConfigError)
    assert "config.py" in user_traceback(exc)
    assert not raised_in_user_code(exc)


def test_the_same_raise_has_the_same_signature_and_another_message_does_not(
    tmp_path: Path,
) -> None:
    first = error_signature(_raise_through_snapline(tmp_path, -1))
    again = error_signature(_raise_through_snapline(tmp_path, -1))
    other = error_signature(_raise_through_snapline(tmp_path, -2))
    assert first == again
    assert first != other
    assert first[0] == "builtins.ValueError" and first[2].endswith(":helper")


def test_debug_after_the_subcommand_shows_the_exception() -> None:
    with pytest.raises(ConfigError, match="give the APP"):
        main(["run", "--debug"])
