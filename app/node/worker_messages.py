"""What the node and its worker child (app/node/executor.py) send each other over their Pipe.

The child sends ``Ready`` once its model is loaded, then answers each ``JobRequest`` with one
``JobDone`` or one ``JobFailed``. The messages are frozen dataclasses of plain values, picklable
under the spawn start method; this module imports nothing heavy, so the parent can unpickle them
without torch or monai. Anything else either side receives is a protocol error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ready:
    """Child to parent: the model is loaded; requests may come."""


@dataclass(frozen=True)
class JobRequest:
    """Parent to child: segment the study in ``input_dir`` into ``output_dir``. ``overrides`` replace
    Settings fields for this job (an out-of-memory retry); ``ids`` go into the child's log records."""

    input_dir: str
    output_dir: str
    overrides: dict[str, Any]
    ids: dict[str, Any]


@dataclass(frozen=True)
class JobDone:
    """Child to parent: the job succeeded; ``files`` maps segmentation, report, preview to paths."""

    files: dict[str, str]
    stage_times: dict[str, float]


@dataclass(frozen=True)
class JobFailed:
    """Child to parent: the job raised; ``kind`` as classify() gives it, with the settings it ran under."""

    kind: str
    error_type: str
    message: str
    sw_batch_size: int | None
    device: str

