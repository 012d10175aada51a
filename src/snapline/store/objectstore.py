"""``ObjectStore``: a store in an object store bucket (``s3://bucket/prefix``, other fsspec URLs).

Theory of operation
-------------------
Keys map one to one onto objects under the URL's prefix. An object PUT is all or nothing and
durable when it returns, so ``write`` is one PUT (chunks of a save go up in parallel from the
store's I/O threads: fsspec's client runs them concurrently on its event loop) and ``sync``
has nothing to do. A load reads each run of neighbouring chunks with one ranged GET, streamed
from the socket into the arrays; the reply's ``Content-Range`` gives the object's size, so a
truncated object is caught without a HEAD. gc's ``remove_partial_writes`` aborts multipart
uploads left open under the prefix (snapline's own PUTs are single-part below 100 MiB).

**Commit** (``ConditionalPutFinalizer``): the manifest is the last object a save writes, and
its PUT carries ``If-None-Match: *``: the server creates it only if no object has that name,
so of two writers that save the same step, exactly one commits; the other gets a
``ConfigError`` and its chunks become garbage for gc. ``save(..., overwrite=True)`` replaces
the manifest with a plain PUT (still atomic). Visible = the manifest object exists.

**Writer lock**: a ``lock`` object, created with the same conditional PUT, holding the
holder's host, pid and a lease deadline that a background thread extends every third of
``lock_lease_s``. A waiter polls until ``lock_timeout_s``; a lock whose lease ran out more than
``clock_slack_s`` ago belongs to a writer that died (``kill -9`` cannot release it) and is
broken. Breaking trusts the two clocks to agree within the slack; a commit cannot be
duplicated even then, because the manifest PUT is conditional.

**Servers without conditional writes** (an ``If-None-Match`` PUT that overwrites): detected
once per backend by re-putting the store marker conditionally (it exists, so a server that
honours the header refuses; one that ignores it rewrites the same bytes). The lock then falls
back to put, wait ``LOCK_SETTLE_S``, read back: the writer whose token is read back holds it.
That is exclusive only when writers start more than the settle time apart (the usual case of
one job writing); the docs say so. The commit then checks, under that lock, that the manifest
does not exist before putting it.

Credentials and endpoint come the usual way for the file system (for S3: environment
variables, ``~/.aws`` profiles, instance roles, ``AWS_ENDPOINT_URL``), or from
``storage_options``; they are never stored in the store, and error messages are scrubbed of
any secret value they were given.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from snapline.errors import ConfigError, NotAStore, StoreError, StoreLocked
from snapline.store.backend import MARKER_KEY, Backend, Finalizer, MissingKey

T = TypeVar("T")

LOCK_KEY = "lock"
LOCK_LEASE_S = 10.0
LOCK_CLOCK_SLACK_S = 5.0
LOCK_SETTLE_S = 1.0
_LOCK_POLL_S = 0.1
_SECRET_OPTIONS = ("secret", "token", "key", "password", "session_token", "aws_secret_access_key")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_S3_DEFAULTS: dict[str, Any] = {
    # Every Store sees what is on the server now, never a listing cached by another one.
    "use_listings_cache": False,
    "skip_instance_cache": True,
    # A dead endpoint should fail a save in seconds, not minutes.
    "config_kwargs": {
        "connect_timeout": 5,
        "read_timeout": 60,
        "retries": {"max_attempts": 3, "mode": "standard"},
    },
}
_CONTENT_RANGE = re.compile(r"bytes (?:\d+-\d+|\*)/(\d+)")


def _redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    return re.sub(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@]*@", r"\1", url)


class StoreUnreachable(StoreError):
    """The object store's endpoint could not be reached (after the client's own retries)."""


class ObjectStore(Backend):
    """A store under an fsspec URL (``s3://bucket/prefix``, ...): what ``open_store`` builds.

    Build one yourself to tune the writer lock, then pass it to ``open_store``:
    ``open_store(ObjectStore(url, lock_lease_s=30))``. ``storage_options`` go to the fsspec
    file system (for S3, ``s3fs.S3FileSystem``: ``endpoint_url``, ``config_kwargs``, ...).
    ``lock_lease_s``: how long the writer lock outlives a writer that stopped renewing it (one
    that died); ``clock_slack_s``: how far the clocks of two writers may disagree. A writer
    that died thus blocks others for ``lock_lease_s + clock_slack_s`` at most.
    """

    # Requests, not a disk, are the bottleneck: one stream per pack, up to ``io_threads``.
    write_stream_min_bytes = 16 * 1024 * 1024

    def __init__(
        self,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        lock_lease_s: float = LOCK_LEASE_S,
        clock_slack_s: float = LOCK_CLOCK_SLACK_S,
    ) -> None:
        try:
            import fsspec
        except ImportError:
            raise ConfigError(
                f"{_redact_url(url)}: object store URLs need the s3 extra "
                "(pip install 'snapline[s3]')"
            ) from None
        if lock_lease_s <= 0 or clock_slack_s < 0:
            raise ConfigError(
                f"lock_lease_s must be > 0 and clock_slack_s >= 0, got {lock_lease_s}, "
                f"{clock_slack_s}"
            )
        scheme = url.split("://", 1)[0]
        options = dict(storage_options or {})
        self._secrets = [
            str(v) for k, v in options.items() if k.lower() in _SECRET_OPTIONS and v
        ] + [os.environ[name] for name in _SECRET_ENV if os.environ.get(name)]
        if scheme in ("s3", "s3a"):
            for name, value in _S3_DEFAULTS.items():
                options.setdefault(name, value)
        self.url = _redact_url(url).rstrip("/")
        try:
            fs, root = fsspec.core.url_to_fs(url, **options)
        except ImportError as exc:
            raise ConfigError(
                f"{self.url}: the {scheme}:// file system needs a package that is not "
                f"installed ({exc}); for s3:// install the s3 extra (pip install 'snapline[s3]')"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"{self.url}: {self._scrub(str(exc))}") from None
        self.fs = fs
        self.root = root.rstrip("/")
        if not self.root:
            raise ConfigError(f"{self.url}: name a bucket, e.g. s3://my-bucket/checkpoints")
        self.lock_lease_s = lock_lease_s
        self.clock_slack_s = clock_slack_s
        self.finalizer = ConditionalPutFinalizer()
        self._conditional: bool | None = None
        self._is_s3 = type(fs).__name__ == "S3FileSystem"

    # -- errors ---------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _endpoint(self) -> str:
        endpoint = getattr(self.fs, "endpoint_url", None) or (
            getattr(self.fs, "client_kwargs", {}) or {}
        ).get("endpoint_url")
        endpoint = (
            endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )
        return f" at {endpoint}" if endpoint else ""

    def _error(self, exc: BaseException, what: str) -> StoreError:
        """A ``StoreError`` saying what failed and what to do; never a secret."""
        name = type(exc).__name__
        text = self._scrub(str(exc))
        bucket = self.root.split("/", 1)[0]
        if _no_such_bucket(exc):
            return StoreError(
                f"{what}: bucket {bucket!r} does not exist{self._endpoint()}. Create it first "
                "(snapline never creates buckets) or fix the URL"
            )
        if name == "NoCredentialsError" or "Unable to locate credentials" in text:
            return StoreError(
                f"{what}: no credentials found for {self.url}. Set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or pass storage_options"
            )
        if isinstance(exc, PermissionError) or any(
            code in text
            for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden")
        ):
            return StoreError(
                f"{what}: access denied to {self.url}{self._endpoint()} ({text}). Check the "
                "credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and "
                "that they may read and write this bucket"
            )
        if _is_connection_error(exc):
            return StoreUnreachable(
                f"{what}: cannot reach the object store{self._endpoint()} ({name}: {text}). "
                "Check the endpoint (AWS_ENDPOINT_URL) and the network; committed checkpoints "
                "are intact"
            )
        return StoreError(f"{what} failed on {self.url}: {name}: {text}")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (StoreError, MissingKey, FileExistsError):
            raise
        except FileNotFoundError as exc:
            if _no_such_bucket(exc):
                raise self._error(exc, what) from None
            raise MissingKey(f"{what}: {self.url} has no such object") from None
        except Exception as exc:
            raise self._error(exc, what) from None

    def _path(self, key: str) -> str:
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            raise StoreError(f"refusing key {key!r}: it would name an object outside the store")
        return f"{self.root}/{key}"

    # -- open -----------------------------------------------------------------------------
    def is_initialized(self) -> bool:
        """True when the marker object exists; ``NotAStore`` when the prefix holds others."""
        path = self._path(MARKER_KEY)
        try:
            self._call(f"opening {self.url}", lambda: self._head(path))
            return True
        except MissingKey:
            pass
        # One listing call tells "empty prefix" from "foreign data", and a missing bucket or
        # bad credentials fail here with a clear message.
        if self._has_objects():
            raise NotAStore(
                f"{self.url} holds objects but no {MARKER_KEY}: not a snapline store. Pick an "
                "empty prefix for a new store"
            )
        return False

    def _has_objects(self) -> bool:
        what = f"opening {self.url}"
        if not self._is_s3:
            return bool(self._call(what, lambda: self.fs.find(self.root, withdirs=False)))
        bucket, _, prefix = self.root.partition("/")
        listing = self._call(
            what,
            lambda: self._call_s3(
                "list_objects_v2", Bucket=bucket, Prefix=prefix + "/" if prefix else "", MaxKeys=1
            ),
        )
        return bool(listing.get("KeyCount") or listing.get("Contents"))

    def initialize(self, marker: bytes) -> None:
        """Create the marker (conditionally: two first openers write it once)."""
        self.write_if_absent(MARKER_KEY, marker)

    # -- read -----------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        """The whole object (one GET)."""
        path = self._path(key)
        data: bytes = self._call(f"reading {key}", lambda: self._get(path))
        return data

    def _get(self, path: str) -> bytes:
        if not self._is_s3:
            data: bytes = self.fs.cat_file(path)
            return data
        bucket, _, key = path.partition("/")

        # s3fs's cat_file sends a HEAD before its GET; a manifest or lock read needs only one.
        async def get() -> bytes:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                body: bytes = await resp["Body"].read()
            finally:
                resp["Body"].close()
            return body

        got: bytes = self._sync(get())
        return got

    def read_into(self, key: str, buffer: memoryview) -> int:
        """Read the object and copy it into ``buffer``."""
        blob = self.read(key)
        n = min(len(blob), buffer.nbytes)
        buffer[:n] = memoryview(blob)[:n]
        return len(blob)

    def read_range(self, key: str, offset: int, buffers: Sequence[memoryview]) -> int:
        """One ranged GET for the whole run, streamed into the buffers; size from the reply."""
        path = self._path(key)
        views = [b.cast("B") if b.format != "B" or b.ndim != 1 else b for b in buffers]
        want = sum(v.nbytes for v in views)
        if want == 0:
            size = self.size(key)
            if size is None:
                raise MissingKey(f"reading {key}: {self.url} has no such object")
            return size
        return self._call(f"reading {key}", lambda: self._get_range(path, offset, want, views))

    def _get_range(self, path: str, offset: int, length: int, views: list[memoryview]) -> int:
        """Fill ``views`` from ``length`` bytes at ``offset``; return the object's full size.

        An object shorter than the range leaves the views partly filled; the size says so.
        """
        if not self._is_s3:
            size = self._head(path)
            _scatter(self.fs.cat_file(path, offset, min(size, offset + length)), views)
            return size
        bucket, _, key = path.partition("/")

        async def get() -> int:
            resp = await self.fs._call_s3(
                "get_object", Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
            )
            body = resp["Body"]
            try:
                # Straight from the socket's buffers into the arrays: no joined copy of the body.
                for view in views:
                    got = 0
                    while got < view.nbytes:
                        n = await body.readinto(view[got:])
                        if not n:
                            break
                        got += n
                    if got < view.nbytes:
                        break
            finally:
                body.close()
            match = _CONTENT_RANGE.fullmatch(resp.get("ContentRange") or "")
            return int(match.group(1)) if match else int(resp.get("ContentLength", 0))

        try:
            total: int = self._sync(get())
            return total
        except Exception as exc:
            if "InvalidRange" in str(exc) or "416" in str(exc):
                # The range starts past the end: the object is shorter than the manifest says.
                return self._head(path)
            raise

    def _sync(self, coro: Any) -> Any:
        from fsspec.asyn import sync

        return sync(self.fs.loop, lambda: coro)

    def _call_s3(self, method: str, **kwargs: Any) -> Any:
        async def call() -> Any:
            return await self.fs._call_s3(method, **kwargs)

        return self._sync(call())

    def size(self, key: str) -> int | None:
        """The object's size (one HEAD request), or None."""
        path = self._path(key)
        try:
            return self._call(f"checking {key}", lambda: self._head(path))
        except MissingKey:
            return None

    def _head(self, path: str) -> int:
        """Size of an object; ``FileNotFoundError`` when absent (never a directory probe)."""
        if not self._is_s3:
            return int(self.fs.info(path)["size"])
        bucket, _, key = path.partition("/")
        # s3fs's info() follows a 404 with a listing, to find "directories"; keys never are.
        return int(self._call_s3("head_object", Bucket=bucket, Key=key)["ContentLength"])

    def list_keys(self, prefix: str) -> list[str]:
        """Keys of the objects under ``prefix``."""
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        found = self._call(f"listing {prefix}", lambda: self.fs.find(base, withdirs=False))
        cut = len(self.root) + 1
        return sorted(p[cut:] for p in found if p.startswith(self.root + "/"))

    # -- write ----------------------------------------------------------------------------
    def write(self, key: str, pieces: Sequence[memoryview]) -> None:
        """One PUT of the joined pieces (all or nothing on the server)."""
        path = self._path(key)
        data = b"".join(pieces)
        self._call(f"writing {key}", lambda: self.fs.pipe_file(path, data))

    def write_if_absent(self, key: str, data: bytes) -> bool:
        """PUT with ``If-None-Match: *``; False when the object already exists."""
        path = self._path(key)
        try:
            self._call(f"writing {key}", lambda: self.fs.pipe_file(path, data, mode="create"))
        except FileExistsError:
            return False
        return True

    def supports_conditional_writes(self) -> bool:
        """Whether the server honours ``If-None-Match`` (probed once on the store marker)."""
        if self._conditional is None:
            marker = self.read(MARKER_KEY)
            self._conditional = not self.write_if_absent(MARKER_KEY, marker)
        return self._conditional

    def sync(self) -> None:
        """Nothing to do: a PUT is durable when it returns."""

    def delete(self, key: str) -> None:
        """DELETE the object (missing is fine)."""
        path = self._path(key)
        with contextlib.suppress(MissingKey):
            self._call(f"deleting {key}", lambda: self.fs.rm_file(path))

    def remove_partial_writes(self) -> int:
        """Abort multipart uploads under the prefix that a crashed writer left open."""
        if not self._is_s3:
            return 0
        bucket, _, prefix = self.root.partition("/")
        listing = self._call(
            "listing unfinished uploads",
            lambda: self._call_s3(
                "list_multipart_uploads", Bucket=bucket, Prefix=prefix + "/" if prefix else ""
            ),
        )
        removed = 0
        for upload in listing.get("Uploads", []):
            key: str = upload["Key"]
            upload_id: str = upload["UploadId"]

            def abort(key: str = key, upload_id: str = upload_id) -> None:
                self._call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)

            self._call(f"aborting the unfinished upload of {key}", abort)
            removed += 1
        return removed

    # -- lock -----------------------------------------------------------------------------
    def _lock_body(self, token: str) -> bytes:
        return json.dumps(
            {
                "token": token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "expires_unix_s": time.time() + self.lock_lease_s,
            }
        ).encode()

    def _read_lock(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.read(LOCK_KEY))
        except MissingKey:
            return None
        except ValueError:
            return {}  # torn or foreign: treated as held until it expires by age
        return holder if isinstance(holder, dict) else {}

    def _try_lock(self, token: str) -> bool:
        body = self._lock_body(token)
        if self.supports_conditional_writes():
            return self.write_if_absent(LOCK_KEY, body)
        if self._read_lock() is not None:
            return False
        self.write(LOCK_KEY, [memoryview(body)])
        time.sleep(LOCK_SETTLE_S)  # a writer that put after us wins; we read its token
        holder = self._read_lock()
        return holder is not None and holder.get("token") == token

    @contextmanager
    def writer_lock(self, timeout_s: float) -> Iterator[None]:
        """The ``lock`` object with a renewed lease (see the module docstring)."""
        token = uuid.uuid4().hex
        deadline = time.monotonic() + max(0.0, timeout_s)
        while not self._try_lock(token):
            holder = self._read_lock()
            expires = holder.get("expires_unix_s") if holder else None
            if isinstance(expires, int | float) and time.time() > expires + self.clock_slack_s:
                self.delete(LOCK_KEY)  # its holder died without releasing it
                continue
            if time.monotonic() >= deadline:
                who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "?"
                raise StoreLocked(
                    f"store {self.url} is locked by another writer ({who}) for more than "
                    f"{timeout_s:g} s; wait for its save/gc to finish or open the store with a "
                    "larger lock_timeout_s. A writer that died releases the lock when its "
                    f"lease ends ({self.lock_lease_s:g} s)"
                )
            time.sleep(_LOCK_POLL_S)
        stop = threading.Event()
        renewer = threading.Thread(
            target=self._renew, args=(token, stop), name="snapline-lock-lease", daemon=True
        )
        renewer.start()
        reachable = True
        try:
            yield
        except StoreUnreachable:
            reachable = False
            raise
        finally:
            stop.set()
            renewer.join()
            # When the server is gone the lease frees the lock (retrying the release would
            # only delay the error); the save's own error, if any, is the one to report.
            with contextlib.suppress(StoreError):
                holder = self._read_lock() if reachable else None
                if holder is not None and holder.get("token") == token:
                    self.delete(LOCK_KEY)

    def _renew(self, token: str, stop: threading.Event) -> None:
        while not stop.wait(self.lock_lease_s / 3):
            # A failed renewal is not fatal by itself: the lease outlives two missed ones.
            with contextlib.suppress(StoreError):
                holder = self._read_lock()
                if holder is None or holder.get("token") != token:
                    return  # broken by a waiter that judged us dead; the commit stays safe
                self.write(LOCK_KEY, [memoryview(self._lock_body(token))])


