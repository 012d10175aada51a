"""The XOR level of one rank: its checkpoints striped, with parity, over its group's nodes.

Checkpoint ``step`` of rank ``r`` is packed into one blob (``copy.pack_checkpoint``), cut into
``k - 1`` data segments and a parity segment (``xor.encode``), and segment ``j`` is written
to ``<node root>/xor/rank-<r>/<step:012d>.seg`` on node ``(j + r) % k`` of the group (the
rotation spreads the parity over the nodes). Each segment file is a JSON header line (rank,
step, k, segment, blob length, xxh3 digest of the segment) and the segment, written to a
temporary name, fsynced and renamed. Reading takes every segment whose header and digest
check out and rebuilds the blob from any ``k - 1`` of them.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import xxhash

from snapline._durable import write_atomic
from snapline.errors import CorruptCheckpoint
from snapline.store.multilevel import xor

_FORMAT = "snapline-xor-segment"
_NAME = re.compile(r"^(\d{12})\.seg$")


class XorLevel:
    """Segments of rank ``rank``'s checkpoints in ``dirs`` (one directory per group node)."""

    def __init__(self, dirs: tuple[Path, ...], rank: int) -> None:
        if len(dirs) < 2:
            raise ValueError("an XOR group needs at least 2 nodes")
        self.dirs = dirs
        self.rank = rank
        self.k = len(dirs)

    def _path(self, segment: int, step: int) -> Path:
        return self.dirs[(segment + self.rank) % self.k] / f"{step:012d}.seg"

    def write(self, blob: bytes, step: int) -> None:
        """Write the ``k`` segments of ``blob`` (durable when this returns)."""
        for j, segment in enumerate(xor.encode(blob, self.k)):
            header = {
                "format": _FORMAT,
                "rank": self.rank,
                "step": step,
                "k": self.k,
                "segment": j,
                "length": len(blob),
                "digest": xxhash.xxh3_128_hexdigest(segment),
            }
            path = self._path(j, step)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, b"".join([json.dumps(header).encode(), b"\n", segment]))

    def steps(self) -> list[int]:
        """Steps with at least ``k - 1`` segment files (enough to rebuild, if intact)."""
        counts: dict[int, int] = {}
        for directory in self.dirs:
            with contextlib.suppress(OSError):
                for entry in directory.iterdir():
                    m = _NAME.match(entry.name)
                    if m is not None:
                        counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
        return sorted(s for s, c in counts.items() if c >= self.k - 1)

    def read(self, step: int) -> memoryview:
        """The blob of ``step``, rebuilt if one segment is lost or damaged."""
        segments: list[bytes | None] = []
        lengths: set[int] = set()
        problems: list[str] = []
        for j in range(self.k):
            path = self._path(j, step)
            try:
                data = path.read_bytes()
                head, _, segment = data.partition(b"\n")
                header = json.loads(head)
                ok = (
                    header.get("format") == _FORMAT
                    and header.get("rank") == self.rank
                    and header.get("step") == step
                    and header.get("k") == self.k
                    and header.get("segment") == j
                    and header.get("digest") == xxhash.xxh3_128_hexdigest(segment)
                )
                if not ok:
                    raise ValueError("header or digest does not match")
                lengths.add(int(header["length"]))
                segments.append(segment)
            except (OSError, ValueError, TypeError) as exc:
                problems.append(f"{path}: {exc}")
                segments.append(None)
        if len(lengths) != 1:
            raise CorruptCheckpoint(
                f"XOR segments of rank {self.rank} step {step} disagree or are lost: "
                + "; ".join(problems)
            )
        try:
            return xor.rebuild(segments, lengths.pop())
        except CorruptCheckpoint as exc:
            raise CorruptCheckpoint(f"{exc}: " + "; ".join(problems)) from None

    def delete(self, step: int) -> None:
        """Remove the segments of ``step`` (missing ones are fine)."""
        for j in range(self.k):
            with contextlib.suppress(OSError):
                self._path(j, step).unlink()
