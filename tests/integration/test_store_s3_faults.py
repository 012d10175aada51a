"""Object store faults against a real S3-compatible server on loopback (moto, see s3_support.py).

The server is ``kill -9``'d in the middle of a save and restarted with what it had received; a
client is ``kill -9``'d in the middle of its uploads; bits are flipped in stored objects; a
missing bucket, bad credentials and a dead endpoint must give a clear ``StoreError`` that never
shows the secret.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from s3_support import SECRET_KEY, S3Server, client_env, running_server
from snapline.cli.main import app, main
from snapline.errors import (
    CheckpointDamagedWarning,
    ConfigError,
    CorruptCheckpoint,
    StoreError,
    StoreLocked,
)
from snapline.store import ObjectStore, Store, open_store
from snapline.store.manifest import manifest_key

LEASE_S = 1.0
SLACK_S = 0.5
"""A short lock lease and clock slack (one machine, one clock), so a writer killed while holding
the lock frees it within seconds."""


def state(seed: int, mib: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"w": rng.random(mib * 131_072), "step": seed, "name": f"state {seed}"}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a
    )


def s3_store(url: str, **kwargs: Any) -> Store:
    backend = ObjectStore(url, lock_lease_s=LEASE_S, clock_slack_s=SLACK_S)
    return open_store(backend, chunk_bytes=1 << 20, **kwargs)


def objects(server: S3Server, bucket: str, prefix: str) -> list[str]:
    client: Any = server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture
def persistent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    with running_server(tmp_path / "server", persist=True) as server:
        for name, value in client_env(server.endpoint).items():
            monkeypatch.setenv(name, value)
        yield server


@pytest.mark.parametrize(
    ("kill_after_mib", "new_mib"), [(2, 12), pytest.param(30, 48, marks=pytest.mark.slow)]
)
def test_server_killed_mid_save_then_restarted_holds_the_old_or_the_new_checkpoint(
    persistent: S3Server, kill_after_mib: int, new_mib: int
) -> None:
    # The server records request bodies in base64 (4/3 of their size): a kill after
    # kill_after_mib of records lands well before the end of a save of new_mib.
    bucket = persistent.new_bucket("crash")
    url = f"s3://{bucket}/job/rank-0"
    old, new = state(1, 2), state(2, new_mib)
    with s3_store(url) as store:
        store.save(old, step=1)
    assert persistent.recording is not None
    received = persistent.recording.stat().st_size
    outcome: dict[str, BaseException | None] = {}

    def save_new() -> None:
        try:
            with s3_store(url) as store:
                store.save(new, step=2)
            outcome["error"] = None
        except BaseException as exc:
            outcome["error"] = exc

    saver = threading.Thread(target=save_new)
    saver.start()
    # Kill once the server has received part of the new checkpoint (its recording grew).
    deadline = time.monotonic() + 60
    while persistent.recording.stat().st_size < received + kill_after_mib * (1 << 20):
        assert saver.is_alive() and time.monotonic() < deadline, "the save ended too early"
        time.sleep(0.005)
    persistent.kill()
    saver.join(120)
    assert not saver.is_alive()
    error = outcome["error"]
    assert isinstance(error, StoreError), error
    assert "cannot reach the object store" in str(error) and SECRET_KEY not in str(error)

    persistent.restart()
    with s3_store(url, lock_timeout_s=30) as store:
        steps = store.steps()
        assert steps in ([1], [1, 2])
        assert same(store.load(), new if steps == [1, 2] else old)
        assert same(store.load(step=1), old)
        assert store.verify().ok
        store.gc()  # whatever packs of the crashed save the server kept are reclaimed
        assert store.verify().ok and store.steps() == steps
        referenced = {c.key for s in steps for c in store.manifest(s).chunks}
        assert set(store.backend.list_keys("chunks/")) == referenced
        assert "lock" not in store.backend.list_keys("")
        store.save(state(3, 1), step=3)  # the store is writable again
        assert store.steps() == [*steps, 3]


CLIENT = textwrap.dedent(
    """
    import os
    import signal
    import sys
    import numpy as np
    from snapline.store import ObjectStore, open_store

    url, lease, mib, how = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    stopped = []

    def progress(done, total):
        # "pause": stop this process once, when a stream's packs are up, before the commit.
        if how == "pause" and done < total and not stopped:
            stopped.append(True)
            os.kill(os.getpid(), signal.SIGSTOP)

    backend = ObjectStore(url, lock_lease_s=lease, clock_slack_s=lease / 2)
    with open_store(backend, chunk_bytes=1 << 20) as store:
        print("saving", flush=True)
        w = np.random.default_rng(7).random(mib * 131_072)
        store.save({"w": w}, step=2, progress=progress)
    print("saved", flush=True)
    """
)


def test_client_killed_mid_upload_leaves_the_old_checkpoint_and_gc_reclaims_its_chunks(
    s3_env: S3Server, tmp_path: Path
) -> None:
    bucket = s3_env.new_bucket("client")
    url = f"s3://{bucket}/p"
    old = state(1, 2)
    with s3_store(url) as store:
        store.save(old, step=1)
    before = objects(s3_env, bucket, "p/chunks/packs/")
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    child = subprocess.Popen(
        [sys.executable, str(script), url, str(LEASE_S), "24", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **client_env(s3_env.endpoint)},
    )
    try:
        # Kill it once one of its packs is up (24 MiB is 6 packs of 4 MiB, 4 streams).
        deadline = time.monotonic() + 60
        while len(objects(s3_env, bucket, "p/chunks/packs/")) < len(before) + 1:
            assert child.poll() is None, child.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        output, _ = child.communicate(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL and "saved" not in output
    assert "p/lock" in objects(s3_env, bucket, "p/")  # the dead writer still "holds" it
    with s3_store(url, lock_timeout_s=30) as store:
        assert store.steps() == [1]
        assert same(store.load(), old)
        report = store.gc()  # waits for the dead writer's lease, then breaks its lock
        assert report.deleted_chunks >= 1
        assert store.verify().ok and same(store.load(), old)
    assert objects(s3_env, bucket, "p/chunks/packs/") == before
    assert "p/lock" not in objects(s3_env, bucket, "p/")


def _flip(server: S3Server, bucket: str, key: str, at: int) -> None:
    client: Any = server.client()
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[at % len(data)] ^= 0x10
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


def test_bit_flips_in_objects_are_caught_and_load_falls_back(s3_env: S3Server) -> None:
    bucket = s3_env.new_bucket("flip")
    url = f"s3://{bucket}/p"
    with s3_store(url) as store:
        store.save(state(1, 2), step=1)
        store.save(state(2, 2), step=2)
        store.save(state(3, 2), step=3)
        pack = next(c.key for c in store.manifest(3).chunks if c.pack)
        assert pack not in {c.key for c in store.manifest(2).chunks}
    _flip(s3_env, bucket, f"p/{pack}", at=12345)
    _flip(s3_env, bucket, f"p/{manifest_key(2)}", at=40)
    with s3_store(url) as store:
        with pytest.warns(CheckpointDamagedWarning) as warned:
            assert same(store.load(), state(1, 2))
        assert len(warned) == 2  # step 3 (a chunk) and step 2 (its manifest) were skipped
        with pytest.raises(CorruptCheckpoint, match="hash mismatch"):
            store.load(step=3)
        report = store.verify()
        assert report.damaged_steps == (2, 3)
        assert any(d.key == pack for d in report.damage)


def test_wrong_bucket_gives_a_clear_error(s3_env: S3Server) -> None:
    with pytest.raises(StoreError, match=r"bucket 'no-such-bucket-x' does not exist.*Create it"):
        open_store("s3://no-such-bucket-x/p")


def test_dead_endpoint_gives_a_clear_error(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3_support import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreError, match=r"cannot reach the object store at http://127\.0\.0\.1"):
        open_store("s3://any-bucket/p")


@pytest.fixture
def auth_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A server that checks signatures, with one IAM user allowed everything on S3."""
    import boto3

    with running_server(tmp_path / "auth") as server:
        iam: Any = boto3.client(
            "iam",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="trainer")
        policy = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
        iam.put_user_policy(
            UserName="trainer",
            PolicyName="s3",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [policy]}),
        )
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        bucket = server.new_bucket("auth")
        server.require_auth()
        for name, value in client_env(server.endpoint).items():
            monkeypatch.setenv(name, value)
        yield {
            "url": f"s3://{bucket}/p",
            "key": key["AccessKeyId"],
            "secret": key["SecretAccessKey"],
        }