def _scatter(data: bytes, views: list[memoryview]) -> None:
    """Copy ``data`` into ``views`` in order (as much as there is)."""
    source = memoryview(data)
    pos = 0
    for view in views:
        piece = source[pos : pos + view.nbytes]
        view[: piece.nbytes] = piece
        pos += view.nbytes


def _no_such_bucket(exc: BaseException) -> bool:
    return any(
        "NoSuchBucket" in str(e) or "bucket does not exist" in str(e).lower() for e in _chain(exc)
    )


def _is_connection_error(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(
        names
        & {
            "EndpointConnectionError",
            "ConnectionClosedError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ClientConnectorError",
            "ServerDisconnectedError",
            "ClientOSError",
            "ConnectionRefusedError",
            "ConnectionResetError",
            "BrokenPipeError",
            "ConnectionError",
            "ClientConnectionError",
            "ClientPayloadError",
            "ServerTimeoutError",
            "ResponseStreamingError",
            "IncompleteRead",
            "ProtocolError",
            "FSTimeoutError",
            "TimeoutError",
        }
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


class ConditionalPutFinalizer(Finalizer):
    """Object stores with ``ObjectStore``: the manifest PUT itself is the commit point."""

    def commit(self, backend: Backend, key: str, data: bytes, *, replace: bool = False) -> None:
        """PUT the manifest if absent (or replace it when asked); see the module docstring."""
        assert isinstance(backend, ObjectStore)
        if replace:
            backend.write(key, [memoryview(data)])
            return
        if backend.supports_conditional_writes():
            created = backend.write_if_absent(key, data)
        else:
            created = backend.size(key) is None  # under the writer lock (see module doc)
            if created:
                backend.write(key, [memoryview(data)])
        if not created:
            raise ConfigError(
                f"{key} in {backend.url} was committed by another writer while this save ran; "
                "its checkpoint is kept. Save a new step, or pass overwrite=True"
            )

    def visible(self, backend: Backend) -> list[str]:
        """Every manifest object (a PUT is never partly visible)."""
        return [k for k in backend.list_keys("manifests/") if k.endswith(".json")]

    def retract(self, backend: Backend, key: str) -> None:
        """DELETE the manifest."""
        backend.delete(key)
