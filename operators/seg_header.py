"""Copies of source headers that a derived object (the SEG) can inherit without breaking DICOM.

Hospital headers miss Type 2 attributes and carry values that break their VR (a 20-character
SH, control characters, a DA written "2024-01-05"). highdicom copies the Patient and Study
modules from the first source image and reads several of their attributes directly, so a gap
crashes it and a bad value makes the SEG invalid. `clean_source_header` returns a copy whose
top-level text values fit their VR (PS3.5 6.2) and in which the attributes highdicom reads exist
(empty when unknown, as Type 2 allows); the source dataset is never changed. Values that cannot
be repaired are emptied, never guessed. `character_set_for` keeps the source's
SpecificCharacterSet when it can encode every text value of the derived object, else ISO_IR 192.
"""

from __future__ import annotations

import datetime
import re
import warnings
from collections.abc import Iterable

import pydicom
from pydicom.charset import convert_encodings, encode_string
from pydicom.datadict import dictionary_VM, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import format_number_as_ds, is_valid_ds

UTF8 = "ISO_IR 192"
# Read directly by highdicom's Segmentation (or Type 2 in the modules it copies): present, maybe empty.
REQUIRED_TYPE2 = {
    "PatientName": "PN", "PatientID": "LO", "PatientBirthDate": "DA", "PatientSex": "CS",
    "StudyDate": "DA", "StudyTime": "TM", "AccessionNumber": "SH", "StudyID": "SH",
    "ReferringPhysicianName": "PN",
}
_MAX_CHARS = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "IS": 12, "LO": 64, "SH": 16, "ST": 1024,
              "LT": 10240, "TM": 16, "DT": 26, "PN": 64}  # UI: left alone
_TEXT_VRS = ("SH", "LO", "ST", "LT", "UT", "UC", "PN")
_MULTI_VALUED = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UC")
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")  # all C0 controls but ESC (ISO 2022), and DEL
_FREE_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")  # ST/LT/UT keep TAB LF FF CR
_DATE_FORMATS = ("%Y%m%d", "%Y-%m-%d", "%Y.%m.%d", "%Y/%m/%d", "%d.%m.%Y", "%d/%m/%Y")
_TIME = re.compile(r"^(?:[01]\d|2[0-3])(?:[0-5]\d(?:(?:[0-5]\d|60)(?:\.\d{1,6})?)?)?$")
_DATETIME = re.compile(r"^\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?$")
_AGE = re.compile(r"^(\d{1,3})\s*([DWMY])$")
_SEX = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}


def clean_source_header(source: pydicom.Dataset) -> pydicom.Dataset:
    """A copy of ``source`` with top-level text values repaired and highdicom's Type 2 attributes present.

    Elements are shared with the source unless repaired (a repaired value is a new element), so
    pixel data is not copied and the source keeps its values.
    """
    copy = pydicom.Dataset()
    if hasattr(source, "file_meta"):
        copy.file_meta = source.file_meta
    copy.set_original_encoding(*_original_encoding(source))
    for element in source:
        fixed = _fixed_value(element)
        if fixed is None:
            copy.add(element)
        else:
            copy.add(DataElement(element.tag, element.VR, fixed[0]))
    for keyword, vr in REQUIRED_TYPE2.items():
        if keyword not in copy:
            copy.add(DataElement(tag_for_keyword(keyword), vr, ""))
    sex = _SEX.get(str(copy.PatientSex or "").strip().upper(), "")
    if sex != (copy.PatientSex or ""):  # highdicom accepts only M, F, O or empty
        copy["PatientSex"] = DataElement(copy["PatientSex"].tag, "CS", sex)
    return copy


def character_set_for(source_charset: str | Iterable[str] | None, texts: Iterable[str]) -> str | list[str] | None:
    """The source's SpecificCharacterSet if it encodes every one of ``texts``, else UTF-8 (ISO_IR 192).

    None (no SpecificCharacterSet, the ASCII default) when the source declares none and all texts are ASCII.
    """
    texts = list(texts)
    declared = [source_charset] if isinstance(source_charset, str) else list(source_charset or [])
    if not any(declared):  # the default repertoire is ASCII
        return UTF8 if any(not text.isascii() for text in texts) else None
    encodings = convert_encodings(declared)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            for text in texts:
                encode_string(text, encodings)
        except (UserWarning, LookupError, UnicodeError):
            return UTF8
    return declared[0] if len(declared) == 1 else declared


