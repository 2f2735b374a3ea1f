"""Accept one received DICOM instance: check it, write it to the spool, journal it.

Shared by the Storage SCP and the watched inbox. The answer is a DICOM status: Success only
after the file is on disk (fsync) and in the journal; a recognised duplicate (same SOP Instance
UID) is Success without a second copy; a write failure or a study over its limits is 0xA700
(Refused: out of resources); an object that is not a usable instance is 0xC000 (Cannot understand).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import pydicom
from pydicom.errors import InvalidDicomError

from operators.journal import InstanceRecord, Journal
from operators.spool import Spool, UnsafeUID, checked_uid

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntakeResult:
    """The DICOM status to answer, and why (for logs and the sender)."""

    status: int
    reason: str
    study_uid: str = ""
    duplicate: bool = False
    transient: bool = False  # a local failure (disk, journal): the same object may succeed later

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


@dataclass(frozen=True)
class Limits:
    """How much one study may bring."""

    max_instances: int = 10000
    max_bytes: int = 4096 << 20


def incompleteness(dataset: pydicom.Dataset) -> str | None:
    """Why a parsed object is not a usable instance (missing UIDs, truncated pixel data), or None."""
    required = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    missing = [keyword for keyword in required if not dataset.get(keyword)]
    if missing:
        return f"lacks {', '.join(missing)}"
    if "Rows" in dataset and "PixelData" not in dataset:
        return "lacks PixelData"
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if "PixelData" in dataset and syntax is not None and not syntax.is_compressed:
        frames = int(dataset.get("NumberOfFrames") or 1)
        samples = int(dataset.get("SamplesPerPixel") or 1)
        expected = int(dataset.Rows) * int(dataset.Columns) * samples * frames * int(dataset.BitsAllocated) // 8
        if len(dataset.PixelData) < expected:
            return f"PixelData has {len(dataset.PixelData)} bytes, {expected} expected (truncated)"
    return None


class Intake:
    """Checks, stores and journals instances (see the module docstring)."""

    def __init__(self, spool: Spool, journal: Journal, limits: Limits | None = None) -> None:
        self.spool = spool
        self.journal = journal
        self.limits = limits or Limits()

    def accept(self, data: bytes, calling_ae: str) -> IntakeResult:
        """Handle one complete DICOM file (preamble + file meta + dataset) from ``calling_ae``."""
        try:
            dataset = pydicom.dcmread(io.BytesIO(data), force=False)
            problem = incompleteness(dataset)
            if problem:
                raise ValueError(problem)
            study_uid = checked_uid(dataset.StudyInstanceUID, "StudyInstanceUID")
            series_uid = checked_uid(dataset.SeriesInstanceUID, "SeriesInstanceUID")
            sop_uid = checked_uid(dataset.SOPInstanceUID, "SOPInstanceUID")
        except (InvalidDicomError, UnsafeUID, ValueError, EOFError, OSError, AttributeError, KeyError) as error:
            reason = f"not a usable DICOM instance: {error}"
            log.warning("intake from %s refused: %s", calling_ae, reason)
            return IntakeResult(CANNOT_UNDERSTAND, reason)
        if self.journal.has_instance(sop_uid):
            return IntakeResult(SUCCESS, f"duplicate {sop_uid}", study_uid, duplicate=True)
        count, size = self.journal.study_totals(study_uid)
        if count + 1 > self.limits.max_instances or size + len(data) > self.limits.max_bytes:
            reason = (f"study {study_uid}: limit reached ({count} instances, {size >> 20} MiB; "
                      f"max {self.limits.max_instances}, {self.limits.max_bytes >> 20} MiB)")
            log.warning("intake from %s refused: %s", calling_ae, reason)
            return IntakeResult(OUT_OF_RESOURCES, reason, study_uid)
        try:
            path = self.spool.store_instance(study_uid, sop_uid, data)
            record = InstanceRecord(
                sop_uid, study_uid, series_uid, str(dataset.SOPClassUID), str(dataset.get("Modality", "")), path,
                len(data), calling_ae, str(dataset.get("PatientID", "")), str(dataset.get("AccessionNumber", "")),
            )
            new = self.journal.record_instance(record)
        except (OSError, pydicom.errors.InvalidDicomError, RuntimeError) as error:
            reason = f"study {study_uid}: could not store {sop_uid}: {error}"
            log.error("intake from %s failed: %s", calling_ae, reason)
            return IntakeResult(OUT_OF_RESOURCES, reason, study_uid, transient=True)
        except Exception as error:  # sqlite3 errors and the like: never answer Success
            reason = f"study {study_uid}: could not journal {sop_uid}: {error}"
            log.error("intake from %s failed: %s", calling_ae, reason)
            return IntakeResult(OUT_OF_RESOURCES, reason, study_uid, transient=True)
        return IntakeResult(SUCCESS, "stored" if new else f"duplicate {sop_uid}", study_uid, duplicate=not new)
