"""The crash tests' S3 server (s3_journal_server.py): after a kill -9 and a restart it holds
exactly what it had acknowledged, however the requests overlapped."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from s3_journal_server import journal_records
from s3_support import S3Server, running_server


def test_a_torn_last_record_is_cut_off_and_a_damaged_one_elsewhere_refused(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal.jsonl"
    whole = [{"environ": {"REQUEST_METHOD": "PUT"}, "body": str(i)} for i in range(3)]
    text = b"".join(json.dumps(r).encode() + b"\n" for r in whole)
    journal.write_bytes(text + b'{"environ": {"REQUEST_ME')
    assert journal_records(journal) == whole
    assert journal.read_bytes() == text  # appends go on after the last whole record
    assert journal_records(tmp_path / "none.jsonl") == []
    # What moto's recorder could write: a record glued between another's JSON and newline.
    first, second, third = text.split(b"\n")[:3]
    journal.write_bytes(first + second + b"\n" + b"\n" + third + b"\n")
    with pytest.raises(ValueError, match="record 1 is damaged"):
        journal_records(journal)


def _objects(server: S3Server, bucket: str) -> dict[str, bytes]:
    client: Any = server.client()
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def test_every_acknowledged_request_survives_a_kill_and_restart(tmp_path: Path) -> None:
    """Many overlapping PUTs, big (records written in more than one piece by moto's recorder)
    and small, then deletes and overwrites: the restarted server holds what was acknowledged.
    The old recorder lost a big PUT whenever a small record landed inside its record."""
    with running_server(tmp_path / "server", persist=True) as server:
        bucket = server.new_bucket("journal")
        clients = [server.client() for _ in range(8)]

        def put(i: int) -> tuple[str, bytes]:
            key, body = f"k/{i:03d}", os.urandom(300_000 if i % 2 else 200)
            client: Any = clients[i % len(clients)]
            client.put_object(Bucket=bucket, Key=key, Body=body)
            return key, body

        with ThreadPoolExecutor(len(clients)) as pool:
            acked = dict(pool.map(put, range(160)))
        client: Any = clients[0]
        for key in list(acked)[:10]:
            client.delete_object(Bucket=bucket, Key=key)
            del acked[key]
        client.put_object(Bucket=bucket, Key="k/010", Body=b"overwritten")
        acked["k/010"] = b"overwritten"
        assert _objects(server, bucket) == acked
        assert server.recording is not None
        records = journal_records(server.recording)
        assert len(records) == 1 + 160 + 10 + 1  # the bucket, the PUTs, the DELETEs, the PUT
        server.kill()
        with open(server.recording, "ab") as journal:  # a PUT torn by the kill: never answered
            journal.write(b'{"environ": {"REQUEST_METHOD": "PUT", "PATH_INFO": "/' + b"x" * 999)
        server.restart()
        assert _objects(server, bucket) == acked
        client = server.client()
        client.put_object(Bucket=bucket, Key="after", Body=b"restart")  # still journaled
        acked["after"] = b"restart"
        server.kill()
        server.restart()
        assert _objects(server, bucket) == acked
