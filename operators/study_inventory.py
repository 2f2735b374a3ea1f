"""What the study loader found in an input folder besides the instances it loaded.

Patient CDs and PACS exports carry more than images: DICOMDIR, viewer programs, README/AUTORUN
files, JPEG and PDF copies, sometimes a damaged DICOM file. The loader skips what is not DICOM
and keeps a record of every file it did not load, so that the series selector can fail the
study when an unreadable file belongs to a selected series and the report can list the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SkippedFile:
    """A file that is not a DICOM instance (or is a DICOMDIR); ``path`` is relative to the input folder."""

    path: str
    reason: str


@dataclass(frozen=True)
class UnreadableFile:
    """A DICOM file that could not be loaded; its study/series UIDs when the header still told them."""

    path: str
    reason: str
    study_instance_uid: str = ""
    series_instance_uid: str = ""


@dataclass
class StudyInventory:
    """Files of one input folder that were not loaded as instances."""

    folder: str
    skipped: list[SkippedFile] = field(default_factory=list)
    unreadable: list[UnreadableFile] = field(default_factory=list)

    def unreadable_in(self, series_instance_uid: str) -> list[UnreadableFile]:
        """Unreadable files that belong to this series, or whose series could not be told (may belong)."""
        return [f for f in self.unreadable if f.series_instance_uid in ("", series_instance_uid)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: skipped and unreadable files with their reasons."""
        return {
            "skipped_files": [{"path": f.path, "reason": f.reason} for f in self.skipped],
            "unreadable_files": [
                {"path": f.path, "reason": f.reason, "series_instance_uid": f.series_instance_uid}
                for f in self.unreadable
            ],
        }


INVENTORY_ATTRIBUTE = "inventory"  # the loader sets DICOMStudy.<this> to the folder's StudyInventory


def inventory_of(study: Any) -> StudyInventory | None:
    """The StudyInventory the loader attached to an SDK DICOMStudy (None if it attached none)."""
    return getattr(study, INVENTORY_ATTRIBUTE, None)