def test_bad_credentials_give_a_clear_error_without_the_secret(
    auth_server: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = auth_server["url"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", auth_server["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", auth_server["secret"])
    with open_store(url) as store:
        store.save({"a": 1}, step=1)
    wrong = "wrong-secret-for-the-test-9876543210"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(StoreError, match="access denied") as denied:
        open_store(url)
    assert wrong not in str(denied.value) and auth_server["secret"] not in str(denied.value)
    with pytest.raises(SystemExit) as exited:
        main(["ls", url])
    assert exited.value.code == 1
    said = capsys.readouterr()
    assert "access denied" in said.err and wrong not in said.err + said.out
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    with pytest.raises(StoreError, match="access denied"):
        open_store(url)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="no credentials found"):
        open_store(url)


def test_every_store_command_takes_the_url(s3_env: S3Server) -> None:
    url = f"s3://{s3_env.new_bucket('cli')}/p"
    with s3_store(url) as store:
        store.save(state(1, 1), step=1)
        store.save(state(2, 1), step=2, meta={"loss": 0.5})
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        return result.output

    assert "loss=0.5" in run("ls", url) and url in run("ls", url)
    assert "'w'" in run("inspect", url, "--step", "2")
    assert "ok" in run("verify", url)
    assert "differ" in run("diff", url, "1", "2")
    assert "deleted steps: 1" in run("gc", url, "--keep-last", "1")
    assert SECRET_KEY not in run("ls", url)


@pytest.mark.slow  # four fresh interpreters importing s3fs: slow on a small machine
def test_the_s3_howto_runs_as_written(tmp_path: Path) -> None:
    """docs/howto/s3.md: its Python block, then its `snapline` commands, against a server."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "howto" / "s3.md").read_text()
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", page, re.M | re.S)
    python = [code for lang, code in blocks if lang == "python"]
    commands = [
        line.split("#")[0].split()
        for lang, code in blocks
        if lang == "bash"
        for line in code.splitlines()
        if line.startswith("snapline ")
    ]
    assert len(python) == 1 and len(commands) == 3
    with running_server(tmp_path / "server") as server:
        server.client().create_bucket(Bucket="my-bucket")  # type: ignore[attr-defined]
        env = {**os.environ, **client_env(server.endpoint)}
        for argv in [[sys.executable, "-c", python[0]], *commands]:
            if argv[0] == "snapline":
                argv = [sys.executable, "-m", "snapline", *argv[1:]]
            done = subprocess.run(
                argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 0, done.stdout + done.stderr
            assert SECRET_KEY not in done.stdout + done.stderr
            if argv[-1] == python[0]:
                assert done.stdout.strip() == "[3]"


def test_a_paused_writer_whose_lock_was_broken_cannot_commit_over_the_new_holder(
    s3_env: S3Server, tmp_path: Path
) -> None:
    """A writer stopped (SIGSTOP) mid-save until its lease runs out; another writer breaks the
    lock and commits the same step; the first, resumed, finds the step taken: the conditional
    PUT of the manifest refuses it, and the second writer's checkpoint stands."""
    bucket = s3_env.new_bucket("race")
    url = f"s3://{bucket}/p"
    with s3_store(url) as store:
        store.save(state(1, 1), step=1)
    before = objects(s3_env, bucket, "p/chunks/packs/")
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    child = subprocess.Popen(
        [sys.executable, str(script), url, str(LEASE_S), "12", "pause"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **client_env(s3_env.endpoint)},
    )
    try:
        # The child stops itself once a stream is up (before its commit, deterministically).
        _, status = os.waitpid(child.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), status
        assert len(objects(s3_env, bucket, "p/chunks/packs/")) > len(before)
        winner = state(2, 1)
        with s3_store(url, lock_timeout_s=30) as store:
            store.save(winner, step=2)  # breaks the paused writer's lock once its lease is over
        child.send_signal(signal.SIGCONT)
        output, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0 and "saved" not in output
    assert "committed by another writer while this save ran" in output
    with s3_store(url) as store:
        assert store.steps() == [1, 2]
        assert same(store.load(), winner)
        store.gc()
        assert store.verify().ok
        referenced = {c.key for s in (1, 2) for c in store.manifest(s).chunks}
        assert set(store.backend.list_keys("chunks/")) == referenced


def test_gc_aborts_multipart_uploads_a_crashed_writer_left_open(s3_env: S3Server) -> None:
    bucket = s3_env.new_bucket("mpu")
    with s3_store(f"s3://{bucket}/p") as store:
        store.save(state(1, 1), step=1)
        client: Any = s3_env.client()
        client.create_multipart_upload(Bucket=bucket, Key="p/chunks/packs/big.pack")
        client.create_multipart_upload(Bucket=bucket, Key="elsewhere/not-ours")
        assert store.gc().removed_partial_writes == 1
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert [u["Key"] for u in uploads] == ["elsewhere/not-ours"]


def test_without_conditional_writes_the_lock_object_still_excludes_and_commits_check(
    s3_env: S3Server,
) -> None:
    """The fallback for servers that ignore If-None-Match, forced on (this server honours it)."""
    url = f"s3://{s3_env.new_bucket('nocond')}/p"
    with s3_store(url) as a, s3_store(url, lock_timeout_s=0.5) as b:
        a.backend._conditional = False  # type: ignore[attr-defined]
        b.backend._conditional = False  # type: ignore[attr-defined]
        with a.backend.writer_lock(5), pytest.raises(StoreLocked, match="another writer"):
            b.save({"x": 1}, step=1)
        b.save({"x": 1}, step=1)
        with a.backend.writer_lock(5), pytest.raises(ConfigError, match="another writer"):
            a.backend.finalizer.commit(a.backend, manifest_key(1), b"{}")
        assert a.load() == {"x": 1}
