"""The Journal: group commit, recovery, torn tails, checkpointer, retention, errors, log mode.

Everything runs on real files with real fsyncs. A crash is left behind the way ``kill -9``
leaves it: the last segment stays ``edits_inprogress_*`` (``_crashed`` renames the segment a
clean close finalized back to its in-progress name); the real ``kill -9`` runs are in
tests/integration/test_journal_kill9.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from snapline.errors import ConfigError, EncodeError, JournalError
from snapline.journal import (
    KEY_VALUE,
    JournalConfig,
    JournalWarning,
    StateMachine,
    _writer,
    inspect_journal,
    kv_clear,
    kv_delete,
    kv_set,
    open_journal,
)
from snapline.journal._format import inprogress_name, parse_segment_name

MANUAL = JournalConfig(checkpoint_period_s=None, checkpoint_every_ops=None, checkpointer="off")


def _segments(directory: Path) -> list[Any]:
    segs = [s for p in directory.iterdir() if (s := parse_segment_name(p)) is not None]
    return sorted(segs, key=lambda s: s.first_txid)


def _images(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("image_*") if p.name[-1].isdigit())


def _crashed(directory: Path) -> Path:
    """Turn the newest finalized segment back into the in-progress one a crash leaves."""
    for seg in _segments(directory):
        if not seg.finalized:
            seg.path.unlink()  # the empty segment a clean close leaves after a reopen
    last = _segments(directory)[-1]
    assert last.finalized
    path = directory / inprogress_name(last.first_txid)
    os.replace(last.path, path)
    return path


def _wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


# -- group commit ----------------------------------------------------------------------


def test_concurrent_appends_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = _writer._fdatasync
    calls = []

    def counting_fdatasync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(_writer, "_fdatasync", counting_fdatasync)
    threads_n, per_thread = 16, 40
    with open_journal(tmp_path / "j", KEY_VALUE, MANUAL) as journal:

        def work(t: int) -> None:
            for i in range(per_thread):
                journal.append(kv_set(f"{t}:{i}", i))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ops = threads_n * per_thread
        assert journal.stats.ops == ops and len(journal.state) == ops
        # Real fdatasync calls, counted outside the writer: many ops per fsync.
        assert len(calls) == journal.stats.fsyncs
        assert len(calls) < ops / 2, (len(calls), ops)
        assert journal.stats.batch_ops_largest > 1


def test_a_batch_is_one_fsync_and_batch_ops_max_one_is_one_per_op(tmp_path: Path) -> None:
    with open_journal(tmp_path / "a", KEY_VALUE, MANUAL) as journal:
        txids = journal.append_batch([kv_set(i, i) for i in range(100)])
        assert txids == list(range(1, 101))
        assert journal.stats.fsyncs == 1
    config = JournalConfig(checkpointer="off", batch_ops_max=1)
    with open_journal(tmp_path / "b", KEY_VALUE, config) as journal:
        journal.append_batch([kv_set(i, i) for i in range(20)])
        assert journal.stats.fsyncs == 20 and journal.stats.batch_ops_largest == 1


def test_append_async_resolves_to_txid_once_durable(tmp_path: Path) -> None:
    with open_journal(tmp_path / "j", KEY_VALUE, MANUAL) as journal:
        futures = [journal.append_async(kv_set("k", i)) for i in range(10)]
        assert [f.result(5) for f in futures] == list(range(1, 11))
        assert journal.durable_txid == 10
        assert journal.view(lambda s: s["k"]) == 9


# -- recovery ----------------------------------------------------------------------------


def test_reopen_replays_the_log(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with open_journal(d, KEY_VALUE, MANUAL) as journal:
        journal.append(kv_set("a", (1, 2)))
        journal.append(kv_set("b", {"x": b"y"}))
        journal.append(kv_delete("a"))
        live = dict(journal.state)
    with open_journal(d, KEY_VALUE, MANUAL) as journal:
        assert journal.state == live == {"b": {"x": b"y"}}
        assert journal.recovery.ops_replayed == 3 and journal.recovery.torn_tail is None
        assert journal.append(kv_clear()) == 4


def test_truncated_tail_is_cut_not_replayed(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with open_journal(d, KEY_VALUE, MANUAL) as journal:
        for i in range(5):
            journal.append(kv_set(f"k{i}", i))
    path = _crashed(d)
    size = path.stat().st_size
    os.truncate(path, size - 3)
    with pytest.warns(JournalWarning, match=rf"{path.name}.*torn tail at offset"):
        journal = open_journal(d, KEY_VALUE, MANUAL)
    with journal:
        assert journal.state == {f"k{i}": i for i in range(4)}
        assert journal.recovery.torn_tail is not None
        # Recovery cut the file there, then finalized it as edits_1-4.
        assert journal.recovery.torn_tail.offset == _segments(d)[0].path.stat().st_size
        assert journal.append(kv_set("new", 1)) == 5
    with open_journal(d, KEY_VALUE, MANUAL) as journal:  # clean now: no warning
        assert journal.state == {**{f"k{i}": i for i in range(4)}, "new": 1}


def test_garbage_after_the_last_record_is_cut(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with open_journal(d, KEY_VALUE, MANUAL) as journal:
        journal.append_batch([kv_set(f"k{i}", i) for i in range(5)])
    path = _crashed(d)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(os.urandom(37))
    with pytest.warns(JournalWarning, match=f"offset {size}"):
        journal = open_journal(d, KEY_VALUE, MANUAL)
    with journal:
        assert journal.state == {f"k{i}": i for i in range(5)}
        assert journal.recovery.torn_tail is not None
        assert journal.recovery.torn_tail.bytes_cut == 37


def test_damage_before_valid_records_is_an_error_not_a_cut(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with open_journal(d, KEY_VALUE, MANUAL) as journal:
        journal.append_batch([kv_set(f"k{i}", i) for i in range(6)])
    path = _crashed(d)
    raw = bytearray(path.read_bytes())
    raw[60] ^= 0xFF  # inside the second record
    path.write_bytes(bytes(raw))
    with pytest.raises(JournalError, match="damaged in the middle"):
        open_journal(d, KEY_VALUE, MANUAL)
    assert path.read_bytes() == bytes(raw)  # nothing was cut


def test_damaged_finalized_segment_is_an_error(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with open_journal(d, KEY_VALUE, MANUAL) as journal:
        journal.append_batch([kv_set(f"k{i}", i) for i in range(6)])
    seg = _segments(d)[0]
    raw = bytearray(seg.path.read_bytes())
    raw[-2] ^= 0xFF
    seg.path.write_bytes(bytes(raw))
    with pytest.raises(JournalError, match=rf"finalized edit-log segment .*{seg.path.name}"):
        open_journal(d, KEY_VALUE, MANUAL)


def test_damaged_segment_covered_by_the_image_does_not_matter(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with open_journal(d, KEY_VALUE, JournalConfig(checkpointer="off", images_kept=2)) as journal:
        journal.append_batch([kv_set(f"a{i}", i) for i in range(5)])
        journal.checkpoint()
        journal.append_batch([kv_set(f"b{i}", i) for i in range(5)])
        journal.checkpoint()  # image_10; edits 6..10 kept for the older image_5
        expected = dict(journal.state)
    covered = next(s for s in _segments(d) if s.first_txid == 6)
    raw = bytearray(covered.path.read_bytes())
    raw[-2] ^= 0xFF
    covered.path.write_bytes(bytes(raw))
    with open_journal(d, KEY_VALUE, MANUAL) as journal:
        assert journal.state == expected and journal.recovery.image_txid == 10


def test_damaged_newest_image_falls_back_to_an_older_one(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with open_journal(d, KEY_VALUE, MANUAL) as journal:
        journal.append_batch([kv_set(f"a{i}", i) for i in range(5)])
        assert journal.checkpoint() == 5
        journal.append_batch([kv_delete("a0"), kv_set("z", 1)])
        assert journal.checkpoint() == 7
        journal.append(kv_set("tail", 1))
        expected = dict(journal.state)
    newest = d / _images(d)[-1]
    raw = bytearray(newest.read_bytes())
    raw[-1] ^= 0x10
    newest.write_bytes(bytes(raw))
    with pytest.warns(JournalWarning, match="damaged journal image"):
        journal = open_journal(d, KEY_VALUE, MANUAL)
    with journal:
        assert journal.state == expected
        assert journal.recovery.image_txid == 5
        assert journal.recovery.damaged_images == (newest.name,)
        assert journal.recovery.ops_replayed == 3
    assert (d / (newest.name + ".corrupt")).exists() and not newest.exists()


# -- checkpointer and retention ------------------------------------------------------------


def test_checkpointer_runs_on_its_period(tmp_path: Path) -> None:
    config = JournalConfig(checkpoint_period_s=0.1, checkpoint_every_ops=None)
    with open_journal(tmp_path / "j", KEY_VALUE, config) as journal:
        journal.append(kv_set("a", 1))
        _wait_for(lambda: journal.image_txid == 1)
        journal.append(kv_set("b", 2))
        _wait_for(lambda: journal.image_txid == 2)
        assert journal.last_checkpoint_error is None
    assert _images(tmp_path / "j")[-1].endswith("2")


def test_checkpointer_runs_after_n_operations(tmp_path: Path) -> None:
    config = JournalConfig(checkpoint_period_s=None, checkpoint_every_ops=50)
    with open_journal(tmp_path / "j", KEY_VALUE, config) as journal:
        journal.append_batch([kv_set(i, i) for i in range(30)])
        time.sleep(0.3)
        assert journal.image_txid == 0  # below the count, and no period
        journal.append_batch([kv_set(i, i) for i in range(30, 60)])
        _wait_for(lambda: journal.checkpoint_runs >= 1)
        assert journal.image_txid >= 50


def test_checkpoint_in_a_separate_process(tmp_path: Path) -> None:
    d = tmp_path / "j"
    config = JournalConfig(checkpointer="process", checkpoint_period_s=None)
    with open_journal(d, KEY_VALUE, config) as journal:
        journal.append_batch([kv_set(f"k{i}", i) for i in range(20)])
        assert journal.checkpoint() == 20
        journal.append(kv_delete("k0"))
        expected = dict(journal.state)
    assert _images(d) == ["image_" + "20".zfill(19)]
    with open_journal(d, KEY_VALUE, MANUAL) as journal:
        assert journal.state == expected and journal.recovery.image_txid == 20


def test_process_checkpointer_needs_an_importable_machine(tmp_path: Path) -> None:
    machine = StateMachine(name="local", initial=list, apply=lambda s, op: [*s, op])
    with pytest.raises(ConfigError, match="separate checkpointer process"):
        open_journal(tmp_path / "j", machine, JournalConfig(checkpointer="process"))


def test_retention_keeps_n_images_and_the_edits_after_the_oldest(tmp_path: Path) -> None:
    d = tmp_path / "j"
    config = JournalConfig(checkpointer="off", images_kept=2)
    with open_journal(d, KEY_VALUE, config) as journal:
        for round_ in range(4):
            journal.append_batch([kv_set(f"r{round_}:{i}", i) for i in range(5)])
            journal.checkpoint()
        journal.append(kv_set("tail", 0))
        expected = dict(journal.state)
    assert _images(d) == ["image_" + "15".zfill(19), "image_" + "20".zfill(19)]
    segs = _segments(d)
    assert segs[0].first_txid == 16  # edits 1..15 are in image_15 and were deleted
    # Losing the newest image still recovers from the oldest kept one and its edits.
    (d / _images(d)[-1]).unlink()
    with open_journal(d, KEY_VALUE, MANUAL) as journal:
        assert journal.state == expected and journal.recovery.image_txid == 15


# -- errors ------------------------------------------------------------------------------


def test_a_second_writer_gets_a_clear_error(tmp_path: Path) -> None:
    with (
        open_journal(tmp_path / "j", KEY_VALUE, MANUAL),
        pytest.raises(JournalError, match="already open for writing"),
    ):
        open_journal(tmp_path / "j", KEY_VALUE, MANUAL)
    open_journal(tmp_path / "j", KEY_VALUE, MANUAL).close()  # released on close


def test_not_a_journal_directory(tmp_path: Path) -> None:
    (tmp_path / "other.txt").write_text("hello")
    with pytest.raises(JournalError, match="not a journal directory"):
        open_journal(tmp_path, KEY_VALUE, MANUAL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.txt"]  # nothing created
    with pytest.raises(JournalError, match="does not exist"):
        open_journal(tmp_path / "missing", KEY_VALUE, MANUAL, create=False)


def test_unknown_version_and_wrong_mode(tmp_path: Path) -> None:
    d = tmp_path / "j"
    open_journal(d, KEY_VALUE, MANUAL).close()
    with pytest.raises(JournalError, match="created in state mode"):
        open_journal(d, None, MANUAL)
    marker = json.loads((d / "journal.json").read_text())
    (d / "journal.json").write_text(json.dumps({**marker, "version": 7}))
    with pytest.raises(JournalError, match="version 7 is not supported"):
        open_journal(d, KEY_VALUE, MANUAL)


def test_bad_ops_are_rejected_and_not_logged(tmp_path: Path) -> None:
    with open_journal(tmp_path / "j", KEY_VALUE, MANUAL) as journal:
        with pytest.raises(EncodeError, match="not plain data"):
            journal.append(kv_set("k", object()))
        with pytest.raises(JournalError, match="rejected"):
            journal.append({"op": "explode"})
        with pytest.raises(JournalError, match="rejected"):
            journal.append({"op": "set", "key": ["unhashable"], "value": 1})
        assert journal.append(kv_set("ok", 1)) == 1
    with open_journal(tmp_path / "j", KEY_VALUE, MANUAL) as journal:
        assert journal.state == {"ok": 1}


def test_bad_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="images_kept"):
        JournalConfig(images_kept=0)
    with pytest.raises(ConfigError, match="checkpointer"):
        JournalConfig(checkpointer="fork")  # type: ignore[arg-type]


def test_closed_journal_refuses_appends(tmp_path: Path) -> None:
    journal = open_journal(tmp_path / "j", KEY_VALUE, MANUAL)
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.append(kv_set("a", 1))


# -- log mode ----------------------------------------------------------------------------


def test_log_mode_reads_from_a_txid_and_discards(tmp_path: Path) -> None:
    d = tmp_path / "log"
    with open_journal(d, None, MANUAL) as log:
        log.append_batch([{"msg": i} for i in range(10)])
        assert [r.txid for r in log.read(8)] == [8, 9, 10]
        assert log.roll() == 10
        log.append_batch([{"msg": i} for i in range(10, 15)])
        assert [r.op["msg"] for r in log.read(9)] == [8, 9, 10, 11, 12, 13, 14]
        first = _segments(d)[0].path.name
        assert [p.name for p in log.discard_before(11)] == [first]
        with pytest.raises(JournalError, match="no longer in the edit log"):
            list(log.read(3))
        with pytest.raises(JournalError, match="no state to checkpoint"):
            log.checkpoint()
    with open_journal(d, None, MANUAL) as log:
        assert log.append({"msg": 15}) == 16
        assert [r.op["msg"] for r in log.read(11)] == [10, 11, 12, 13, 14, 15]


def test_inspect_reports_images_segments_and_a_torn_tail(tmp_path: Path) -> None:
    d = tmp_path / "j"
    with open_journal(d, KEY_VALUE, MANUAL) as journal:
        journal.append_batch([kv_set(i, i) for i in range(4)])
        journal.checkpoint()
        journal.append_batch([kv_set(i, i) for i in range(4, 7)])
    path = _crashed(d)
    with open(path, "ab") as f:
        f.write(b"\x01\x02\x03")
    report = inspect_journal(d)
    assert [(i.txid, i.entries, i.intact) for i in report.images] == [(4, 4, True)]
    # One image kept so far: edits 1..4 are in it and retention deleted them.
    assert [(s.first_txid, s.last_txid, s.finalized) for s in report.segments] == [(5, 7, False)]
    torn = report.segments[-1]
    assert torn.tail_offset == path.stat().st_size - 3 and torn.problem is not None
    assert path.stat().st_size == torn.size_bytes  # inspect changed nothing
