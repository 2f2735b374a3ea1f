"""Atomic file writes: a reader (or a restart) sees a file whole or not at all.

The one implementation for the spool, the quarantine, the worker and the output writers: a
temporary file ``.<name>.<hex>.tmp`` beside the target, fsync, rename over the target, fsync of
the folder. An interrupted write leaves only the temporary file, which the node's retention
removes on start.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pydicom

RESULT_MODE = 0o644  # results are read by other uids of the group (PACS gateway, mercure dispatcher)


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new entry in ``folder`` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, content: bytes | Callable[[BinaryIO], object], mode: int | None = None) -> Path:
    """Write ``content`` (bytes, or a function writing into the open file) to ``path`` durably; on any
    failure ``path`` keeps its previous content and no temporary file is left. ``mode`` sets the
    file's permissions (default: the process umask's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        with open(temporary, "xb") as handle:
            if isinstance(content, bytes):
                handle.write(content)
            else:
                content(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def save_atomically(dataset: pydicom.Dataset, output_path: Path, mode: int | None = RESULT_MODE) -> Path:
    """Write ``dataset`` as a DICOM file (with file meta) to ``output_path`` atomically."""
    return write_atomically(output_path, lambda handle: dataset.save_as(handle, enforce_file_format=True), mode)
