"""Accept one received DICOM instance: check it, write it to the spool, journal it.

Shared by the Storage SCP and the watched inbox. The answer is a C-STORE status (PS3.4 B.2.3):

    0x0000 Success        on disk (fsync) and in the journal; or a resend identical to the instance
                          already stored under that SOP Instance UID (no second copy)
    0xA700 Refused: out of resources   only a real shortage: the spool's disk is full (or below
                          ``min_free_bytes``), or the journal cannot be written. Transient: the same
                          object succeeds once space returns, with nothing to reset
    0xA900 Error: data set does not match SOP class   a required attribute is missing (UIDs, pixel
                          data), or the SOP Class / Instance UID differs from the C-STORE request
    0xC000 Error: cannot understand   not DICOM, unreadable, truncated, a malformed UID
    0xC001 Error: a different instance under a SOP Instance UID already stored (the first is kept,
                          the refusal is audited)
    0xC002 Error: the study is over its configured size (``Limits``); resending cannot help

Every failure carries an ErrorComment that says the reason in at most 64 characters (the UIDs
go to the log, not the comment). Refused objects (all but 0xA700) are kept in the quarantine.
Check-and-write of one SOP Instance UID happens under a lock for that UID, so concurrent
duplicates are serialised: the first writes the file and its journal row, the others compare
against it. One node process owns a spool.
"""

from __future__ import annotations

import errno
import io
import logging
import shutil
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from sqlite3 import Row

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from app.config import DEFAULTS, Settings
from app.node.receive.quarantine import Quarantine
from app.node.state.journal import InstanceRecord, Journal
from app.node.state.spool import Spool, UnsafeUID, checked_uid
from operators.instance_check import REQUIRED_UIDS, incompleteness

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
UID_CONFLICT = 0xC001
STUDY_LIMIT = 0xC002
COMMENT_CHARS = 64  # ErrorComment is LO: at most 64 characters, no backslash or control characters
LOCK_STRIPES = 64
log = logging.getLogger(__name__)


def comment_text(text: str) -> str:
    """``text`` as a valid ErrorComment (LO): printable, no backslash, at most 64 characters."""
    clean = "".join(c if c.isprintable() and c != "\\" else " " for c in str(text)).strip()
    return clean if len(clean) <= COMMENT_CHARS else clean[: COMMENT_CHARS - 3].rstrip() + "..."


@dataclass(frozen=True)
class IntakeResult:
    """The DICOM status to answer, a comment for the sender (<= 64 chars) and the full reason for logs."""

    status: int
    reason: str
    study_uid: str = ""
    duplicate: bool = False
    transient: bool = False  # a local shortage (disk, journal): the same object may succeed later
    comment: str = ""
    quarantined: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


@dataclass(frozen=True)
class Limits:
    """How much one study may bring, how much disk the intake leaves free, how much it quarantines."""

    max_instances: int = DEFAULTS.max_study_instances
    max_bytes: int = DEFAULTS.max_study_mb << 20
    min_free_bytes: int = DEFAULTS.min_free_mb << 20
    quarantine_bytes: int = DEFAULTS.quarantine_mb << 20

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        """The limits of max_study_instances, max_study_mb, min_free_mb and quarantine_mb (MiB to bytes)."""
        return cls(settings.max_study_instances, settings.max_study_mb << 20, settings.min_free_mb << 20,
                   settings.quarantine_mb << 20)


@dataclass(frozen=True)
class Expected:
    """What the C-STORE request says the dataset is (empty: not known, e.g. the inbox)."""

    sop_class: str = ""
    sop_instance: str = ""


