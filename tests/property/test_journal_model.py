"""Hypothesis: any sequence of key-value ops, checkpoints, reopenings and crashes leaves the
journal's state equal to a plain dict that saw the same acknowledged ops.

A "crash" leaves the files as ``kill -9`` would (the last segment in progress, optionally with
a torn, never-acknowledged record at its end); a "reopen" is a clean close and open.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapline.journal import (
    KEY_VALUE,
    Journal,
    JournalConfig,
    JournalWarning,
    kv_clear,
    kv_delete,
    kv_set,
    open_journal,
)
from snapline.journal._format import encode_op, frame_record, inprogress_name, parse_segment_name

keys = st.sampled_from(["a", "b", "c", "d", 1, 2])
values = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=3))
steps = st.lists(
    st.one_of(
        st.tuples(st.just("set"), keys, values),
        st.tuples(st.just("delete"), keys),
        st.tuples(st.just("clear")),
        st.tuples(st.just("batch"), st.lists(st.tuples(keys, values), max_size=4)),
        st.tuples(st.just("checkpoint")),
        st.tuples(st.just("reopen")),
        st.tuples(st.just("crash"), st.booleans()),
    ),
    max_size=30,
)


def _crash(journal: Journal, torn: bool) -> None:
    """Close, then make the directory look like a ``kill -9`` left it."""
    directory = journal.directory
    next_txid = journal.last_txid + 1
    journal.close()
    segs = sorted(
        (s for p in directory.iterdir() if (s := parse_segment_name(p)) is not None),
        key=lambda s: s.first_txid,
    )
    for seg in segs:
        if not seg.finalized:
            seg.path.unlink()
    finalized = [s for s in segs if s.finalized]
    if finalized and finalized[-1].last_txid == next_txid - 1:
        path = directory / inprogress_name(finalized[-1].first_txid)
        os.replace(finalized[-1].path, path)
        if torn:  # a record the crash interrupted: half written, never acknowledged
            frame = frame_record(next_txid, encode_op(kv_set("torn", 1)))
            with open(path, "ab") as f:
                f.write(frame[: len(frame) // 2])


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(script=steps, images_kept=st.integers(1, 3))
def test_journal_state_matches_a_dict_model(script: list[Any], images_kept: int) -> None:
    config = JournalConfig(checkpointer="off", checkpoint_period_s=None, images_kept=images_kept)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", JournalWarning)
        directory = Path(tmp) / "j"
        model: dict[Any, Any] = {}
        journal = open_journal(directory, KEY_VALUE, config)
        try:
            for step in script:
                match step:
                    case ("set", key, value):
                        journal.append(kv_set(key, value))
                        model[key] = value
                    case ("delete", key):
                        journal.append(kv_delete(key))
                        model.pop(key, None)
                    case ("clear",):
                        journal.append(kv_clear())
                        model.clear()
                    case ("batch", pairs):
                        journal.append_batch([kv_set(k, v) for k, v in pairs])
                        model.update(pairs)
                    case ("checkpoint",):
                        journal.checkpoint()
                    case ("reopen",):
                        journal.close()
                        journal = open_journal(directory, KEY_VALUE, config)
                    case ("crash", torn):
                        _crash(journal, torn)
                        journal = open_journal(directory, KEY_VALUE, config)
                    case _:
                        raise AssertionError(step)
                assert journal.state == model
            journal.close()
            journal = open_journal(directory, KEY_VALUE, config)
            assert journal.state == model
        finally:
            journal.close()
