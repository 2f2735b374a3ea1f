"""The DICOM files a job delivers: every entry of report.json ``outputs`` (SEG, SR, RTSTRUCT, SC ...),
or the segmentation alone for a report without that list."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom


@dataclass(frozen=True)
class OutputFile:
    """One DICOM instance to deliver."""

    kind: str
    path: Path
    sop_uid: str
    sop_class: str
    series_uid: str


def _read(kind: str, path: Path) -> OutputFile:
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        return OutputFile(kind, path, str(header.SOPInstanceUID), str(header.SOPClassUID),
                          str(header.SeriesInstanceUID))
    except (OSError, AttributeError, pydicom.errors.InvalidDicomError) as error:
        raise ValueError(f"output {kind} {path} is not a readable DICOM instance: {error}") from error


def output_files(files: Mapping[str, str]) -> list[OutputFile]:
    """The instances of a job's result, in report order; ``files`` = the job's outputs (segmentation, report)."""
    report = Path(files.get("report", ""))
    entries = None
    if report.is_file():
        entries = json.loads(report.read_text()).get("outputs")
    if not entries:
        return [_read("seg", Path(files["segmentation"]))]
    found: list[OutputFile] = []
    for entry in entries:
        kind = str(entry.get("kind") or "dicom")
        for name in entry.get("files") or []:
            path = Path(name) if Path(name).is_absolute() else report.parent / name
            found.append(_read(kind, path))
    if len({f.sop_uid for f in found}) < len(found):
        raise ValueError(f"report {report}: outputs list the same SOP Instance UID twice")
    return found