class Refusal(Exception):
    """An object the intake refuses: a status and a short comment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


def check_dataset(dataset: pydicom.Dataset, expected: Expected = Expected()) -> tuple[str, str, str]:
    """(study, series, SOP instance UID) of a usable instance; else Refusal with its PS3.4 status."""
    problem = incompleteness(dataset)
    if problem is not None and problem.defect == "uids":
        raise Refusal(DATASET_MISMATCH, problem.reason)
    uids = []
    for keyword in REQUIRED_UIDS:
        try:
            uids.append(checked_uid(dataset.get(keyword), keyword))
        except UnsafeUID as error:
            raise Refusal(CANNOT_UNDERSTAND, f"{keyword} is not a valid DICOM UID") from error
    study_uid, series_uid, sop_uid, sop_class = uids
    if expected.sop_class and sop_class != expected.sop_class:
        raise Refusal(DATASET_MISMATCH, "SOPClassUID differs from the presentation context")
    if expected.sop_instance and sop_uid != expected.sop_instance:
        raise Refusal(DATASET_MISMATCH, "SOPInstanceUID differs from the C-STORE request")
    if problem is not None:
        raise Refusal(CANNOT_UNDERSTAND if problem.defect == "truncated" else DATASET_MISMATCH, problem.reason)
    return study_uid, series_uid, sop_uid


def instance_difference(first: pydicom.Dataset, second: pydicom.Dataset) -> str | None:
    """None when two datasets are the same instance (also across transfer syntaxes, comparing
    decoded pixels), else the first differing attribute keyword (never its value)."""
    first_syntax = first.file_meta.get("TransferSyntaxUID") if hasattr(first, "file_meta") else None
    second_syntax = second.file_meta.get("TransferSyntaxUID") if hasattr(second, "file_meta") else None
    same_syntax = first_syntax == second_syntax
    tags = sorted(set(first.keys()) | set(second.keys()))
    for tag in tags:
        if tag == 0x7FE00010 and not same_syntax:
            continue
        if tag not in first or tag not in second or first[tag] != second[tag]:
            return pydicom.datadict.keyword_for_tag(tag) or str(tag)
    if same_syntax or "PixelData" not in first:
        return None
    try:
        equal = np.array_equal(first.pixel_array, second.pixel_array)
    except Exception:  # a syntax we cannot decode: cannot prove them equal
        return "PixelData (not comparable across transfer syntaxes)"
    return None if equal else "PixelData"


def _is_disk_full(error: BaseException) -> bool:
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "full" in str(error).lower()


class Intake:
    """Checks, stores and journals instances (see the module docstring)."""

    def __init__(self, spool: Spool, journal: Journal, limits: Limits | None = None) -> None:
        self.spool = spool
        self.journal = journal
        self.limits = limits or Limits()
        self.quarantine = Quarantine(spool.root / "quarantine", self.limits.quarantine_bytes)
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]

    def accept(self, data: bytes, calling_ae: str, expected: Expected = Expected()) -> IntakeResult:
        """Handle one complete DICOM file (preamble + file meta + dataset) from ``calling_ae``."""
        try:
            dataset = pydicom.dcmread(io.BytesIO(data), force=False)
            study_uid, series_uid, sop_uid = check_dataset(dataset, expected)
        except Refusal as refusal:
            return self._refuse(data, calling_ae, refusal.status, refusal.comment)
        except InvalidDicomError:
            return self._refuse(data, calling_ae, CANNOT_UNDERSTAND, "not a DICOM file (no DICM header)")
        except Exception as error:  # untrusted bytes: whatever pydicom raises on them is bad input
            return self._refuse(data, calling_ae, CANNOT_UNDERSTAND, f"unreadable dataset ({type(error).__name__})")
        lock = self._locks[zlib.crc32(sop_uid.encode()) % LOCK_STRIPES]
        with lock:  # check-and-write of one SOP Instance UID is atomic
            known = self.journal.query("SELECT * FROM instances WHERE sop_uid = ?", (sop_uid,))
            if known:
                return self._duplicate(data, dataset, known[0], calling_ae)
            return self._store(data, dataset, calling_ae, study_uid, series_uid, sop_uid)

    def _store(self, data: bytes, dataset: pydicom.Dataset, calling_ae: str, study_uid: str, series_uid: str,
               sop_uid: str) -> IntakeResult:
        count, size = self.journal.study_totals(study_uid)
        if count + 1 > self.limits.max_instances or size + len(data) > self.limits.max_bytes:
            comment = (f"study over its limit ({self.limits.max_instances} instances, "
                       f"{self.limits.max_bytes >> 20} MiB)")
            return self._refuse(data, calling_ae, STUDY_LIMIT, comment, study_uid,
                                f"{count} instances, {size >> 20} MiB received")
        free = shutil.disk_usage(self.spool.root).free
        if free - len(data) < self.limits.min_free_bytes:
            return self._shortage(calling_ae, study_uid, sop_uid,
                                  f"node disk full ({free >> 20} MiB free), retry later", "below min_free_mb")
        path = self.spool.instance_path(study_uid, sop_uid)
        try:
            self.spool.store_instance(study_uid, sop_uid, data)
        except OSError as error:
            comment = "node disk full, retry later" if _is_disk_full(error) else "node cannot write, retry later"
            return self._shortage(calling_ae, study_uid, sop_uid, comment, f"could not store: {error}")
        record = InstanceRecord(
            sop_uid, study_uid, series_uid, str(dataset.SOPClassUID), str(dataset.get("Modality", "")), path,
            len(data), calling_ae, str(dataset.get("PatientID", "")), str(dataset.get("AccessionNumber", "")),
        )
        try:
            new = self.journal.record_instance(record)
        except Exception as error:  # sqlite3 errors ("database or disk is full") and the like: never Success
            path.unlink(missing_ok=True)  # no row, no file: a resend starts clean
            comment = "node disk full, retry later" if _is_disk_full(error) else "node journal failed, retry later"
            return self._shortage(calling_ae, study_uid, sop_uid, comment, f"could not journal: {error}")
        if not new:  # cannot happen under the lock; never answer Success for a file we did not compare
            return self._shortage(calling_ae, study_uid, sop_uid, "concurrent write, retry later", "journal race")
        return IntakeResult(SUCCESS, "stored", study_uid)

    def _duplicate(self, data: bytes, dataset: pydicom.Dataset, known: Row, calling_ae: str) -> IntakeResult:
        sop_uid, study_uid = str(known["sop_uid"]), str(known["study_uid"])
        stored_path = Path(known["path"])
        try:
            stored = stored_path.read_bytes()
        except OSError:  # spool files of finished studies are removed by retention
            return IntakeResult(SUCCESS, f"duplicate {sop_uid} (stored copy already purged)", study_uid,
                                duplicate=True)
        if stored == data:
            return IntakeResult(SUCCESS, f"duplicate {sop_uid}", study_uid, duplicate=True)
        try:
            difference = instance_difference(pydicom.dcmread(io.BytesIO(stored)), dataset)
        except Exception as error:  # the stored copy is ours and was readable: treat as different
            difference = f"stored copy unreadable ({type(error).__name__})"
        if difference is None:
            return IntakeResult(SUCCESS, f"duplicate {sop_uid} (same content)", study_uid, duplicate=True)
        detail = (f"{sop_uid}: a different instance ({difference} differs) refused; the first, from "
                  f"{known['calling_ae']}, is kept")
        try:
            self.journal.audit("instance-conflict", study_uid, None, calling_ae, detail)
        except Exception as error:
            log.error("cannot audit an instance conflict: %s", error)
        return self._refuse(data, calling_ae, UID_CONFLICT, f"SOP Instance UID already used, {difference} differs",
                            study_uid, detail)

    def _refuse(self, data: bytes, calling_ae: str, status: int, comment: str, study_uid: str = "",
                detail: str = "") -> IntakeResult:
        reason = f"0x{status:04X} {comment}" + (f" (study {study_uid}: {detail})" if study_uid or detail else "")
        kept = self.quarantine.keep(data, status, reason, calling_ae)
        log.warning("intake from %s refused: %s; kept as %s", calling_ae, reason, kept.name)
        return IntakeResult(status, reason, study_uid, comment=comment_text(comment), quarantined=kept)

    def _shortage(self, calling_ae: str, study_uid: str, sop_uid: str, comment: str, detail: str) -> IntakeResult:
        reason = f"0xA700 {comment} (study {study_uid}, {sop_uid}: {detail})"
        log.error("intake from %s failed: %s", calling_ae, reason)
        return IntakeResult(OUT_OF_RESOURCES, reason, study_uid, transient=True, comment=comment_text(comment))
