"""Global commit records: format, atomic write, and what a reader makes of leftovers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapline.errors import CorruptCheckpoint
from snapline.mpi._commit import (
    CommitRecord,
    encode_record,
    parse_record,
    read_records,
    remove_record,
    write_record,
)


def test_a_record_round_trips_and_has_the_documented_fields() -> None:
    record = CommitRecord(step=40, ranks=3, created_unix_s=1700000000.5)
    data = encode_record(record)
    assert json.loads(data) == {
        "format": "snapline-mpi-commit",
        "format_version": 1,
        "step": 40,
        "ranks": 3,
        "created_unix_s": 1700000000.5,
    }
    assert parse_record(data, where="x") == record


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "not a snapline-mpi-commit record"),
        (b'{"format": "other"}', "not a snapline-mpi-commit record"),
        (
            b'{"format": "snapline-mpi-commit", "format_version": 2, "step": 1, "ranks": 1,'
            b' "created_unix_s": 0}',
            "Upgrade snapline",
        ),
        (
            b'{"format": "snapline-mpi-commit", "format_version": 1, "step": "1", "ranks": 1,'
            b' "created_unix_s": 0}',
            "integers",
        ),
        (
            b'{"format": "snapline-mpi-commit", "format_version": 1, "step": 1, "ranks": 0,'
            b' "created_unix_s": 0}',
            "ranks must be",
        ),
        (
            b'{"format": "snapline-mpi-commit", "format_version": 1, "step": 1, "ranks": 2,'
            b' "created_unix_s": true}',
            "created_unix_s",
        ),
    ],
)
def test_malformed_records_are_corrupt_and_say_why(data: bytes, says: str) -> None:
    with pytest.raises(CorruptCheckpoint, match=says):
        parse_record(data, where="commits/x.json")


def test_write_lists_and_removes_records_and_ignores_leftovers(tmp_path: Path) -> None:
    for step in (20, 10):
        write_record(tmp_path, CommitRecord(step=step, ranks=2, created_unix_s=1.0))
    commits = tmp_path / "commits"
    # What a crash during a write leaves: a temporary file, never a record.
    (commits / ".000000000030.json.tmp-123").write_text('{"torn')
    (commits / "000000000040.json").write_text('{"torn')  # damaged by hand
    (commits / "notes.txt").write_text("not a record")
    records, problems = read_records(tmp_path)
    assert [r.step for r in records] == [10, 20]
    assert len(problems) == 1 and "000000000040.json" in problems[0]
    remove_record(tmp_path, 10)
    remove_record(tmp_path, 99)  # absent: nothing to do
    assert [r.step for r in read_records(tmp_path)[0]] == [20]


def test_a_record_under_the_wrong_name_is_not_trusted(tmp_path: Path) -> None:
    write_record(tmp_path, CommitRecord(step=5, ranks=1, created_unix_s=1.0))
    (tmp_path / "commits" / "000000000005.json").rename(tmp_path / "commits" / "000000000006.json")
    records, problems = read_records(tmp_path)
    assert records == [] and "names step 5" in problems[0]


def test_no_commits_directory_means_no_records(tmp_path: Path) -> None:
    assert read_records(tmp_path) == ([], [])
