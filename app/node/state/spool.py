"""The spool folder: received instances and job outputs, written atomically.

Layout under the root (every name below is validated or generated here, never taken raw from a peer):

    studies/<StudyInstanceUID>/<SOPInstanceUID>.dcm   received instances
    jobs/<job id>/                                    a job's outputs (segmentation.dcm, report, preview)
    journal.sqlite3                                   the journal (app.node.state.journal)
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from operators.atomic_files import write_atomically

# DICOM UID: dot-separated numbers without leading zeros, at most 64 characters (PS3.5 9.1).
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class UnsafeUID(ValueError):
    """A UID that is not a valid DICOM UID, so it must not become part of a path."""


def checked_uid(value: object, keyword: str = "UID") -> str:
    """``value`` as a UID string, or UnsafeUID when it is not a well-formed DICOM UID."""
    text = str(value or "").strip().rstrip("\0")
    if not text or len(text) > 64 or not UID_PATTERN.fullmatch(text):
        raise UnsafeUID(f"{keyword} {text[:80]!r} is not a valid DICOM UID")
    return text


class Spool:
    """Paths and atomic writes under the spool root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.studies = self.root / "studies"
        self.jobs = self.root / "jobs"
        for folder in (self.root, self.studies, self.jobs):
            folder.mkdir(parents=True, exist_ok=True)

    @property
    def journal_path(self) -> Path:
        return self.root / "journal.sqlite3"

    def study_dir(self, study_uid: str) -> Path:
        return self.studies / checked_uid(study_uid, "StudyInstanceUID")

    def instance_path(self, study_uid: str, sop_uid: str) -> Path:
        return self.study_dir(study_uid) / f"{checked_uid(sop_uid, 'SOPInstanceUID')}.dcm"

    def job_dir(self, job_id: int) -> Path:
        return self.jobs / str(int(job_id))

    def store_instance(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write one received instance (a complete DICOM file) durably; returns its path."""
        path = self.instance_path(study_uid, sop_uid)
        write_atomically(path, data)
        return path

    def remove_study(self, study_uid: str) -> None:
        shutil.rmtree(self.study_dir(study_uid), ignore_errors=True)

    def remove_job(self, job_id: int) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
