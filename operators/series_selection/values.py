"""Small readers of header values: lists, numbers, and acquisition / bolus times as sortable keys.

A time key is 'YYYYMMDDHHMMSS.ffffff' (date zero-filled when unknown); `clock_key` turns a DICOM
TM value into its 'HHMMSS.ffffff' part, the one parser of AcquisitionTime, SeriesTime and
ContrastBolusStartTime here.
"""

from __future__ import annotations

import math
from typing import Any

from pydicom import Dataset
from pydicom.multival import MultiValue


def clock_key(value: Any) -> str | None:
    """'HHMMSS.ffffff' of a TM value ("12:05", "120500.5", "120500+0100"), None when empty."""
    text = str(value or "").split("+")[0].split("-")[0].replace(":", "").strip()
    if not text:
        return None
    whole, _, fraction = text.partition(".")
    return f"{whole:0<6}.{fraction:0<6}"


def time_key(ds: Dataset) -> str | None:
    """Sortable 'YYYYMMDDHHMMSS.ffffff' of the acquisition (series time as a fallback)."""
    stamp = str(ds.get("AcquisitionDateTime", "") or "")
    if stamp:
        date, time = stamp[:8], stamp[8:]
    else:
        date = str(ds.get("AcquisitionDate") or ds.get("SeriesDate") or ds.get("StudyDate") or "")
        time = str(ds.get("AcquisitionTime") or ds.get("SeriesTime") or "")
    clock = clock_key(time)
    return f"{date.strip():0>8}{clock}" if clock else None


def bolus_key(ds: Dataset) -> str | None:
    """The ContrastBolusStartTime of ``ds`` as 'HHMMSS.ffffff' (compare with ``time_key(...)[8:]``)."""
    return clock_key(ds.get("ContrastBolusStartTime"))


def format_time(key: str | None) -> str:
    """'HH:MM:SS' of a time key, or 'at unknown time'."""
    if not key:
        return "at unknown time"
    return f"{key[8:10]}:{key[10:12]}:{key[12:14]}"


def as_list(value: Any) -> list[Any]:
    """A header value as a list (empty for None and "")."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def join(value: Any) -> str:
    """A multi-valued header value as DICOM writes it, joined by backslashes."""
    return "\\".join(str(v) for v in as_list(value))


def to_float(value: Any) -> float | None:
    """A finite float, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def to_int(value: Any, default: int) -> int:
    """An int, or ``default``."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
