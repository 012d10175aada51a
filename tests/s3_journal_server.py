"""moto's S3 server with a journal: it persists exactly the requests it applied, in that order.

``python s3_journal_server.py HOST PORT JOURNAL`` replays ``JOURNAL`` (if there is one) into a
fresh moto, then serves on ``HOST:PORT`` and appends every request that changes state (any
method but GET, HEAD and OPTIONS; ``/moto-api/`` calls aside) to it. ``s3_support.S3Server``
runs it for ``persist=True``; see there for why moto's own request recorder does not do.

One mutex covers applying a request and appending its record, and the record goes to the file
in one ``write`` on an ``O_APPEND`` descriptor, after the request is applied and before its
reply is sent. So the journal's order is the order the requests took effect, every reply a
client saw is backed by a whole record, and a ``kill -9`` can tear at most the last record
(a request the client never got a reply to); the replay drops that one and refuses a journal
damaged anywhere else.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

READS = frozenset({"GET", "HEAD", "OPTIONS"})
_PRESERVED = "moto.preserved_header_names"  # moto.core.request.PRESERVED_HEADER_NAMES_ENVIRON_KEY
_KEPT = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "RAW_URI",
    "REQUEST_URI",
    "CONTENT_TYPE",
    "SERVER_NAME",
    "SERVER_PORT",
    _PRESERVED,
)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def journal_records(path: Path) -> list[dict[str, Any]]:
    """The whole records of the journal at ``path``, cutting off a torn last one (the file too).

    A torn record anywhere but at the end means the journal was not written one whole record
    at a time: ``ValueError``, never a silently shorter history.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    whole, _, torn = data.rpartition(b"\n")
    if torn:
        with open(path, "r+b") as f:  # a kill -9 in the middle of the last append
            f.truncate(len(whole) + 1 if whole else 0)
    records = []
    for number, line in enumerate(whole.split(b"\n") if whole else [], 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise ValueError(f"{path}: record {number} is damaged: {line[:200]!r}...") from None
    return records


def _body(environ: dict[str, Any]) -> bytes:
    """Read the request's body and put it back as a plain sized stream."""
    stream = environ["wsgi.input"]
    if "wsgi.input_terminated" in environ:  # chunked: the server ends the stream
        body: bytes = stream.read()
    else:
        body = stream.read(int(environ.get("CONTENT_LENGTH") or 0))
    environ.pop("wsgi.input_terminated", None)
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def _environ_of(record: dict[str, Any]) -> dict[str, Any]:
    from werkzeug.test import create_environ

    environ: dict[str, Any] = create_environ()
    environ.update(record["environ"])
    body = base64.b64decode(record["body"])
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return environ


class JournaledApp:
    """A WSGI wrapper that journals what it applies (see the module docstring)."""

    def __init__(self, app: WSGIApp, journal: Path) -> None:
        self.app = app
        self.mutex = threading.Lock()
        for record in journal_records(journal):
            self._apply(_environ_of(record))
        self.fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _apply(self, environ: dict[str, Any]) -> tuple[list[Any], bytes]:
        started: list[Any] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[..., Any]:
            started[:] = [status, headers]
            return lambda data: None  # moto's Flask app returns its body; it never writes

        result = self.app(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return started, content

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ["REQUEST_METHOD"] in READS or environ.get("PATH_INFO", "").startswith(
            "/moto-api/"
        ):
            return self.app(environ, start_response)
        body = _body(environ)
        kept = {k: v for k, v in environ.items() if k in _KEPT or k.startswith("HTTP_")}
        line = json.dumps({"environ": kept, "body": base64.b64encode(body).decode("ascii")})
        record = memoryview(line.encode("ascii") + b"\n")
        with self.mutex:
            started, content = self._apply(environ)
            while record:  # one write() in practice; a kill -9 may cut it short
                record = record[os.write(self.fd, record) :]
        start_response(*started)
        return [content]


def main(argv: list[str]) -> None:
    host, port, journal = argv[0], int(argv[1]), Path(argv[2])
    os.environ.setdefault("MOTO_PORT", str(port))
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    moto_app = DomainDispatcherApplication(create_backend_app)
    moto_app.debug = True  # type: ignore[attr-defined]  # as moto.server does
    app = JournaledApp(moto_app, journal)  # type: ignore[arg-type]
    run_simple(host, port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main(sys.argv[1:])
