"""What one series says about itself: why it can never be used, derivation, lossy compression,
geometry, and what its contrast attributes say.

`describe_series` reads a series' headers into `SeriesEvidence`. Derivation is read from
ImageType first; description words (`derived.description_*`) are only a hint used when ImageType
is absent or says DERIVED without telling the kind, and never override ImageType ORIGINAL
(Siemens `t1_mpr_sag_p2_iso` is an MPRAGE acquisition). Contrast attributes (ContrastBolusAgent,
-Ingredient, -Volume, -AgentSequence) say post-contrast; a ContrastBolusStartTime after the series
says pre-contrast. The study-wide readings and the role classes are in `classification`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydicom import Dataset

from operators.roles import Role
from operators.series_selection.matching import match_conditions, orientation
from operators.series_selection.rules import AttributeEvidence, DerivedPolicy, SelectionRules
from operators.series_selection.values import as_list, bolus_key, format_time, join, time_key, to_float, to_int

Derivation = Literal["original", "derived-primary", "reformat", "never"]
Kind = Literal["t1", "t2w", "t2f"]  # what the acquisition attributes say; T1 splits into t1n/t1c by contrast
Contrast = Literal["post", "pre"]

_DIFFUSION_IMAGE_TYPES = frozenset({"DIFFUSION", "ADC", "EADC", "TRACEW", "TRACE", "FA", "DTI"})
_LOSSY_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG baseline",
    "1.2.840.10008.1.2.4.51": "JPEG extended",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
}


@dataclass
class SeriesEvidence:
    """One series' facts, filled in by `describe_series` and (roles, kind) by `classification`."""

    uid: str
    header: Dataset
    n_instances: int
    ignore_reasons: list[str]
    time_key: str | None
    derived: Derivation = "original"
    derived_note: str = ""
    lossy: str = ""  # why the series counts as lossy-compressed, "" when it does not
    slice_mm: float | None = None
    in_plane_mm: float | None = None
    plane: str | None = None
    distortion: str = ""  # ND, DIS2D, DIS3D or ""
    bolus: str | None = None  # ContrastBolusStartTime as 'HHMMSS.ffffff'
    contrast: Contrast | None = None  # attributes say "post" or "pre"; None: no attribute evidence
    contrast_text: str = ""
    bolus_timed: bool = False
    roles: tuple[Role, ...] = ()  # description roles after the contrast decision
    role_note: str = ""
    kind: Kind | None = None
    kind_text: str = ""

    @property
    def description(self) -> str:
        return str(self.header.get("SeriesDescription", "") or "")

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", "") or "")

    @property
    def patient_id(self) -> str:
        return str(self.header.get("PatientID", "") or "").strip()

    @property
    def number(self) -> int | None:
        value = self.header.get("SeriesNumber")
        try:
            return int(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    @property
    def acquisition_type(self) -> str:
        return str(self.header.get("MRAcquisitionType", "") or "").upper()

    @property
    def image_type(self) -> str:
        return join(self.header.get("ImageType"))

    @property
    def label(self) -> str:
        number = f"#{self.number}" if self.number is not None else f"[...{self.uid[-8:]}]"
        return f"{number} {self.description!r}"

    @property
    def full_label(self) -> str:
        return f"{self.label} ({self.uid})"

    @property
    def attribute_role(self) -> Role | None:
        """The role the acquisition and contrast attributes alone point to."""
        if self.kind == "t1":
            return "t1c" if self.contrast == "post" else "t1n"
        return self.kind

    def details(self) -> str:
        when = format_time(self.time_key)
        slices = f", {self.slice_mm:g} mm slices" if self.slice_mm else ""
        return f"{self.n_instances} instances, {self.acquisition_type or '?'}{slices}, acquired {when}"


def describe_series(uid: str, instances: Sequence[Dataset], rules: SelectionRules) -> SeriesEvidence:
    """Read one series' headers: the reasons it can never be used, and its facts."""
    ordered = sorted(instances, key=lambda ds: to_int(ds.get("InstanceNumber"), 1 << 30))
    header = ordered[0] if ordered else Dataset()
    reasons: list[str] = []
    modality = str(header.get("Modality", "") or "")
    if not ordered:
        reasons.append("no instances")
    elif modality.upper() != "MR":
        reasons.append(f"modality {modality or 'missing'}, not MR")
    image_types: set[str] = set()
    b_max = 0.0
    positions: list[tuple[float, ...]] = []
    temporal = 0
    lossy = ""
    for ds in ordered:
        image_types.update(str(v).strip().upper() for v in as_list(ds.get("ImageType")))
        b_max = max(b_max, to_float(ds.get("DiffusionBValue")) or 0.0)
        position = ds.get("ImagePositionPatient")
        if position is not None and len(position) == 3:
            positions.append(tuple(round(float(v), 2) for v in position))
        temporal = max(temporal, to_int(ds.get("TemporalPositionIdentifier"), 0))
        lossy = lossy or _lossy(ds)
    temporal = max(temporal, to_int(header.get("NumberOfTemporalPositions"), 0))
    if "LOCALIZER" in image_types:
        reasons.append("localizer (ImageType LOCALIZER)")
    if b_max > 0:
        reasons.append(f"diffusion (DiffusionBValue up to {b_max:g})")
    elif image_types & _DIFFUSION_IMAGE_TYPES:
        reasons.append(f"diffusion (ImageType {'/'.join(sorted(image_types & _DIFFUSION_IMAGE_TYPES))})")
    derived, derived_note = derivation(header, image_types, rules.derived)
    if derived == "never":
        reasons.append(derived_note)
    if len(positions) != len(set(positions)):
        reasons.append(f"4D: {len(positions)} instances at {len(set(positions))} positions")
    elif temporal > 1:
        reasons.append(f"4D: {temporal} temporal positions")
    if ordered:
        for entry in rules.ignore:
            if not any(r.startswith(entry.name) for r in reasons) and match_conditions(entry.conditions, header):
                reasons.append(f"{entry.name} ({', '.join(entry.conditions)} matches an ignore rule)")
    if ordered and len(ordered) < rules.min_slices:
        reasons.append(f"{len(ordered)} instance(s), fewer than the minimum of {rules.min_slices}")
    times = [t for t in (time_key(ds) for ds in ordered) if t is not None]
    series = SeriesEvidence(uid, header, len(ordered), reasons, min(times) if times else None, derived, derived_note,
                            lossy)  # fmt: skip
    series.plane = orientation(header.get("ImageOrientationPatient"))
    series.slice_mm, series.in_plane_mm = geometry(header, positions)
    series.distortion = next((t for t in ("DIS3D", "DIS2D", "ND") if t in image_types), "")
    series.bolus = bolus_key(header)
    series.contrast, series.contrast_text, series.bolus_timed = contrast_evidence(
        header, series.time_key, series.bolus, rules.attributes
    )
    return series


def derivation(header: Dataset, image_types: set[str], policy: DerivedPolicy) -> tuple[Derivation, str]:
    """(kind, note): ImageType first, description words only where ImageType does not tell."""
    values = [str(v).strip().upper() for v in as_list(header.get("ImageType"))]
    shown = "\\".join(values)
    never = image_type_hits(image_types, policy.never_usable)
    if never:
        return "never", f"derived image (ImageType {shown}): {'/'.join(never)} is never used"
    reformat = image_type_hits(image_types, policy.reformat)
    if reformat:
        return "reformat", f"reformat (ImageType {shown})"
    description = str(header.get("SeriesDescription", "") or "")
    hint_never = re.search(policy.description_never_usable, description)
    hint_reformat = re.search(policy.description_reformat, description)
    if values and values[0] == "ORIGINAL":
        hint = hint_never or hint_reformat
        if hint is not None:
            word = hint.group(0)
            return "original", f"ImageType {shown}: an acquisition ({word!r} in the description is not a reformat)"
        return "original", ""
    if values and values[0] == "DERIVED" and len(values) > 1 and values[1] == "PRIMARY":
        return "derived-primary", f"derived from the acquisition (ImageType {shown})"
    if hint_never:
        return "never", f"derived image ({hint_never.group(0)!r} in the description, ImageType {shown or 'absent'})"
    if hint_reformat:
        return "reformat", f"reformat ({hint_reformat.group(0)!r} in the description, ImageType {shown or 'absent'})"
    if values and values[0] == "DERIVED":
        return "never", f"derived image (ImageType {shown}): not a reformat, processing unknown; never used"
    return "original", ""


def image_type_hits(values: set[str], terms: Sequence[str]) -> list[str]:
    """The terms found in ImageType values as whole words ("MIP" in "MIP_SAG", "P" in Philips "P_SE")."""
    tokens = [tuple(re.split(r"[^A-Z0-9]+", value.strip().upper())) for value in values]
    hits = []
    for term in terms:
        wanted = tuple(re.split(r"[^A-Z0-9]+", term.strip().upper()))
        n = len(wanted)
        if any(words[i : i + n] == wanted for words in tokens for i in range(len(words) - n + 1)):
            hits.append(term)
    return hits


def _lossy(ds: Dataset) -> str:
    if str(ds.get("LossyImageCompression", "") or "").strip() == "01":
        method = join(ds.get("LossyImageCompressionMethod")) or "method not given"
        ratio = join(ds.get("LossyImageCompressionRatio"))
        return f"LossyImageCompression 01 ({method}{', ratio ' + ratio if ratio else ''})"
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if syntax in _LOSSY_TRANSFER_SYNTAXES:
        return f"transfer syntax {_LOSSY_TRANSFER_SYNTAXES[syntax]}"
    return ""


def geometry(header: Dataset, positions: Sequence[tuple[float, ...]]) -> tuple[float | None, float | None]:
    """(through-plane mm: the larger of SliceThickness and slice spacing, in-plane mm: sqrt of pixel area)."""
    thickness = to_float(header.get("SliceThickness"))
    spacing = None
    cosines = [to_float(v) for v in as_list(header.get("ImageOrientationPatient"))]
    if len(cosines) == 6 and None not in cosines and len(set(positions)) > 1:
        normal = np.cross(np.array(cosines[:3], dtype=float), np.array(cosines[3:], dtype=float))
        depths = np.unique(np.round(np.asarray(sorted(set(positions)), dtype=float) @ normal, 2))
        if depths.size > 1:
            spacing = float(np.median(np.diff(depths)))
    through = max((v for v in (thickness, spacing) if v), default=None)
    pixel = [to_float(v) for v in as_list(header.get("PixelSpacing"))]
    in_plane = math.sqrt(pixel[0] * pixel[1]) if len(pixel) == 2 and None not in pixel else None  # type: ignore[operator]
    return (round(through, 3) if through else None), (round(in_plane, 4) if in_plane else None)


def contrast_evidence(
    header: Dataset, time: str | None, bolus: str | None, attrs: AttributeEvidence
) -> tuple[Contrast | None, str, bool]:
    """What the contrast attributes say: ("post" | "pre" | None, the words for the reason, timed).

    ``time`` is the series' time key, ``bolus`` its ContrastBolusStartTime ('HHMMSS.ffffff').
    """
    found = []
    agent = str(header.get("ContrastBolusAgent", "") or "").strip()
    if agent and not re.search(attrs.no_contrast_agent, agent):
        found.append(f"ContrastBolusAgent {agent!r}")
    ingredient = join(header.get("ContrastBolusIngredient")).strip()
    if ingredient and not re.search(attrs.no_contrast_agent, ingredient):
        found.append(f"ContrastBolusIngredient {ingredient!r}")
    volume = to_float(header.get("ContrastBolusVolume"))
    if volume:
        found.append(f"ContrastBolusVolume {volume:g} ml")
    sequence = header.get("ContrastBolusAgentSequence")
    if sequence:
        meaning = str(sequence[0].get("CodeMeaning", "") or sequence[0].get("CodeValue", "") or "coded")
        found.append(f"ContrastBolusAgentSequence {meaning!r}")
    if not found and bolus is None:
        return None, "", False
    if bolus is not None and time:
        shown = format_time("00000000" + bolus)
        if time[8:] < bolus:
            return "pre", f"ContrastBolusStartTime {shown} is after this series ({format_time(time)})", True
        found.append(f"ContrastBolusStartTime {shown} (series at {format_time(time)})")
    elif bolus is not None:
        found.append(f"ContrastBolusStartTime {str(header.get('ContrastBolusStartTime')).replace(':', '').strip()}")
    return "post", f"{', '.join(found)} says post-contrast", bolus is not None
