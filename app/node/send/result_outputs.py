"""The DICOM files a job delivers: every entry of report.json ``outputs`` (SEG, SR, RTSTRUCT, SC ...),
or the segmentation alone for a report without that list; and the ``delivery`` record written back
into report.json (which output went where, when stored, committed, delivered)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom

from app.node.state.states import OutboxState
from operators.atomic_files import RESULT_MODE, write_atomically


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
    """The instances of a job's result, in report order; ``files`` = the job's outputs (segmentation, report).
    UIDs and SOP class come from report.json as the result lists them; a header is read only for an entry
    without them (or for the segmentation of a report without ``outputs``)."""
    report = Path(files.get("report", ""))
    entries = None
    if report.is_file():
        entries = json.loads(report.read_text()).get("outputs")
    if not entries:
        return [_read("seg", Path(files["segmentation"]))]
    found: list[OutputFile] = []
    for entry in entries:
        kind = str(entry.get("kind") or "dicom")
        names = list(entry.get("files") or [])
        listed = list(entry.get("sop_instance_uids") or [])
        for number, name in enumerate(names):
            path = Path(name) if Path(name).is_absolute() else report.parent / name
            if len(listed) == len(names) and entry.get("sop_class_uid") and entry.get("series_instance_uid"):
                if not path.is_file():  # the UIDs as the result lists them: no header to read again
                    raise ValueError(f"output {kind} {path} is not a readable DICOM instance: missing")
                found.append(OutputFile(kind, path, str(listed[number]), str(entry["sop_class_uid"]),
                                        str(entry["series_instance_uid"])))
            else:
                found.append(_read(kind, path))
    if len({f.sop_uid for f in found}) < len(found):
        raise ValueError(f"report {report}: outputs list the same SOP Instance UID twice")
    return found


def _iso(stamp: float | None) -> str | None:
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="seconds") if stamp else None


def write_delivery(report: Path, rows: Sequence[Mapping[str, Any]], addresses: Mapping[str, str]) -> None:
    """Record in report.json (``delivery``) where each output went: per outbox row its destination,
    state and when it was stored, committed (Storage Commitment) and delivered (UTC, ISO 8601).
    The file is replaced atomically; the journal stays the source of truth."""
    document = json.loads(report.read_text())
    document["delivery"] = [
        {"destination": row["destination"], "address": addresses.get(row["destination"], ""),
         "kind": row["kind"] or "seg", "sop_instance_uid": row["sop_uid"], "state": row["state"],
         "attempts": row["attempts"], "stored": _iso(row["stored_at"]), "committed": _iso(row["committed_at"]),
         "delivered": _iso(row["sent_at"]) if row["state"] == OutboxState.SENT else None}
        for row in rows if row["state"] != OutboxState.SUPERSEDED]
    write_atomically(report, json.dumps(document, indent=2).encode(), RESULT_MODE)
