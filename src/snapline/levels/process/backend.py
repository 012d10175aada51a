"""What a process-level backend does, and the records it shares with the supervisor.

Call order, for one job (the supervisor is the only caller)::

    launch(argv, pass_fds) -> root pid          start the job root (see _jobroot.py)
    checkpoint(root, sessions, dir, drain)       freeze every process of the job, call drain(),
                                                 write the images of the whole tree into dir,
                                                 resume every process; return the pause
    restore(dir, pipes) -> root pid              bring the tree back from dir; every process
                                                 stays frozen until resume(sessions)
    resume(sessions)
    real_pids(vpids), kill(sessions)             at any time

``drain`` is the supervisor's: with the job frozen it reads what the processes wrote, so the
output covered by the checkpoint is known exactly. It is called again after the dump, still
frozen, and raises ``CheckpointFailed`` when a process of the job died meanwhile (a process
killed during the dump may be in the images as a zombie, and would die again after every
restore from them). ``pipes`` maps the name each pipe had when
the images were written (``pipe:[INODE]``) to the write end of a fresh pipe that replaces it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from snapline.errors import CheckpointFailed


class CheckpointLostJob(CheckpointFailed):
    """A checkpoint failed and left the job unable to go on (DMTCP can leave every process
    waiting at its barrier): the supervisor restores the job instead of letting it run."""


class ProcessBackend(Protocol):
    """A transparent checkpointer of whole process trees (CRIU, DMTCP)."""

    name: str
    #: False: the job root writes output to the pipes the supervisor passes (``_jobroot.py``),
    #: and ``restore`` swaps fresh pipes in. True: it relays output as numbered records
    #: through a spool file (``_relayroot.py``, ``relay.py``), and ``pipes`` is empty.
    relays_output: bool

    def bind(self, scratch: Path, job_dir: Path) -> None:
        """Use ``scratch`` (fast, private to the job) for the backend's own files; logs go
        into ``job_dir``."""
        ...

    def launch(self, argv: Sequence[str], pass_fds: Sequence[int]) -> int:
        """Start ``argv`` in a session of its own; the returned pid is also the session id."""
        ...

    def checkpoint(
        self, root: int, sessions: Sequence[int], image_dir: Path, drain: Callable[[], None]
    ) -> float:
        """Freeze, drain, dump the tree of ``root`` into ``image_dir``, resume; the pause (s)."""
        ...

    def restore(self, image_dir: Path, pipes: Mapping[str, int]) -> int:
        """Restore the tree from ``image_dir`` (frozen) and return its root pid."""
        ...

    def resume(self, sessions: Sequence[int]) -> None:
        """Let the processes of a restored tree run."""
        ...

    def real_pids(self, vpids: Mapping[int, int]) -> dict[int, int]:
        """The real pids of processes the job knows by ``vpids`` (DMTCP virtualises pids)."""
        ...

    def kill(self, sessions: Sequence[int]) -> None:
        """SIGKILL every process of the job (``sessions``: the root's and the ranks') and
        wait until their pids are free."""
        ...
