"""The process level's pure pieces: job spec, job files, output repair, image round trip,
the DMTCP job root's output spool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from snapline.cli.run_cmds import _job_file_commands
from snapline.errors import ConfigError, RuntimeFailure
from snapline.levels.process.images import load_global, newest_global, save_global
from snapline.levels.process.relay import Record, SpoolReader
from snapline.levels.process.supervisor import (
    ProcessJob,
    ProcessJobSpec,
    _repair,
    output_path,
    rank_env,
)
from snapline.store import open_store


def test_spec_round_trips_through_json() -> None:
    spec = ProcessJobSpec(
        commands=[["python", "a.py"], ["python", "b.py", "--x"]],
        interval_s=2.5,
        max_restarts=3,
        hang_timeout_s=9.0,
        keep_checkpoints=4,
    )
    assert ProcessJobSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError):
        ProcessJobSpec.from_json({"format": "something else"})


def test_job_file_lists_one_command_per_rank(tmp_path: Path) -> None:
    path = tmp_path / "job.txt"
    path.write_text("# servers\npython server.py --port 9000\n\n  python 'client x.py' 1\n")
    assert _job_file_commands(path) == [
        ["python", "server.py", "--port", "9000"],
        ["python", "client x.py", "1"],
    ]
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="names no command"):
        _job_file_commands(path)


def test_ranks_learn_rank_and_size_from_the_environment() -> None:
    env = rank_env(2, 5)
    assert (env["SNAPLINE_RANK"], env["SNAPLINE_WORLD_SIZE"]) == ("2", "5")
    assert (env["RANK"], env["WORLD_SIZE"]) == ("2", "5")


def test_output_paths() -> None:
    assert output_path(Path("j"), "out3") == Path("j/output/rank-3.out")
    assert output_path(Path("j"), "err12") == Path("j/output/rank-12.err")


def test_repair_cuts_rolled_back_output_and_adds_what_a_dead_supervisor_did_not_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rank-0.out"
    path.write_bytes(b"a\nb\nc\nrolled back\n")
    _repair(path, 6, b"c\n")
    assert path.read_bytes() == b"a\nb\nc\n"
    path.write_bytes(b"a\n")
    _repair(path, 6, b"b\nc\n")  # committed, then the supervisor died before releasing
    assert path.read_bytes() == b"a\nb\nc\n"
    path.write_bytes(b"")
    with pytest.raises(RuntimeFailure, match="lacks 6 bytes"):
        _repair(path, 6, b"c\n")


def test_images_round_trip_through_the_store_and_share_unchanged_chunks(tmp_path: Path) -> None:
    images = tmp_path / "dump"
    images.mkdir()
    rng = np.random.default_rng(0)
    pages = rng.integers(0, 255, 12 * 2**20, dtype=np.uint8)
    (images / "pages-1.img").write_bytes(pages.tobytes())
    (images / "core-1.img").write_bytes(b"core")
    (images / "empty.img").write_bytes(b"")
    (images / "dump.log").write_text("not an image")
    store = open_store(tmp_path / "images")
    first = save_global(store, 1, images, {"out0": b"held\n"}, {"root": 7})
    pages[:100] += 1  # one 4 MiB chunk changes
    (images / "pages-1.img").write_bytes(pages.tobytes())
    second = save_global(store, 2, images, {}, {"root": 7})
    assert first.written_bytes >= 12 * 2**20
    assert second.written_bytes < 5 * 2**20
    assert newest_global(store) == 2
    meta, output = load_global(store, 1, tmp_path / "back")
    assert meta == {"root": 7}
    assert output == {"out0": b"held\n"}
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == [
        "core-1.img",
        "empty.img",
        "pages-1.img",
    ]
    assert (tmp_path / "back" / "core-1.img").read_bytes() == b"core"
    store.close()


def _record(stream: str, pos: int, data: bytes) -> bytes:
    return b"@" + json.dumps({"s": stream, "p": pos, "n": len(data)}).encode() + b"\n" + data


def test_spool_reader_waits_for_whole_records_and_skips_dmtcp_padding(tmp_path: Path) -> None:
    spool = tmp_path / "relay.spool"
    reader = SpoolReader(spool)
    assert reader.read() == []  # no spool yet
    hello = b'@{"hello": {"status": 0, "out0": 5}, "root": 40000}\n'
    first = _record("out0", 5, b"line\n")
    # DMTCP recreates a spool that was open at the checkpoint padded with NUL bytes.
    spool.write_bytes(b"\0" * 7 + hello + first[:-3])
    records = reader.read()
    assert [r.hello for r in records] == [{"status": 0, "out0": 5}]
    assert records[0].root_vpid == 40000
    with open(spool, "ab") as fh:
        fh.write(first[-3:] + _record("status", 0, b"start 0 41000\n"))
    assert [(r.stream, r.pos, r.data) for r in reader.read()] == [
        ("out0", 5, b"line\n"),
        ("status", 0, b"start 0 41000\n"),
    ]
    reader.reset()
    assert not spool.exists() and reader.read() == []
    spool.write_bytes(b"garbage\n")
    with pytest.raises(RuntimeFailure, match="damaged"):
        reader.read()


class _RelayingBackend:
    """Only what ProcessJob reads before it starts anything: a backend that relays output."""

    name = "relaying"
    relays_output = True


def test_relayed_output_is_cut_released_and_rolled_back_by_position(tmp_path: Path) -> None:
    job = ProcessJob(
        ProcessJobSpec(commands=[["prog"]]),
        tmp_path,
        _RelayingBackend(),  # type: ignore[arg-type]
    )
    (tmp_path / "output").mkdir()
    job._on_record(Record(hello={"status": 0}, root_vpid=40000))
    job._on_record(Record(stream="status", pos=0, data=b"start 0 41000\n"))
    job._on_record(Record(stream="out0", pos=0, data=b"a\nb\n"))
    job._on_record(Record(stream="out0", pos=0, data=b"a\n"))  # a duplicate: dropped
    assert job.rank_vpids == {0: 41000} and bytes(job.held["out0"]) == b"a\nb\n"
    # A checkpoint: 2 bytes were read before it began; "b\n" and "c\n" arrive meanwhile.
    job.cut = {"out0": 2}
    job._on_record(Record(stream="out0", pos=4, data=b"c\n"))
    job._release(job.cut)
    assert (tmp_path / "output" / "rank-0.out").read_bytes() == b"a\n"
    assert bytes(job.held["out0"]) == b"b\nc\n"
    # The restored job root checkpointed at byte 4: "c\n" came from the lost run and goes;
    # the restored run writes something else there (its output need not be deterministic).
    job._on_record(Record(hello={"status": 14, "out0": 4}, root_vpid=40000))
    assert bytes(job.held["out0"]) == b"b\n" and job.rank_vpids == {0: 41000}
    job._on_record(Record(stream="out0", pos=4, data=b"C\n"))
    job._release()
    assert (tmp_path / "output" / "rank-0.out").read_bytes() == b"a\nb\nC\n"
    with pytest.raises(RuntimeFailure, match="skipped bytes"):
        job._on_record(Record(stream="out0", pos=99, data=b"x"))
    # A checkpoint taken while the job root was writing a record: after the restore that
    # record comes first, before the hello that counts it, and the lost run's copy of it
    # was never read. It waits for the hello and is taken after it.
    job.hello, job.held["out0"] = False, bytearray()
    job._on_record(Record(stream="out0", pos=6, data=b"D\n"))
    assert bytes(job.held["out0"]) == b""
    job._on_record(Record(hello={"status": 14, "out0": 8}, root_vpid=40000))
    assert bytes(job.held["out0"]) == b"D\n" and job.pos["out0"] == 8
    job.store.close()
