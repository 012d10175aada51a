"""Entry point of a checkpointer run as a separate process (HDFS's Secondary NameNode model).

``python -m snapline.journal._checkpoint_process DIR UPTO_TXID MACHINE_REF`` merges the newest
image of the journal in DIR with its finalized segments up to UPTO_TXID into a new image and
exits 0 (1 with the error on stderr). It reads only the newest image and finalized segments,
which the writer never changes, so it needs neither the writer lock nor any shared memory. It
does not apply retention: deleting files stays with the writer process that holds the lock.
"""

from __future__ import annotations

import sys
from pathlib import Path

from snapline.errors import SnaplineError
from snapline.journal._checkpointer import merge_checkpoint
from snapline.journal._machines import resolve_machine


def main(argv: list[str]) -> int:
    """Run one merge; return the process exit code."""
    if len(argv) != 3:
        print("usage: python -m snapline.journal._checkpoint_process DIR UPTO_TXID MACHINE_REF")
        return 2
    directory, upto, ref = Path(argv[0]), int(argv[1]), argv[2]
    try:
        info = merge_checkpoint(directory, resolve_machine(ref), upto)
    except SnaplineError as exc:
        print(f"checkpoint failed: {exc}", file=sys.stderr)
        return 1
    print(info.path if info is not None else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
