"""Durable state that changes by operations: an image + edit log, HDFS style.

Theory of operation
-------------------
A journal keeps a state (e.g. a key-value map) or a plain message log durable by logging every
operation before acknowledging it, and bounds recovery time by folding the log into images:

* **Edit log** -- operations (plain data, msgpack; never pickle) get consecutive transaction
  ids (txids) and are appended as framed records (length, txid, xxh3 checksum) to segment
  files ``edits_inprogress_<first>`` / ``edits_<first>-<last>`` (``_format``).
* **Group commit** -- callers in any number of threads ``append`` (blocking) or
  ``append_async`` (future); one writer thread writes whatever is queued with one ``write`` and
  one ``fdatasync`` and then acknowledges all of it (``_writer``). Acknowledged means durable.
* **Images** -- ``image_<txid>`` holds the state after ``txid``, written atomically with a
  checksum (``_image``).
* **Checkpointer** -- apart from the writer (a thread, or a separate process as HDFS's
  Secondary NameNode), on a period and every N operations, rolls the log and merges the newest
  image with the finalized segments into a new image, then keeps ``images_kept`` images and
  the edits after the oldest of them (``_checkpointer``).
* **Recovery** -- newest intact image (older ones if it is damaged) plus the edits after it; a
  torn tail of the last segment is cut, damage elsewhere is an error (``_recovery``).
* **Single writer** -- an ``flock`` on ``writer.lock`` (``_layout``).

State mode takes a ``StateMachine`` (``apply(state, op) -> state`` and an initial state;
``KEY_VALUE`` is ready made); log mode (``machine=None``) is an append-only log read back with
``Journal.read(from_txid)`` -- the store of the message-logging protocol.

Example::

    from snapline.journal import KEY_VALUE, JournalConfig, kv_set, open_journal

    with open_journal("/var/lib/app/journal", KEY_VALUE) as journal:
        txid = journal.append(kv_set("answer", 42))   # returns once durable
        journal.state["answer"]                        # 42
"""

from __future__ import annotations

from snapline.journal._format import Record
from snapline.journal._inspect import (
    ImageEntry,
    JournalInspection,
    SegmentEntry,
    inspect_journal,
    iter_edits,
    load_image,
)
from snapline.journal._journal import CheckpointerKind, Journal, JournalConfig, open_journal
from snapline.journal._machines import (
    KEY_VALUE,
    StateMachine,
    apply_key_value,
    kv_clear,
    kv_delete,
    kv_set,
)
from snapline.journal._recovery import JournalWarning, RecoveryReport, TornTail
from snapline.journal._writer import WriterStats

__all__ = [
    "KEY_VALUE",
    "CheckpointerKind",
    "ImageEntry",
    "Journal",
    "JournalConfig",
    "JournalInspection",
    "JournalWarning",
    "Record",
    "RecoveryReport",
    "SegmentEntry",
    "StateMachine",
    "TornTail",
    "WriterStats",
    "apply_key_value",
    "inspect_journal",
    "iter_edits",
    "kv_clear",
    "kv_delete",
    "kv_set",
    "load_image",
    "open_journal",
]
