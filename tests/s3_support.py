"""A real S3-compatible server on loopback for the object store tests: moto's standalone server.

Each ``S3Server`` is a ``python -m moto.server`` process on 127.0.0.1 and a free port, in its
own process group, so a test can ``kill -9`` it. moto keeps objects in memory only; a server
started with ``persist=True`` runs ``s3_journal_server.py`` instead: moto behind a journal that
appends every request changing state (body included) to a file once it is applied and before
it is answered, one whole record per ``write``, in the order the requests took effect; the
process replays the journal at start, so ``restart()`` brings back exactly what the killed one
had applied. That models a server that persisted everything it acknowledged (and perhaps a
request it applied but was killed before answering); a record torn by the kill can only be the
last one, a request no client got a reply to, and is dropped.

Not moto's own request recorder (``MOTO_ENABLE_RECORDING``), which this used to run: it writes
a record from the request's thread, before the request is applied and without any lock, as two
``write`` calls (the JSON, then the newline). A record of a concurrent request written between
the two glues both into one line that is not JSON, and the replay could only drop that line:
requests the server had acknowledged, a committed checkpoint's pack among them, vanished at the
restart (the crash test's rare "pack of step 1 is missing"). Its records were also in the order
requests arrived, not the order they were applied.

The tests need the ``s3`` extra (s3fs, moto[server]). Where it is missing they are skipped with
the reason, except under CI (``CI`` set), where a skip would hide them: there they fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ACCESS_KEY = "AKIASNAPLINETEST0001"
SECRET_KEY = "snapline-test-secret-do-not-print-0123456789"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0
JOURNAL_SERVER = Path(__file__).with_name("s3_journal_server.py")


def require_s3() -> None:
    """Skip (or, under CI, fail) when s3fs or moto's server is missing."""
    try:
        import flask  # noqa: F401  (moto's server needs it)
        import moto  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as exc:
        message = f"needs the s3 extra (pip install -e '.[test,s3]'): {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def client_env(endpoint: str) -> dict[str, str]:
    """Environment variables that point an S3 client at ``endpoint`` with the test keys."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        # No profile or instance metadata lookups from the developer's machine.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


class S3Server:
    """One moto server process; see the module docstring."""

    def __init__(self, workdir: Path, *, persist: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.recording = workdir / "s3-journal.jsonl" if persist else None
        self.log = workdir / "moto-server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._client: object | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
        env.update(client_env(self.endpoint))
        if self.recording is None:
            argv = ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        else:
            argv = [str(JOURNAL_SERVER), "127.0.0.1", str(self.port), str(self.recording)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *argv],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=2):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"moto server did not start: {self.log.read_text()}"
                    ) from exc
                time.sleep(0.1)

    def kill(self) -> None:
        """``kill -9`` the server (its whole process group)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def restart(self) -> None:
        """Start a new process on the same port; it replays what the old one had applied."""
        assert self.process is None, "kill() the server first"
        self.start()

    def _post(self, path: str, body: bytes) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}{path}",
            data=body,
            method="POST",
            # Not a form: moto reads the raw body (the auth reset takes a number).
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(request, timeout=120) as reply:
            reply.read()

    def require_auth(self) -> None:
        """From now on, every request must be signed with a key the server knows."""
        self._post("/moto-api/reset-auth", b"0")

    def client(self, **overrides: str) -> object:
        """A boto3 S3 client for fixtures (creating buckets, flipping bits)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=overrides.get("key", ACCESS_KEY),
            aws_secret_access_key=overrides.get("secret", SECRET_KEY),
            region_name=REGION,
        )

    def new_bucket(self, prefix: str = "b") -> str:
        if self._client is None:
            self._client = self.client()
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self._client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name


@contextmanager
def running_server(workdir: Path, *, persist: bool = False) -> Iterator[S3Server]:
    """A started server, killed on exit."""
    require_s3()
    workdir.mkdir(parents=True, exist_ok=True)
    server = S3Server(workdir, persist=persist)
    server.start()
    try:
        yield server
    finally:
        server.kill()