def header_texts(dataset: pydicom.Dataset) -> list[str]:
    """Every top-level text value (SH, LO, ST, LT, UT, UC, PN) of a dataset, as str."""
    texts = []
    for element in dataset:
        if element.VR in _TEXT_VRS and element.value not in (None, ""):
            values = element.value if isinstance(element.value, MultiValue) else [element.value]
            texts.extend(str(v) for v in values)
    return texts


def _original_encoding(source: pydicom.Dataset) -> tuple[bool | None, bool | None, str | list[str] | None]:
    """(implicit VR, little endian, character set) as the source was read, for set_original_encoding."""
    implicit, little = source.original_encoding
    return implicit, little, source.get("SpecificCharacterSet")


def _fixed_value(element: DataElement) -> tuple[object] | None:
    """(repaired value,) when the element's value breaks its VR, else None (keep it)."""
    vr = element.VR
    if vr == "SQ" or element.keyword == "SpecificCharacterSet" or element.value is None or element.value == "":
        return None
    if vr not in _MAX_CHARS and vr not in ("UT", "UC"):
        return None
    given = list(element.value) if isinstance(element.value, MultiValue) else [element.value]
    if vr not in _MULTI_VALUED and len(given) != 1:
        return None
    values = given
    if len(given) > 1 and _single_valued(element):  # a stray backslash split one value
        values = [given[0]] if vr == "PN" else [" ".join(str(v) for v in given)]  # PN: a 2nd person
    cleaned = [_clean_one(vr, v) for v in values]  # an empty value keeps its place
    if cleaned == [str(v) for v in given]:
        return None
    return (cleaned if len(cleaned) > 1 else cleaned[0],)


def _single_valued(element: DataElement) -> bool:
    try:
        return dictionary_VM(element.tag) == "1"
    except KeyError:  # private or unknown: keep its multiplicity
        return False


def _clean_one(vr: str, value: object) -> str:
    """One value of a VR, repaired, or "" when it cannot be."""
    if vr == "PN":
        return _clean_person_name(str(value))
    text = str(value)
    if vr in ("ST", "LT", "UT"):
        text = _FREE_TEXT_CONTROL.sub(" ", text)
        limit = _MAX_CHARS.get(vr)
        return text[:limit] if limit else text
    text = _CONTROL.sub(" ", text).replace("\\", "/")
    if vr == "DA":
        return _clean_date(text)
    if vr == "TM":
        compact = text.strip().replace(":", "")
        return compact if _TIME.match(compact) else ""
    if vr == "DT":
        compact = re.sub(r"[-:T ]", "", text.strip())
        return compact if _DATETIME.match(compact) else ""
    if vr == "AS":
        match = _AGE.match(text.strip().upper())
        return f"{int(match.group(1)):03d}{match.group(2)}" if match else ""
    if vr == "DS":
        return _clean_number(text, integer=False)
    if vr == "IS":
        return _clean_number(text, integer=True)
    if vr == "CS":
        text = re.sub(r"[^A-Z0-9 _]", "_", text.strip().upper())
    return text.strip()[: _MAX_CHARS.get(vr, len(text))]


def _clean_person_name(name: str) -> str:
    """PN: no controls but ESC, no backslash, at most 3 groups of at most 5 components and 64 characters."""
    name = _CONTROL.sub(" ", name).replace("\\", " ")
    groups = name.split("=")[:3]
    fixed = []
    for group in groups:
        components = group.split("^")
        if len(components) > 5:
            components = [*components[:4], " ".join(components[4:])]
        fixed.append("^".join(c.strip() for c in components)[:64].rstrip("^"))
    return "=".join(fixed).rstrip("=")


def _clean_date(text: str) -> str:
    stripped = text.strip()
    for pattern in _DATE_FORMATS:
        try:
            return datetime.datetime.strptime(stripped, pattern).strftime("%Y%m%d")
        except ValueError:
            continue
    return ""


def _clean_number(text: str, integer: bool) -> str:
    stripped = text.strip()
    if not integer and is_valid_ds(stripped) and len(stripped) <= 16:
        return stripped
    try:
        number = float(stripped.replace(",", "."))
    except ValueError:
        return ""
    if integer:
        if not number.is_integer() or abs(number) >= 2**31:
            return ""
        return str(int(number))
    return format_number_as_ds(number)
