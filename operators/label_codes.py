"""The DICOM codes of the BraTS labels: the segmented property type a SEG segment (and so the SR and
RTSTRUCT built from it) gives each label whose card entry carries no ``type`` of its own.

The model card (segmamba/card.py) names a label by a neutral ``key``; this table is the
application's vocabulary for those keys: (coding scheme designator, code value, code meaning).
"""

from __future__ import annotations

from dataclasses import replace

from segmamba.card import EDEMA, ENHANCING, NECROTIC_CORE, Label

Code = tuple[str, str, str]

BRATS_TYPES: dict[str, Code] = {
    NECROTIC_CORE: ("SCT", "6574001", "Necrosis"),
    EDEMA: ("SCT", "79654002", "Edema"),
    ENHANCING: ("NCIt", "C113842", "Enhancing Lesion"),
}


def coded_label(label: Label) -> Label:
    """``label`` with a ``type``: its own, else the table's for its key; ValueError when it has neither."""
    if label.type is not None:
        return label
    if label.key not in BRATS_TYPES:
        raise ValueError(f"label {label.label} ({label.name!r}) has no type and its key {label.key!r} is not one of "
                         f"{sorted(BRATS_TYPES)}")
    scheme, value, meaning = BRATS_TYPES[label.key]
    return replace(label, type={"scheme": scheme, "value": value, "meaning": meaning})
