"""Whether a parsed DICOM data set is a usable instance: the one check shared by the study loader
(an unreadable file in the inventory) and the node's intake (a refusal with its PS3.4 status)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pydicom

REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
Defect = Literal["uids", "no-pixel-data", "pixel-attributes", "truncated"]


@dataclass(frozen=True)
class Incompleteness:
    """Why a data set is not a usable instance: ``defect`` says what is wrong, ``reason`` in words
    (short enough for a C-STORE ErrorComment)."""

    defect: Defect
    reason: str


def incompleteness(dataset: pydicom.Dataset) -> Incompleteness | None:
    """The first defect of ``dataset`` (missing UIDs first, then its pixel data), or None."""
    try:
        missing = [keyword for keyword in REQUIRED_UIDS if not dataset.get(keyword)]
    except Exception as error:  # a malformed identifier element does not even convert
        return Incompleteness("uids", f"identifiers unreadable ({error})")
    if missing:
        return Incompleteness("uids", f"lacks {', '.join(missing)}")
    if "Rows" in dataset and "PixelData" not in dataset:
        return Incompleteness("no-pixel-data", "image without PixelData")
    if "PixelData" not in dataset:
        return None
    try:
        meta = getattr(dataset, "file_meta", None)
        syntax = meta.get("TransferSyntaxUID") if meta is not None else None
        if syntax is None or syntax.is_compressed:
            return None
        frames = int(dataset.get("NumberOfFrames") or 1)
        samples = int(dataset.get("SamplesPerPixel") or 1)
        expected = int(dataset.Rows) * int(dataset.Columns) * samples * frames * int(dataset.BitsAllocated) // 8
    except Exception:  # wrong VR, missing or non-numeric image attributes, an unknown transfer syntax
        return Incompleteness("pixel-attributes", "unusable Rows/Columns/BitsAllocated/NumberOfFrames")
    size = len(dataset.PixelData)
    if size < expected:
        return Incompleteness("truncated", f"PixelData truncated ({size} of {expected} bytes)")
    return None
