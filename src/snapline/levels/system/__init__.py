"""The system level: whole QEMU virtual machines as the ranks of a job (``snapline vm``).

``VmJob`` supervises the guests a ``VmSpec`` describes: coordinated checkpoints through QMP
(``job.py``; the job directory it keeps: ``jobdir.py``), stored as content-defined segments of
the migration stream (``stream.py``), a network owned by snapline that records frames in flight
(``network.py``), guests built from Debian packages (``image.py``). See
docs/howto/system-level.md.
"""

from snapline.levels.system.image import GuestImage, build_image
from snapline.levels.system.job import VmJob, VmJobResult
from snapline.levels.system.jobdir import CheckpointRecord, read_records
from snapline.levels.system.spec import VmSpec, load_spec

__all__ = [
    "CheckpointRecord",
    "GuestImage",
    "VmJob",
    "VmJobResult",
    "VmSpec",
    "build_image",
    "load_spec",
    "read_records",
]
