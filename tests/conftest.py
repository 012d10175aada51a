"""Fixtures shared by several test directories: the loopback S3 server (``s3_support.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from s3_support import S3Server, client_env, running_server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto server for the whole session (tests isolate themselves by bucket)."""
    with running_server(tmp_path_factory.mktemp("s3-server")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Point S3 clients of this test (snapline's included) at the session server."""
    for name, value in client_env(s3_server.endpoint).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3_server
