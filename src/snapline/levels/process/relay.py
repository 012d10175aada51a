"""Reading the spool that the DMTCP job root (``_relayroot.py``) writes the job's output to.

The spool is a file of records ``@{"s": STREAM, "p": POSITION, "n": LENGTH}\\n`` followed
by LENGTH bytes, and ``@{"hello": {STREAM: POSITION}, "root": VPID}\\n`` each time the job
root starts writing to a fresh spool (at launch and after every restart). ``SpoolReader``
hands out complete records in order; it waits for the rest of a record that is still being
written and skips the NUL bytes DMTCP pads a recreated file with.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapline.errors import RuntimeFailure


@dataclass(frozen=True, slots=True)
class Record:
    """One record: ``stream``, ``pos`` and ``data``; or, for a hello, ``hello`` positions."""

    stream: str = ""
    pos: int = 0
    data: bytes = b""
    hello: dict[str, int] | None = None
    root_vpid: int = 0


class SpoolReader:
    """Complete records from the spool at ``path``, from where the last call stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.buf = bytearray()

    def reset(self) -> None:
        """Remove the spool (the job is dead): the next writer starts a fresh one."""
        self.path.unlink(missing_ok=True)
        self.offset = 0
        self.buf.clear()

    def read(self) -> list[Record]:
        """Every record completed since the last call."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        try:
            while True:
                chunk = os.pread(fd, 1 << 20, self.offset)
                if not chunk:
                    break
                self.offset += len(chunk)
                self.buf += chunk
        finally:
            os.close(fd)
        out: list[Record] = []
        while True:
            start = 0
            while start < len(self.buf) and self.buf[start] == 0:
                start += 1
            del self.buf[:start]
            end = self.buf.find(b"\n")
            if end < 0:
                return out
            if self.buf[:1] != b"@":
                raise RuntimeFailure(f"the job's output spool {self.path} is damaged")
            head: dict[str, Any] = json.loads(bytes(self.buf[1:end]))
            if "hello" in head:
                del self.buf[: end + 1]
                positions = {str(k): int(v) for k, v in head["hello"].items()}
                out.append(Record(hello=positions, root_vpid=int(head["root"])))
                continue
            size = int(head["n"])
            if len(self.buf) < end + 1 + size:
                return out
            data = bytes(self.buf[end + 1 : end + 1 + size])
            del self.buf[: end + 1 + size]
            out.append(Record(stream=str(head["s"]), pos=int(head["p"]), data=data))
