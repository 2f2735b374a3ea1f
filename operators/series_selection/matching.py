"""DICOMSeriesSelectorOperator's matching semantics on a plain pydicom header.

The SDK's own matcher is a private method working on its DICOMStudy/DICOMSeries property
objects, so the semantics are reimplemented here; tests/operators/series_selection/test_vendor_studies.py checks parity
against the SDK for the shipped rules.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

ORIENTATIONS = ("Sagittal", "Coronal", "Axial")


def match_conditions(conditions: Mapping[str, Any], dataset: Dataset) -> bool:
    """True when `dataset` meets every condition, with DICOMSeriesSelectorOperator semantics.

    Falsy condition values are skipped; a missing or empty attribute never matches; strings match
    by case-insensitive equality, else `re.search` (IGNORECASE); numbers by `[v, op]` relations
    (>, >=, <, <=, !=), `[min, max]` inclusive ranges, `re.fullmatch` of a string, or equality;
    multi-valued attributes (e.g. ImageType) by case-insensitive substring of each term, "!"
    excluding; ImageOrientationPatient by "Axial"/"Coronal"/"Sagittal" (the dominant slice normal).
    """
    for key, wanted in conditions.items():
        if not wanted:
            continue
        value = _attribute(dataset, key)
        if not value:
            return False
        if not _match_value(key, wanted, value):
            return False
    return True


def orientation(value: Any) -> str | None:
    """"Sagittal", "Coronal" or "Axial" for ImageOrientationPatient cosines (the dominant normal), else None."""
    try:
        cosines = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if cosines.shape != (6,):
        return None
    normal = np.cross(cosines[:3], cosines[3:])
    if not np.linalg.norm(normal):
        return None
    return ORIENTATIONS[int(np.argmax(np.abs(normal)))]


def _attribute(dataset: Dataset, keyword: str) -> Any:
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in dataset:
        return None
    element = dataset[tag]
    value = element.value
    if isinstance(value, MultiValue) or element.VM > 1:
        return list(value)
    return value


def _match_value(key: str, wanted: Any, value: Any) -> bool:
    if key == "ImageOrientationPatient":
        if not isinstance(wanted, str) or wanted.strip().capitalize() not in ORIENTATIONS:
            raise ValueError(f"ImageOrientationPatient condition must be one of {ORIENTATIONS}, not {wanted!r}")
        return orientation(value) == wanted.strip().capitalize()
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return _match_number(wanted, value)
    if isinstance(value, list):
        text = "\\".join(str(v) for v in value).lower()
        terms = wanted if isinstance(wanted, list) else [wanted]
        for term in (str(t).lower() for t in terms):
            if term.startswith("!"):
                if term[1:] in text:
                    return False
            elif term not in text:
                return False
        return True
    if not isinstance(wanted, str):
        raise ValueError(f"condition on {key} (a text attribute) must be a string, not {wanted!r}")
    text = str(value)
    return text.casefold() == wanted.casefold() or re.search(wanted, text, re.IGNORECASE) is not None


def _match_number(wanted: Any, value: Any) -> bool:
    if isinstance(wanted, list):
        if len(wanted) == 2 and isinstance(wanted[1], str):
            limit, op = float(wanted[0]), wanted[1]
            relations = {
                ">": value > limit,
                ">=": value >= limit,
                "<": value < limit,
                "<=": value <= limit,
                "!=": value != limit,
            }
            if op not in relations:
                raise ValueError(f"unsupported relation {op!r}; use one of {list(relations)}")
            return bool(relations[op])
        if len(wanted) == 2 and all(isinstance(v, (int, float)) for v in wanted):
            return bool(wanted[0] <= value <= wanted[1])
        raise ValueError(f"unsupported numeric condition {wanted!r}")
    if isinstance(wanted, str):
        return re.fullmatch(wanted, str(value)) is not None
    if isinstance(wanted, (int, float)):
        return bool(wanted == value)
    raise ValueError(f"unsupported numeric condition {wanted!r}")
