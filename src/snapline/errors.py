"""The exception hierarchy. Every error snapline raises on purpose derives from SnaplineError.

Messages say what was wrong and what to do about it; the CLI prints them without a traceback
(unless ``--debug``).
"""

from __future__ import annotations


class SnaplineError(Exception):
    """Base class of every error snapline raises on purpose."""


class ConfigError(SnaplineError):
    """A bad argument, option or configuration value."""


class StoreError(SnaplineError):
    """Stable storage could not be read or written (I/O error, full disk, not a store, locked)."""


class NotAStore(StoreError):
    """The path exists but is not a snapline store."""


class StoreLocked(StoreError):
    """Another process holds the store's writer lock."""


class CheckpointNotFound(StoreError):
    """No committed checkpoint matches the request."""


class CorruptCheckpoint(StoreError):
    """A manifest or chunk failed its hash, was truncated, or could not be decoded."""


class UnsupportedFormat(StoreError):
    """The store or manifest uses a format version this snapline does not read."""


class EncodeError(SnaplineError):
    """The state holds an object the safe codec cannot encode."""


class JournalError(SnaplineError):
    """The edit log or an image of a journal could not be read or written."""


class ProtocolError(SnaplineError):
    """A checkpointing protocol received an event it cannot handle in its current state."""

    def __init__(self, *, protocol: str, rank: int, state: str, event: object, why: str) -> None:
        self.protocol = protocol
        self.rank = rank
        self.state = state
        self.event = event
        super().__init__(f"{protocol} rank {rank} in state {state}: {why} (event {event!r})")


class RecoveryError(SnaplineError):
    """No recovery can be planned from the stored records (malformed view, missing sender log)."""


class SimulationError(SnaplineError):
    """A simulated run violated a guarantee; the message carries the command that replays it."""


class RuntimeFailure(SnaplineError):
    """A real job could not be completed (restart limit reached, unrecoverable failure)."""


class ApplicationError(RuntimeFailure):
    """The application's own code failed in a way a restart cannot cure.

    Raised by a local job when a rank's state cannot be checkpointed, or when the same
    exception is raised again by a rank re-executing from a restored checkpoint. The store is
    left resumable: fix the code, then ``snapline run --resume --store DIR``.
    """


class SnaplineWarning(UserWarning):
    """Base class of the warnings snapline issues."""


class CheckpointDamagedWarning(SnaplineWarning):
    """A damaged checkpoint was skipped (``load()`` fell back to an older intact one)."""


class CheckpointFailed(SnaplineError):
    """A collective checkpoint, commit or restore failed on at least one rank (``snapline.mpi``).

    Raised on every rank alike, so that no rank waits forever in the next collective call. The
    newest complete checkpoint is left as it was.
    """


class SafePointViolation(SnaplineError):
    """A checkpoint was taken while a message was in flight (``snapline.mpi`` debug mode)."""
