"""Write a DICOM dataset as a file atomically (temporary file beside it, fsync, rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pydicom


def save_atomically(dataset: pydicom.Dataset, output_path: Path) -> Path:
    """Write ``dataset`` (with file meta) to ``output_path``; no partial file is left on failure."""
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=output_path.parent, prefix=".", suffix=".partial")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            dataset.save_as(handle, enforce_file_format=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, output_path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return output_path
