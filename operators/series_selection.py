"""Pick the four structural MR series of a brain-tumour study: t1n, t1c, t2w, t2f.

Input is the headers of a study's series (SeriesInstanceUID -> instances; pixel data is not
needed; an Enhanced MR file arrives split into per-frame datasets, so "instances" are frames) and
a rules dict (`operators/series_rules.json` by default, see `load_rules`). Output is a
`SeriesSelection` (role -> series with the reason and the runners-up, plus one entry per series
of the study for the report), or a `SeriesSelectionError` whose first line is the whole reason and
whose details list every series found and why each candidate was rejected.

Policy, in order:

1. Ignored, whatever the rules say (the reason shows in the report): modality other than MR;
   ImageType LOCALIZER; diffusion (DiffusionBValue > 0, ImageType DIFFUSION/ADC/TRACEW/...);
   derived kinds that are never usable (rules' `derived.never_usable` ImageType values: MIP,
   MinIP, projections, subtractions, phase, parametric maps, mosaics; or a DERIVED\\SECONDARY
   image that is not a reformat); 4D series; fewer than `min_slices` instances; a PatientID other
   than the study's. Then every series that matches an entry of the rules' `ignore` list.
   Derivation is read from ImageType first; description words (`derived.description_*`) are only
   a hint used when ImageType is absent or says DERIVED without telling the kind, and never
   override ImageType ORIGINAL (Siemens `t1_mpr_sag_p2_iso` is an MPRAGE acquisition).
   Reformats (MPR) stay eligible at the lowest preference; DERIVED\\PRIMARY (e.g. a lossy copy)
   is eligible like an original, and lossy compression is recorded.
2. Description evidence: a series is a candidate for a role when it matches one of the rules'
   `selections` with that name (DICOMSeriesSelectorOperator format and semantics, see
   `match_conditions`). For T1 descriptions, contrast attributes (ContrastBolusAgent,
   -Ingredient, -Volume, -StartTime, ContrastBolusAgentSequence) overrule the words: attributes
   saying post-contrast make a t1c, a ContrastBolusStartTime after the series makes a t1n, and
   the reason says that the attributes won. Attributes that every candidate series carries
   without a ContrastBolusStartTime were entered once for the whole exam and are no evidence.
3. Attribute evidence, for a role with no description candidate: series whose description matches
   no selection are classified from ScanningSequence, RepetitionTime, EchoTime and InversionTime
   (`attributes` thresholds): long-TI inversion recovery with long TE is FLAIR (t2f); long TR and
   TE is t2w; short TE with short TR or a T1-range inversion (MPRAGE, T1-FLAIR) is T1, which is t1c
   with contrast attributes and t1n without.
4. Order fallback (`order_fallback`, default on): if t1c still has no candidate and exactly two
   T1 series are t1n candidates, the later one (AcquisitionTime, else SeriesTime, else SeriesNumber)
   is t1c and the earlier t1n: contrast is given after the native T1.
5. Several candidates for one role, narrowed in this order: candidates whose attribute class
   agrees with the role beat those that disagree; for t1n, series acquired before the chosen t1c
   beat later ones; then the rules' `prefer` criteria (see `PREFER_CRITERIA`), each keeping the
   best. The shipped order is a neuroradiologist's: originals over reformats, 3D over 2D, thin
   over thick slices, finer in-plane, axial over other planes, distortion-corrected over
   uncorrected copies, lossless over lossy, the later of repeats. Every candidate dropped is a
   runner-up with the reason it lost. A tie that remains is an error naming the candidates.

Roles are resolved in the order t2f, t2w, t1c, t1n; a series serves at most one role.
`select_from_studies` works on the SDK's DICOMStudy objects: it lists the series of other
studies/patients in the input (`SeriesSelection.foreign`), fails the study when the loader's
StudyInventory holds an unreadable file of (or possibly of) a selected series, and carries the
inventory for the report. The `DicomSeriesSelector` MONAI Deploy operator (created lazily, so this
module imports without holoscan) wraps it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

from operators.errors import StudyError
from operators.study_inventory import StudyInventory, inventory_of

ROLES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
PREFER_CRITERIA: tuple[str, ...] = (
    "original",
    "3d",
    "thinnest",
    "finest_in_plane",
    "axial",
    "distortion_corrected",
    "lossless",
    "full_coverage",
    "latest",
    "earliest",
    "most_slices",
)
DEFAULT_PREFER: tuple[str, ...] = (
    "original",
    "3d",
    "thinnest",
    "finest_in_plane",
    "axial",
    "distortion_corrected",
    "lossless",
    "full_coverage",
    "latest",
)
DEFAULT_RULES_PATH = Path(__file__).with_name("series_rules.json")
_FULL_COVERAGE = 0.7  # "full_coverage" keeps series reaching at least this share of the longest candidate's extent
log = logging.getLogger(__name__)

_RESOLUTION_ORDER = ("t2f", "t2w", "t1c", "t1n")
_ROLE_KIND = {"t1n": "t1", "t1c": "t1", "t2w": "t2w", "t2f": "t2f"}
_KIND_NAMES = {"t1": "T1-weighted", "t2w": "T2-weighted", "t2f": "FLAIR"}
_DIFFUSION_IMAGE_TYPES = frozenset({"DIFFUSION", "ADC", "EADC", "TRACEW", "TRACE", "FA", "DTI"})
_DISTORTION_CORRECTED = frozenset({"DIS2D", "DIS3D"})
_LOSSY_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG baseline",
    "1.2.840.10008.1.2.4.51": "JPEG extended",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless",
}
_ORIENTATIONS = ("Sagittal", "Coronal", "Axial")
_SIMILAR = 1.1  # sizes within 10% count as equal for "thinnest" and "finest_in_plane"
_ATTRIBUTE_DEFAULTS: dict[str, Any] = {
    "use": True,
    "explicit_pre_contrast": r"(?i)(?<![a-z0-9])(?:pre|w/o|without|nativ|non[-_ ]?contrast)",
    "no_contrast_agent": r"(?i)^\s*(?:none|no|n/?a|nil|0|-+)?\s*$",
    "flair_inversion_ms": [1500, 3000],
    "flair_min_echo_ms": 60,
    "t2_min_repetition_ms": 1500,
    "t2_min_echo_ms": 60,
    "t1_max_echo_ms": 20,
    "t1_max_repetition_ms": 1000,
    "t1_inversion_ms": [300, 1300],
}
_DERIVED_DEFAULTS: dict[str, Any] = {
    "never_usable": [
        "MIP", "MINIP", "MNIP", "PROJECTION", "SUBTRACTION", "SUB", "P", "PHASE", "R", "REAL", "I", "IMAGINARY",
        "MAP", "MOSAIC", "VRT", "FUSED", "CBF", "CBV", "MTT", "TTP",
    ],
    "reformat": ["MPR", "REFORMAT", "REFORMATTED", "CSAMPR", "CSAPARALLEL"],
    "description_never_usable": r"(?i)(?<![a-z0-9])(?:mip|minip|mnip|sub|subtraction|projection)(?![a-z0-9])",
    "description_reformat": r"(?i)(?<![a-z0-9])(?:mpr|reformat|reformatted|rfmt)(?![a-z0-9])",
}  # fmt: skip
_TOP_LEVEL_KEYS = frozenset({"selections", "ignore", "min_slices", "prefer", "order_fallback", "attributes", "derived"})


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class RunnerUp:
    """A candidate for a role that lost to the chosen series, and why."""

    series_instance_uid: str
    description: str
    series_number: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RoleChoice:
    """The series chosen for one role, why, the candidates it beat, and whether it was lossy."""

    series_instance_uid: str
    description: str
    series_number: int | None
    reason: str
    runners_up: tuple[RunnerUp, ...] = ()
    lossy: bool = False


@dataclass(frozen=True)
class SeriesEntry:
    """One series of the study for the report: what became of it and why.

    ``status`` is "selected" (``role`` set), "runner-up" (lost the ``role`` it competed for),
    "not used" (a usable series no role needed) or "ignored" (never a candidate).
    """

    series_instance_uid: str
    series_number: int | None
    description: str
    modality: str
    instances: int
    status: str
    role: str | None
    reason: str
    image_type: str = ""
    acquisition: str = ""
    plane: str = ""
    slice_mm: float | None = None
    lossy: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ForeignSeries:
    """A series of another study or patient in the same input, and why it was not used."""

    study_instance_uid: str
    patient_id: str
    series_instance_uid: str
    series_number: int | None
    description: str
    instances: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SeriesSelection:
    """Role -> chosen series for one study, plus every series' fate (for the report).

    ``ignored`` maps uid -> reason for the series that were never candidates; ``series`` has one
    entry per series of the study; ``foreign`` the series of other studies/patients in the same
    input; ``inventory`` the loader's record of files it did not load; ``policy`` the preferences
    and derived-image policy that were applied.
    """

    study_instance_uid: str
    accession_number: str
    choices: Mapping[str, RoleChoice]
    ignored: Mapping[str, str] = field(default_factory=dict)
    series: tuple[SeriesEntry, ...] = ()
    foreign: tuple[ForeignSeries, ...] = ()
    inventory: StudyInventory | None = None
    patient_id: str = ""
    policy: Mapping[str, Any] = field(default_factory=dict)

    @property
    def series_uids(self) -> dict[str, str]:
        """Role -> SeriesInstanceUID."""
        return {role: choice.series_instance_uid for role, choice in self.choices.items()}

    @property
    def reasons(self) -> dict[str, str]:
        """Role -> why that series was chosen."""
        return {role: choice.reason for role, choice in self.choices.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Role -> {series_instance_uid, description, series_number, reason, lossy, runners_up} (JSON-ready)."""
        return {
            role: {
                "series_instance_uid": c.series_instance_uid,
                "description": c.description,
                "series_number": c.series_number,
                "reason": c.reason,
                "lossy": c.lossy,
                "runners_up": [r.to_dict() for r in c.runners_up],
            }
            for role, c in self.choices.items()
        }

    def describe(self) -> str:
        """Multi-line summary for logs."""
        lines = [f"Series selected for study {self.study_instance_uid} (accession {self.accession_number or '-'}):"]
        for role, c in self.choices.items():
            lines.append(f"  {role}: {c.description!r} ({c.series_instance_uid}): {c.reason}")
            lines.extend(f"    runner-up #{r.series_number} {r.description!r}: {r.reason}" for r in c.runners_up)
        lines.extend(f"  not used, {f.description!r} ({f.series_instance_uid}): {f.reason}" for f in self.foreign)
        return "\n".join(lines)


class SeriesSelectionError(StudyError, ValueError):
    """The study lacks a series for some role, or several tie (bad input).

    The first line of ``message`` is the complete reason; the rest (every series found and why
    each candidate was rejected) becomes ``details`` for the log.
    """

    def __init__(
        self,
        message: str,
        *,
        study_instance_uid: str = "",
        accession: str = "",
        missing: Sequence[str] = (),
        ambiguous: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        first = message.partition("\n")[0]
        reason = first.split("): ", 1)[1] if "): " in first else first.removeprefix("Series selection failed: ")
        super().__init__(
            study_instance_uid or "(no StudyInstanceUID)",
            f"series selection: {reason}",
            accession=accession,
            details=message,
        )
        self.message = message
        self.study_instance_uid = study_instance_uid
        self.missing: tuple[str, ...] = tuple(missing)
        self.ambiguous: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in (ambiguous or {}).items()}


# --------------------------------------------------------------------------------------------
# Rules


def load_rules(source: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Load and validate selection rules: None (shipped defaults), a path, JSON text or a mapping.

    Missing optional keys get their defaults (a missing "prefer" gets `DEFAULT_PREFER`; [] or
    "none" means fail on every tie); unknown keys (other than "_comment"-style keys starting with
    "_") and malformed entries raise ValueError.
    """
    if source is None:
        raw: Any = json.loads(DEFAULT_RULES_PATH.read_text(encoding="utf-8"))
    elif isinstance(source, Mapping):
        raw = source
    elif isinstance(source, str) and source.lstrip().startswith("{"):
        raw = json.loads(source)
    else:
        raw = json.loads(Path(source).read_text(encoding="utf-8"))
    if not isinstance(raw, Mapping):
        raise ValueError("selection rules must be a JSON object")
    unknown = sorted(k for k in raw if k not in _TOP_LEVEL_KEYS and not str(k).startswith("_"))
    if unknown:
        raise ValueError(f"unknown keys in selection rules: {unknown}; allowed: {sorted(_TOP_LEVEL_KEYS)}")
    selections = _check_entries(raw.get("selections"), "selections", names=ROLES)
    ignore = _check_entries(raw.get("ignore", []), "ignore", names=None)
    min_slices = raw.get("min_slices", 10)
    if not isinstance(min_slices, int) or isinstance(min_slices, bool) or min_slices < 1:
        raise ValueError(f"min_slices must be a positive integer, not {min_slices!r}")
    prefer = raw.get("prefer", list(DEFAULT_PREFER))
    if prefer is None or prefer == "none":
        prefer = []
    if isinstance(prefer, str):
        prefer = [prefer]
    if not isinstance(prefer, list) or any(p not in PREFER_CRITERIA for p in prefer):
        raise ValueError(f"prefer must be a list of {PREFER_CRITERIA} (or 'none'), not {prefer!r}")
    order_fallback = raw.get("order_fallback", True)
    if not isinstance(order_fallback, bool):
        raise ValueError("order_fallback must be true or false")
    attributes = _merge_section(raw, "attributes", _ATTRIBUTE_DEFAULTS)
    for key in ("explicit_pre_contrast", "no_contrast_agent"):
        re.compile(attributes[key])
    for key in ("flair_inversion_ms", "t1_inversion_ms"):
        low, high = attributes[key]
        if not low <= high:
            raise ValueError(f"attributes.{key} must be [low, high]")
    derived = _merge_section(raw, "derived", _DERIVED_DEFAULTS)
    for key in ("never_usable", "reformat"):
        if not isinstance(derived[key], list) or not all(isinstance(v, str) for v in derived[key]):
            raise ValueError(f"derived.{key} must be a list of ImageType values")
        derived[key] = [v.strip().upper() for v in derived[key]]
    for key in ("description_never_usable", "description_reformat"):
        re.compile(derived[key])
    return {
        "selections": selections,
        "ignore": ignore,
        "min_slices": min_slices,
        "prefer": list(prefer),
        "order_fallback": order_fallback,
        "attributes": attributes,
        "derived": derived,
    }


def _merge_section(raw: Mapping[str, Any], key: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    given = raw.get(key, {})
    if not isinstance(given, Mapping):
        raise ValueError(f"{key} must be an object")
    bad = sorted(k for k in given if k not in defaults and not str(k).startswith("_"))
    if bad:
        raise ValueError(f"unknown keys in {key}: {bad}; allowed: {sorted(defaults)}")
    merged.update({k: v for k, v in given.items() if not str(k).startswith("_")})
    return merged


def _check_entries(entries: Any, where: str, names: Sequence[str] | None) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise ValueError(f'selection rules need a "{where}" list')
    checked = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise ValueError(f"{where}[{i}] needs a string 'name'")
        name = entry["name"].strip()
        if names is not None and name not in names:
            raise ValueError(f"{where}[{i}] name {name!r} is not one of {names}")
        conditions = entry.get("conditions")
        if not isinstance(conditions, Mapping) or not conditions:
            raise ValueError(f"{where}[{i}] ({name}) needs a non-empty 'conditions' object")
        for key, wanted in conditions.items():
            if isinstance(wanted, str):
                re.compile(wanted)
            elif isinstance(wanted, list) and not all(isinstance(v, (str, int, float)) for v in wanted):
                raise ValueError(f"{where}[{i}] ({name}) condition {key} has an unsupported value {wanted!r}")
        checked.append({"name": name, "conditions": dict(conditions)})
    return checked


# --------------------------------------------------------------------------------------------
# DICOMSeriesSelectorOperator matching semantics on a pydicom Dataset


def match_conditions(conditions: Mapping[str, Any], dataset: Dataset) -> bool:
    """True when `dataset` meets every condition, with DICOMSeriesSelectorOperator semantics.

    The SDK's own matcher is a private method working on its DICOMStudy/DICOMSeries property
    objects, so the semantics are reimplemented here for plain headers: falsy condition values
    are skipped; a missing or empty attribute never matches; strings match by case-insensitive
    equality, else `re.search` (IGNORECASE); numbers by `[v, op]` relations (>, >=, <, <=, !=),
    `[min, max]` inclusive ranges, `re.fullmatch` of a string, or equality; multi-valued
    attributes (e.g. ImageType) by case-insensitive substring of each term, "!" excluding;
    ImageOrientationPatient by "Axial"/"Coronal"/"Sagittal" (the dominant slice normal).
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
        if not isinstance(wanted, str) or wanted.strip().capitalize() not in _ORIENTATIONS:
            raise ValueError(f"ImageOrientationPatient condition must be one of {_ORIENTATIONS}, not {wanted!r}")
        return _orientation(value) == wanted.strip().capitalize()
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


def _orientation(value: Any) -> str | None:
    try:
        cosines = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if cosines.shape != (6,):
        return None
    normal = np.cross(cosines[:3], cosines[3:])
    if not np.linalg.norm(normal):
        return None
    return _ORIENTATIONS[int(np.argmax(np.abs(normal)))]


# --------------------------------------------------------------------------------------------
# Per-series facts


@dataclass
class _Series:
    uid: str
    header: Dataset
    n_instances: int
    ignore_reasons: list[str]
    time_key: str | None
    derived: str = "original"  # original | derived-primary | reformat | never
    derived_note: str = ""
    lossy: str = ""  # why the series counts as lossy-compressed, "" when it does not
    slice_mm: float | None = None
    in_plane_mm: float | None = None
    plane: str | None = None
    distortion: str = ""  # ND, DIS2D, DIS3D or ""
    contrast: str | None = None  # attributes say "post" or "pre"; None: no attribute evidence
    contrast_text: str = ""
    bolus_timed: bool = False
    roles: tuple[str, ...] = ()  # description roles after the contrast decision
    role_note: str = ""
    kind: str | None = None
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
        return _join(self.header.get("ImageType"))

    @property
    def label(self) -> str:
        number = f"#{self.number}" if self.number is not None else f"[...{self.uid[-8:]}]"
        return f"{number} {self.description!r}"

    @property
    def full_label(self) -> str:
        return f"{self.label} ({self.uid})"

    @property
    def attribute_role(self) -> str | None:
        if self.kind == "t1":
            return "t1c" if self.contrast == "post" else "t1n"
        return self.kind

    def details(self) -> str:
        when = _format_time(self.time_key)
        slices = f", {self.slice_mm:g} mm slices" if self.slice_mm else ""
        return f"{self.n_instances} instances, {self.acquisition_type or '?'}{slices}, acquired {when}"


def _describe_series(uid: str, instances: Sequence[Dataset], rules: Mapping[str, Any]) -> _Series:
    ordered = sorted(instances, key=lambda ds: _int(ds.get("InstanceNumber"), 1 << 30))
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
        image_types.update(str(v).strip().upper() for v in _as_list(ds.get("ImageType")))
        b_max = max(b_max, _float(ds.get("DiffusionBValue")) or 0.0)
        position = ds.get("ImagePositionPatient")
        if position is not None and len(position) == 3:
            positions.append(tuple(round(float(v), 2) for v in position))
        temporal = max(temporal, _int(ds.get("TemporalPositionIdentifier"), 0))
        lossy = lossy or _lossy(ds)
    temporal = max(temporal, _int(header.get("NumberOfTemporalPositions"), 0))
    if "LOCALIZER" in image_types:
        reasons.append("localizer (ImageType LOCALIZER)")
    if b_max > 0:
        reasons.append(f"diffusion (DiffusionBValue up to {b_max:g})")
    elif image_types & _DIFFUSION_IMAGE_TYPES:
        reasons.append(f"diffusion (ImageType {'/'.join(sorted(image_types & _DIFFUSION_IMAGE_TYPES))})")
    derived, derived_note = _derivation(header, image_types, rules["derived"])
    if derived == "never":
        reasons.append(derived_note)
    if len(positions) != len(set(positions)):
        reasons.append(f"4D: {len(positions)} instances at {len(set(positions))} positions")
    elif temporal > 1:
        reasons.append(f"4D: {temporal} temporal positions")
    if ordered:
        for entry in rules["ignore"]:
            name = entry["name"]
            if not any(r.startswith(name) for r in reasons) and match_conditions(entry["conditions"], header):
                reasons.append(f"{name} ({', '.join(entry['conditions'])} matches an ignore rule)")
    if ordered and len(ordered) < rules["min_slices"]:
        reasons.append(f"{len(ordered)} instance(s), fewer than the minimum of {rules['min_slices']}")
    times = [t for t in (_time_key(ds) for ds in ordered) if t is not None]
    series = _Series(uid, header, len(ordered), reasons, min(times) if times else None, derived, derived_note, lossy)
    series.plane = _orientation(header.get("ImageOrientationPatient"))
    series.slice_mm, series.in_plane_mm = _geometry(header, positions)
    series.distortion = next((t for t in ("DIS3D", "DIS2D", "ND") if t in image_types), "")
    series.contrast, series.contrast_text, series.bolus_timed = _contrast_evidence(
        header, series.time_key, rules["attributes"]
    )
    return series


def _derivation(header: Dataset, image_types: set[str], policy: Mapping[str, Any]) -> tuple[str, str]:
    """(kind, note): ImageType first, description words only where ImageType does not tell."""
    values = [str(v).strip().upper() for v in _as_list(header.get("ImageType"))]
    shown = "\\".join(values)
    never = _image_type_hits(image_types, policy["never_usable"])
    if never:
        return "never", f"derived image (ImageType {shown}): {'/'.join(never)} is never used"
    reformat = _image_type_hits(image_types, policy["reformat"])
    if reformat:
        return "reformat", f"reformat (ImageType {shown})"
    description = str(header.get("SeriesDescription", "") or "")
    hint_never = re.search(policy["description_never_usable"], description)
    hint_reformat = re.search(policy["description_reformat"], description)
    if values and values[0] == "ORIGINAL":
        if hint_never or hint_reformat:
            word = (hint_never or hint_reformat).group(0)  # type: ignore[union-attr]
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


def _image_type_hits(values: set[str], terms: Sequence[str]) -> list[str]:
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
        method = _join(ds.get("LossyImageCompressionMethod")) or "method not given"
        ratio = _join(ds.get("LossyImageCompressionRatio"))
        return f"LossyImageCompression 01 ({method}{', ratio ' + ratio if ratio else ''})"
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "") or "") if meta is not None else ""
    if syntax in _LOSSY_TRANSFER_SYNTAXES:
        return f"transfer syntax {_LOSSY_TRANSFER_SYNTAXES[syntax]}"
    return ""


def _geometry(header: Dataset, positions: Sequence[tuple[float, ...]]) -> tuple[float | None, float | None]:
    """(through-plane mm: the larger of SliceThickness and slice spacing, in-plane mm: sqrt of pixel area)."""
    thickness = _float(header.get("SliceThickness"))
    spacing = None
    cosines = [_float(v) for v in _as_list(header.get("ImageOrientationPatient"))]
    if len(cosines) == 6 and None not in cosines and len(set(positions)) > 1:
        normal = np.cross(np.array(cosines[:3], dtype=float), np.array(cosines[3:], dtype=float))
        depths = np.unique(np.round(np.asarray(sorted(set(positions)), dtype=float) @ normal, 2))
        if depths.size > 1:
            spacing = float(np.median(np.diff(depths)))
    through = max((v for v in (thickness, spacing) if v), default=None)
    pixel = [_float(v) for v in _as_list(header.get("PixelSpacing"))]
    in_plane = math.sqrt(pixel[0] * pixel[1]) if len(pixel) == 2 and None not in pixel else None  # type: ignore[operator]
    return (round(through, 3) if through else None), (round(in_plane, 4) if in_plane else None)


def _contrast_evidence(header: Dataset, time_key: str | None, attrs: Mapping[str, Any]) -> tuple[str | None, str, bool]:
    """What the contrast attributes say: ("post" | "pre" | None, the words for the reason, timed)."""
    found = []
    agent = str(header.get("ContrastBolusAgent", "") or "").strip()
    if agent and not re.search(attrs["no_contrast_agent"], agent):
        found.append(f"ContrastBolusAgent {agent!r}")
    ingredient = _join(header.get("ContrastBolusIngredient")).strip()
    if ingredient and not re.search(attrs["no_contrast_agent"], ingredient):
        found.append(f"ContrastBolusIngredient {ingredient!r}")
    volume = _float(header.get("ContrastBolusVolume"))
    if volume:
        found.append(f"ContrastBolusVolume {volume:g} ml")
    sequence = header.get("ContrastBolusAgentSequence")
    if sequence:
        meaning = str(sequence[0].get("CodeMeaning", "") or sequence[0].get("CodeValue", "") or "coded")
        found.append(f"ContrastBolusAgentSequence {meaning!r}")
    start = str(header.get("ContrastBolusStartTime", "") or "").replace(":", "").strip()
    if not found and not start:
        return None, "", False
    if start and time_key:
        whole, _, fraction = start.partition(".")
        bolus = f"{whole:0<6}.{fraction:0<6}"
        shown = _format_time("00000000" + bolus)
        if time_key[8:] < bolus:
            return "pre", f"ContrastBolusStartTime {shown} is after this series ({_format_time(time_key)})", True
        found.append(f"ContrastBolusStartTime {shown} (series at {_format_time(time_key)})")
    elif start:
        found.append(f"ContrastBolusStartTime {start}")
    return "post", f"{', '.join(found)} says post-contrast", bool(start)


def _classify(series: _Series, rules: Mapping[str, Any]) -> None:
    """Fill description roles (contrast attributes overruling words), attribute class."""
    attrs = rules["attributes"]
    header = series.header
    roles = [
        role
        for role in ROLES
        if any(match_conditions(s["conditions"], header) for s in rules["selections"] if s["name"] == role)
    ]
    t1_role = next((r for r in roles if r in ("t1n", "t1c")), None)
    if t1_role is not None and len(set(roles) & {"t1n", "t1c"}) == 1 and series.contrast and attrs["use"]:
        target = "t1c" if series.contrast == "post" else "t1n"
        if target != t1_role:
            if t1_role == "t1c":
                said = "says post-contrast"
            elif re.search(attrs["explicit_pre_contrast"], series.description):
                said = "says pre-contrast"
            else:
                said = "has no contrast words"
            roles = [target if r == t1_role else r for r in roles]
            series.role_note = f" (matches the {t1_role} rule: the description {said}, but {series.contrast_text}:" \
                               " attributes win)"  # fmt: skip
    series.roles = tuple(roles)
    series.kind, series.kind_text = _attribute_kind(header, attrs)


def _attribute_kind(header: Dataset, attrs: Mapping[str, Any]) -> tuple[str | None, str]:
    tr, te, ti = (_float(header.get(k)) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
    ti = ti or None
    sequence = {str(v).upper() for v in _as_list(header.get("ScanningSequence"))}
    parts = [f"TR {tr:g} ms" if tr else "no TR", f"TE {te:g} ms" if te else "no TE"]
    if ti:
        parts.append(f"TI {ti:g} ms")
    if sequence:
        parts.append("/".join(sorted(sequence)))
    if header.get("MRAcquisitionType"):
        parts.append(str(header.get("MRAcquisitionType")))
    facts = ", ".join(parts)
    if "EP" in sequence:
        return None, f"{facts}: echo-planar (diffusion/perfusion/BOLD), unclassified"
    if tr is None or te is None:
        return None, f"{facts}: unclassified"
    flair_low, flair_high = attrs["flair_inversion_ms"]
    t1_low, t1_high = attrs["t1_inversion_ms"]
    if ti is not None and flair_low <= ti <= flair_high and te >= attrs["flair_min_echo_ms"]:
        return "t2f", f"{facts}: long-TI inversion recovery with long TE, FLAIR"
    if te >= attrs["t2_min_echo_ms"] and tr >= attrs["t2_min_repetition_ms"] and ti is None:
        return "t2w", f"{facts}: long TR and TE, T2-weighted"
    if te <= attrs["t1_max_echo_ms"] and (
        tr <= attrs["t1_max_repetition_ms"] or (ti is not None and t1_low <= ti <= t1_high)
    ):
        return "t1", f"{facts}: short TE with short TR or T1-range inversion, T1-weighted"
    return None, f"{facts}: fits none of T1, T2, FLAIR"


# --------------------------------------------------------------------------------------------
# Selection


def select_series(
    series: Mapping[str, Sequence[Dataset]], rules: Mapping[str, Any] | str | Path | None = None
) -> SeriesSelection:
    """Choose t1n, t1c, t2w and t2f among one study's series (see the module docstring).

    `series` maps SeriesInstanceUID -> that series' instances (headers suffice). `rules` is
    anything `load_rules` accepts (None: the shipped defaults). Raises SeriesSelectionError when a
    role is missing or ambiguous, when the series belong to several studies, or when they belong
    to several patients in equal numbers.
    """
    config = load_rules(rules)
    infos = [_describe_series(str(uid), instances, config) for uid, instances in series.items()]
    infos.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.time_key or "", s.uid))
    studies = {str(s.header.get("StudyInstanceUID", "")) for s in infos if s.n_instances}
    if len(studies) > 1:
        raise SeriesSelectionError(
            f"Series selection failed: series from {len(studies)} studies given; select per study: {sorted(studies)}"
        )
    header = next((s.header for s in infos if s.n_instances), Dataset())
    study_uid = str(header.get("StudyInstanceUID", "") or "")
    accession = str(header.get("AccessionNumber", "") or "")
    patient = _study_patient(infos, study_uid, accession)
    candidates = [s for s in infos if not s.ignore_reasons]
    _discount_exam_wide_contrast(candidates)
    _apply_exam_bolus_time(candidates)
    for s in candidates:
        _classify(s, config)

    resolver = _Resolver(candidates, config)
    resolver.run()
    if resolver.missing or resolver.ambiguous:
        raise SeriesSelectionError(
            _failure_message(study_uid, accession, infos, resolver),
            study_instance_uid=study_uid,
            accession=accession,
            missing=[r for r in ROLES if r in resolver.missing],
            ambiguous={r: [s.uid for s in tied] for r, (tied, _) in resolver.ambiguous.items()},
        )
    choices = {}
    for role in ROLES:
        s = resolver.chosen[role]
        reason = resolver.reasons[role] + (f"; lossy-compressed ({s.lossy}), used" if s.lossy else "")
        runners = tuple(RunnerUp(r.uid, r.description, r.number, why) for r, why in resolver.lost.get(role, []))
        choices[role] = RoleChoice(s.uid, s.description, s.number, reason, runners, bool(s.lossy))
    ignored = {s.uid: "; ".join(s.ignore_reasons) for s in infos if s.ignore_reasons}
    entries = tuple(_entry(s, resolver, choices) for s in infos)
    return SeriesSelection(study_uid, accession, choices, ignored, entries, patient_id=patient, policy=_policy(config))


def classify_series(
    instances: Sequence[Dataset], rules: Mapping[str, Any] | str | Path | None = None
) -> tuple[str | None, str]:
    """The role one series is a candidate for on its own, and why: (role, reason) or (None, reason).

    Description evidence first, else attribute evidence, as `select_series` applies them (study-
    wide steps such as the order fallback and the preferences need the whole study).
    """
    config = load_rules(rules)
    uid = str(instances[0].get("SeriesInstanceUID", "") or "") if instances else ""
    s = _describe_series(uid, instances, config)
    if s.ignore_reasons:
        return None, "ignored: " + "; ".join(s.ignore_reasons)
    _classify(s, config)
    if s.roles:
        if len(s.roles) > 1:
            return None, f"description matches the {'/'.join(s.roles)} rules"
        return s.roles[0], f"description {s.description!r} matches the {s.roles[0]} rule{s.role_note}"
    if config["attributes"]["use"] and s.attribute_role:
        extra = f"; {s.contrast_text}" if s.contrast_text else ""
        return s.attribute_role, f"description matches no rule; attributes: {s.kind_text}{extra}"
    return None, f"description matches no rule; attributes: {s.kind_text}"


def _study_patient(infos: list[_Series], study_uid: str, accession: str) -> str:
    """The study's PatientID (held by most series); series of other patients get an ignore reason."""
    counts = Counter(s.patient_id for s in infos if s.patient_id and s.n_instances)
    if not counts:
        return ""
    ranked = counts.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        holders = ", ".join(f"{pid!r}: {n} series" for pid, n in ranked)
        raise SeriesSelectionError(
            f"Series selection failed for study {study_uid or '(no StudyInstanceUID)'} (accession {accession or '-'}): "
            f"the study holds series of {len(ranked)} patients ({holders}); cannot tell whose study it is",
            study_instance_uid=study_uid,
            accession=accession,
        )
    patient = ranked[0][0]
    for s in infos:
        if s.patient_id and s.patient_id != patient:
            s.ignore_reasons.insert(0, f"another patient (PatientID {s.patient_id!r}; the study's is {patient!r})")
    return patient


def _discount_exam_wide_contrast(candidates: list[_Series]) -> None:
    """Contrast attributes on every candidate, none timed, were entered for the whole exam: no evidence."""
    if len(candidates) < 2 or not all(s.contrast == "post" and not s.bolus_timed for s in candidates):
        return
    for s in candidates:
        s.contrast = None
        s.contrast_text = f"{s.contrast_text.removesuffix(' says post-contrast')} on every series, untimed: no evidence"


def _apply_exam_bolus_time(candidates: list[_Series]) -> None:
    """One ContrastBolusStartTime in the exam times the injection for every series: a series without
    contrast attributes is pre-contrast when acquired before it, post-contrast when after."""
    timed = [s for s in candidates if s.bolus_timed]
    starts = {str(s.header.get("ContrastBolusStartTime", "")).replace(":", "").strip() for s in timed}
    if len(starts) != 1:
        return
    whole, _, fraction = starts.pop().partition(".")
    bolus = f"{whole:0<6}.{fraction:0<6}"
    shown, source = _format_time("00000000" + bolus), timed[0].label
    for s in candidates:
        if s.contrast is not None or s.bolus_timed or not s.time_key:
            continue
        before = s.time_key[8:] < bolus
        s.contrast = "pre" if before else "post"
        s.contrast_text = (f"acquired at {_format_time(s.time_key)}, {'before' if before else 'after'} the exam's "
                           f"ContrastBolusStartTime {shown} (series {source}): {s.contrast}-contrast")


def _policy(config: Mapping[str, Any]) -> dict[str, Any]:
    derived = config["derived"]
    return {
        "prefer": list(config["prefer"]),
        "never_used_image_types": list(derived["never_usable"]),
        "lowest_preference_image_types": list(derived["reformat"]),
        "derived_primary": "eligible like an original (e.g. lossy-compressed copies); lossy compression is reported",
        "derived_secondary_other": "never used (processing unknown)",
    }


def _entry(s: _Series, resolver: _Resolver, choices: Mapping[str, RoleChoice]) -> SeriesEntry:
    role = resolver.taken(s)
    if role is not None:
        status, reason = "selected", choices[role].reason
    elif s.ignore_reasons:
        status, reason = "ignored", "; ".join(s.ignore_reasons)
    else:
        lost = next(((r, why) for r, pairs in resolver.lost.items() for c, why in pairs if c is s), None)
        if lost is not None:
            role, status, reason = lost[0], "runner-up", lost[1]
        else:
            status, reason = "not used", resolver.unused(s)
    facts = {
        "image_type": s.image_type,
        "acquisition": s.acquisition_type,
        "plane": s.plane or "",
        "slice_mm": s.slice_mm,
        "lossy": bool(s.lossy),
    }
    if s.lossy and status != "selected":
        reason += f"; lossy-compressed ({s.lossy})"
    return SeriesEntry(s.uid, s.number, s.description, s.modality, s.n_instances, status, role, reason, **facts)


class _Resolver:
    """Applies the description / attribute / order / preference policy role by role."""

    def __init__(self, candidates: list[_Series], rules: Mapping[str, Any]) -> None:
        self.candidates = candidates
        self.rules = rules
        self.use_attributes = bool(rules["attributes"]["use"])
        self.chosen: dict[str, _Series] = {}
        self.reasons: dict[str, str] = {}
        self.lost: dict[str, list[tuple[_Series, str]]] = {}
        self.missing: dict[str, str] = {}
        self.ambiguous: dict[str, tuple[list[_Series], list[str]]] = {}

    def taken(self, s: _Series) -> str | None:
        """The role `s` was chosen for, if any."""
        return next((role for role, c in self.chosen.items() if c is s), None)

    def _pool(self, role: str) -> tuple[list[_Series], str]:
        free = [s for s in self.candidates if self.taken(s) is None]
        by_description = [s for s in free if role in s.roles]
        if by_description:
            return by_description, "description"
        if self.use_attributes:
            by_attributes = [s for s in free if not s.roles and s.attribute_role == role]
            if by_attributes:
                return by_attributes, "attributes"
        return [], ""

    def run(self) -> None:
        for role in _RESOLUTION_ORDER:
            if role in self.chosen:  # t1n, already set by the order fallback
                continue
            pool, tier = self._pool(role)
            if role == "t1c" and not pool and self.rules["order_fallback"] and self._order_fallback():
                continue
            if not pool:
                self.missing[role] = ""
                continue
            notes: list[str] = []
            pool = self._narrow(role, pool, notes)
            if len(pool) == 1:
                self._choose(role, pool[0], self._why(pool[0], role, tier) + "".join(notes))
            else:
                self.ambiguous[role] = (pool, notes)

    def _choose(self, role: str, s: _Series, reason: str) -> None:
        self.chosen[role] = s
        self.reasons[role] = reason + (f"; {s.derived_note}" if s.derived_note else "")

    def _why(self, s: _Series, role: str, tier: str) -> str:
        if tier == "description":
            reason = f"description {s.description!r} matches the {role} rule{s.role_note}"
            if s.contrast is None and s.contrast_text:  # exam-wide contrast attributes, disregarded
                reason += f"; {s.contrast_text}"
            return reason + (f"; attributes: {s.kind_text}" if s.kind_text else "")
        reason = f"description {s.description!r} matches no rule; attributes: {s.kind_text}"
        if role == "t1c":
            reason += f"; {s.contrast_text}"
        elif role == "t1n":
            reason += f"; {s.contrast_text}" if s.contrast_text else "; no contrast attributes"
        return reason

    def _order_fallback(self) -> bool:
        pool, tier = self._pool("t1n")
        if len(pool) != 2 or any(s.contrast == "post" for s in pool):
            return False
        ordered = _order(pool)
        if ordered is None:
            return False
        early, late = ordered
        self._choose(
            "t1c",
            late,
            f"{self._why(late, 't1n', tier)}; no contrast evidence in the study: the later of two T1 series "
            f"({_format_time(late.time_key)}, series {late.number}) is taken as post-contrast (order fallback)",
        )
        self._choose(
            "t1n",
            early,
            f"{self._why(early, 't1n', tier)}; the earlier of two T1 series "
            f"({_format_time(early.time_key)}, series {early.number}), order fallback",
        )
        return True

    def _narrow(self, role: str, pool: list[_Series], notes: list[str]) -> list[_Series]:
        lost = self.lost.setdefault(role, [])
        if len(pool) > 1 and self.use_attributes:
            agree = [s for s in pool if s.kind == _ROLE_KIND[role]]
            if 0 < len(agree) < len(pool):
                dropped = [s for s in pool if s not in agree]
                kind = _KIND_NAMES[_ROLE_KIND[role]]
                notes.append(f"; preferred over {_labels(dropped)}, whose attributes do not say {kind}")
                lost.extend((s, f"its attributes do not say {kind} ({s.kind_text})") for s in dropped)
                pool = agree
        post = self.chosen.get("t1c")
        if role == "t1n" and len(pool) > 1 and post is not None:
            before = [s for s in pool if _before(s, post)]
            if 0 < len(before) < len(pool):
                dropped = [s for s in pool if s not in before]
                notes.append(f"; preferred over {_labels(dropped)}, acquired after the chosen t1c")
                lost.extend((s, f"acquired after the chosen t1c {post.label}") for s in dropped)
                pool = before
        for criterion in self.rules["prefer"]:
            if len(pool) < 2:
                break
            kept = _prefer(criterion, pool)
            if len(kept) < len(pool):
                dropped = [s for s in pool if s not in kept]
                notes.append(f"; preferred over {_labels(dropped)} by prefer={criterion}")
                lost.extend((s, f"prefer={criterion}: {_why_lost(criterion, s, kept)}") for s in dropped)
                pool = kept
        return pool

    def explain(self, s: _Series, role: str) -> str:
        """Why candidate `s` is not the series for `role`."""
        taken = self.taken(s)
        if taken is not None:
            return f"chosen for {taken}"
        if s.roles:
            return f"description matches the {'/'.join(s.roles)} rule{s.role_note}"
        if not self.use_attributes:
            return "description matches no rule (attribute evidence disabled)"
        text = f"description matches no rule; attributes: {s.kind_text}"
        if s.kind == "t1" and role == "t1c" and s.contrast != "post":
            text += f"; {s.contrast_text}" if s.contrast_text else "; no ContrastBolusAgent"
        return text

    def unused(self, s: _Series) -> str:
        """Why a usable series that competed for no role was not used."""
        if s.roles:
            return f"description matches the {'/'.join(s.roles)} rule{s.role_note}, but that role was filled first"
        if not self.use_attributes:
            return "description matches no rule (attribute evidence disabled)"
        role = s.attribute_role
        if role is None:
            return f"description matches no rule; attributes: {s.kind_text}"
        return (
            f"description matches no rule; attributes say {role} ({s.kind_text}), but a series whose description "
            f"matches the {role} rule was chosen"
        )


def _failure_message(study_uid: str, accession: str, infos: list[_Series], resolver: _Resolver) -> str:
    problems = [f"no {role} series" for role in ROLES if role in resolver.missing]
    problems += [
        f"{len(tied)} series tie for {role} ({', '.join(s.full_label for s in tied)}) and no preference separates them"
        for role, (tied, _) in resolver.ambiguous.items()
    ]
    if not any(s.modality.upper() == "MR" for s in infos):
        found = sorted({s.modality or "?" for s in infos})
        problems = [f"no MR series in the study (modalities found: {', '.join(found)})"]
    lines = [
        f"Series selection failed for study {study_uid or '(no StudyInstanceUID)'} "
        f"(accession {accession or '-'}): {'; '.join(problems)}",
        f"Series found ({len(infos)}):",
    ]
    for s in infos:
        status = "ignored: " + "; ".join(s.ignore_reasons) if s.ignore_reasons else "candidate"
        lines.append(f"  {s.label} {s.modality or '?'}, {s.n_instances} instances, uid {s.uid}: {status}")
    if resolver.chosen:
        chosen = ", ".join(f"{role} = {s.label}" for role, s in resolver.chosen.items())
        lines.append(f"Chosen so far: {chosen}")
    for role in ROLES:
        if role in resolver.missing:
            lines.append(f"{role}: no candidate among {len(resolver.candidates)} usable series")
            lines.extend(f"  {s.label}: {resolver.explain(s, role)}" for s in resolver.candidates)
        elif role in resolver.ambiguous:
            tied, notes = resolver.ambiguous[role]
            lines.append(f"{role}: {len(tied)} candidates tie{''.join(notes)}")
            lines.extend(f"  {s.label}: {s.details()}; {resolver.explain(s, role)}" for s in tied)
            lines.append(
                f'  set "prefer" in the rules ({", ".join(PREFER_CRITERIA)}) to choose among them automatically'
                if not resolver.rules["prefer"]
                else f"  prefer={resolver.rules['prefer']} did not separate them"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Preferences


def _prefer(criterion: str, pool: list[_Series]) -> list[_Series]:
    if criterion == "original":
        return [s for s in pool if s.derived != "reformat"] or pool
    if criterion == "full_coverage":
        extents = [_extent_mm(s) for s in pool]
        if any(v is None for v in extents):
            return pool
        longest = max(extents)  # type: ignore[type-var]
        return [s for s, v in zip(pool, extents, strict=True) if v >= _FULL_COVERAGE * longest]  # type: ignore[operator]
    if criterion == "3d":
        return [s for s in pool if s.acquisition_type == "3D"] or pool
    if criterion in ("thinnest", "finest_in_plane"):
        sizes = [s.slice_mm if criterion == "thinnest" else s.in_plane_mm for s in pool]
        if any(v is None for v in sizes):
            return pool
        best = min(sizes)  # type: ignore[type-var]
        return [s for s, v in zip(pool, sizes, strict=True) if v <= best * _SIMILAR]  # type: ignore[operator]
    if criterion == "axial":
        return [s for s in pool if s.plane == "Axial"] or pool
    if criterion == "distortion_corrected":
        return [s for s in pool if s.distortion in _DISTORTION_CORRECTED] or pool
    if criterion == "lossless":
        return [s for s in pool if not s.lossy] or pool
    if criterion == "most_slices":
        most = max(s.n_instances for s in pool)
        return [s for s in pool if s.n_instances == most]
    ordered = _order(pool)
    if ordered is None:
        return pool
    pick = ordered[-1] if criterion == "latest" else ordered[0]
    return [s for s in pool if _order_key(s, pool) == _order_key(pick, pool)]


def _extent_mm(s: _Series) -> float | None:
    """How far the series reaches along its slice normal (slices x slice step), or None when unknown."""
    return s.n_instances * s.slice_mm if s.slice_mm else None


def _why_lost(criterion: str, s: _Series, kept: list[_Series]) -> str:
    winner = kept[0]
    if criterion == "full_coverage":
        return (f"covers {_extent_mm(s):.0f} mm along its slices; {winner.label} covers "
                f"{_extent_mm(winner):.0f} mm (a partial repeat or slab)")
    if criterion == "original":
        return f"{s.derived_note}; an original acquisition ({winner.label}) exists"
    if criterion == "3d":
        return f"{s.acquisition_type or 'unknown'} acquisition; {winner.label} is 3D"
    if criterion == "thinnest":
        return f"{s.slice_mm:g} mm slices; {winner.label} has {winner.slice_mm:g} mm"
    if criterion == "finest_in_plane":
        return f"{s.in_plane_mm:g} mm pixels; {winner.label} has {winner.in_plane_mm:g} mm"
    if criterion == "axial":
        return f"{(s.plane or 'unknown').lower()} plane; {winner.label} is axial"
    if criterion == "distortion_corrected":
        return (
            f"not distortion-corrected (ImageType {s.image_type or 'absent'}); {winner.label} is ({winner.distortion})"
        )
    if criterion == "lossless":
        return f"lossy-compressed ({s.lossy}); {winner.label} is not"
    if criterion == "most_slices":
        return f"{s.n_instances} instances; {winner.label} has {winner.n_instances}"
    when = f"series {s.number}, {_format_time(s.time_key)}"
    if criterion == "latest":
        return f"an earlier acquisition ({when}) than the repeat {winner.label} ({_format_time(winner.time_key)})"
    return f"a later acquisition ({when}) than {winner.label} ({_format_time(winner.time_key)})"


# --------------------------------------------------------------------------------------------
# Small helpers


def _order_key(s: _Series, pool: Sequence[_Series]) -> tuple[str, int]:
    """Acquisition time when every series in `pool` has one, else SeriesNumber."""
    if all(p.time_key for p in pool):
        return (s.time_key or "", s.number or 0)
    return ("", s.number or 0)


def _order(pool: Sequence[_Series]) -> list[_Series] | None:
    """Series in acquisition order, or None when they cannot be told apart."""
    if not all(p.time_key for p in pool) and not all(p.number is not None for p in pool):
        return None
    keys = [_order_key(s, pool) for s in pool]
    if len(set(keys)) != len(keys):
        return None
    return [s for _, s in sorted(zip(keys, pool, strict=True), key=lambda pair: pair[0])]


def _before(s: _Series, other: _Series) -> bool:
    ordered = _order([s, other])
    return ordered is not None and ordered[0] is s


def _labels(series: Sequence[_Series]) -> str:
    return ", ".join(s.label for s in series)


def _time_key(ds: Dataset) -> str | None:
    """Sortable 'YYYYMMDDHHMMSS.ffffff' of the acquisition (series time as a fallback)."""
    stamp = str(ds.get("AcquisitionDateTime", "") or "")
    if stamp:
        date, time = stamp[:8], stamp[8:]
    else:
        date = str(ds.get("AcquisitionDate") or ds.get("SeriesDate") or ds.get("StudyDate") or "")
        time = str(ds.get("AcquisitionTime") or ds.get("SeriesTime") or "")
    time = time.split("+")[0].split("-")[0].replace(":", "").strip()
    if not time:
        return None
    whole, _, fraction = time.partition(".")
    return f"{date.strip():0>8}{whole:0<6}.{fraction:0<6}"


def _format_time(key: str | None) -> str:
    if not key:
        return "at unknown time"
    return f"{key[8:10]}:{key[10:12]}:{key[12:14]}"


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def _join(value: Any) -> str:
    return "\\".join(str(v) for v in _as_list(value))


def _float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


# --------------------------------------------------------------------------------------------
# MONAI Deploy App SDK objects (duck-typed so this part also needs no holoscan)


class SopInstanceLike(Protocol):
    """The part of the SDK's DICOMSOPInstance used here."""

    def get_native_sop_instance(self) -> Dataset: ...


class SeriesLike(Protocol):
    """The part of the SDK's DICOMSeries used here."""

    @property
    def SeriesInstanceUID(self) -> str: ...

    def get_sop_instances(self) -> Sequence[SopInstanceLike]: ...


class StudyLike(Protocol):
    """The part of the SDK's DICOMStudy used here."""

    @property
    def StudyInstanceUID(self) -> str: ...

    def get_all_series(self) -> Sequence[SeriesLike]: ...


def select_from_studies(
    studies: Sequence[StudyLike], rules: Mapping[str, Any] | str | Path | None = None
) -> tuple[dict[str, SeriesLike], SeriesSelection]:
    """Run `select_series` on SDK DICOMStudy objects; returns (role -> DICOMSeries, selection).

    With several studies, exactly one must yield a complete selection; otherwise (none, or more
    than one) SeriesSelectionError explains each study. The series of the other studies are
    listed in `SeriesSelection.foreign` (and logged as a warning). The loader's StudyInventory
    (`inventory_of`) is checked: an unreadable file of a selected series, or of an unknown series
    of this study, fails the study (StudyError naming series and file); otherwise it travels on
    the selection for the report.
    """
    config = load_rules(rules)
    if not studies:
        raise SeriesSelectionError("Series selection failed: no DICOM study in the input")
    results: list[tuple[dict[str, SeriesLike], SeriesSelection, StudyLike]] = []
    errors: dict[int, SeriesSelectionError] = {}
    headers_of: dict[int, dict[str, list[Dataset]]] = {}
    for index, study in enumerate(studies):
        by_uid = {str(series.SeriesInstanceUID): series for series in study.get_all_series()}
        headers = {
            uid: [sop.get_native_sop_instance() for sop in series.get_sop_instances()] for uid, series in by_uid.items()
        }
        headers_of[index] = headers
        try:
            selection = select_series(headers, config)
        except SeriesSelectionError as error:
            errors[index] = error
            continue
        results.append(({role: by_uid[uid] for role, uid in selection.series_uids.items()}, selection, study))
    if len(results) == 1:
        by_role, selection, chosen = results[0]
        others = [i for i, study in enumerate(studies) if study is not chosen]
        foreign = tuple(f for i in others for f in _foreign(headers_of[i], selection, errors.get(i)))
        if foreign:
            log.warning(
                "study %s: %d series of other studies/patients in the input are not used: %s",
                selection.study_instance_uid,
                len(foreign),
                "; ".join(f"{f.description!r} ({f.series_instance_uid}): {f.reason}" for f in foreign),
            )
        inventory = inventory_of(chosen)
        if inventory is not None:
            _check_unreadable(selection, inventory)
        return by_role, dataclasses.replace(selection, foreign=foreign, inventory=inventory)
    if len(studies) == 1:
        raise errors[0]
    if not results:
        raise SeriesSelectionError(
            f"Series selection failed: none of the {len(studies)} studies in the input has all four series\n"
            + "\n".join(str(e) for e in errors.values())
        )
    uids = ", ".join(selection.study_instance_uid for _, selection, _ in results)
    raise SeriesSelectionError(
        f"Series selection failed: {len(results)} studies in the input each have all four series "
        f"({uids}); send one study at a time"
    )


def _foreign(
    headers: Mapping[str, Sequence[Dataset]], selection: SeriesSelection, error: SeriesSelectionError | None
) -> list[ForeignSeries]:
    """The series of another study of the input, each with why it is not used."""
    found = []
    for uid, instances in headers.items():
        header = instances[0] if instances else Dataset()
        study = str(header.get("StudyInstanceUID", "") or "")
        patient = str(header.get("PatientID", "") or "").strip()
        if patient and selection.patient_id and patient != selection.patient_id:
            whose = f"another patient (PatientID {patient!r}; the selected study's is {selection.patient_id!r})"
        else:
            whose = "another study of the same patient"
        why = f"{whose}: study {study}, not the selected study {selection.study_instance_uid}"
        if error is not None:
            why += f" (that study is incomplete: {error.reason.removeprefix('series selection: ')})"
        number = _int(header.get("SeriesNumber"), -1)
        description = str(header.get("SeriesDescription", "") or "")
        found.append(
            ForeignSeries(study, patient, uid, None if number < 0 else number, description, len(instances), why)
        )
    return found


def _check_unreadable(selection: SeriesSelection, inventory: StudyInventory) -> None:
    """StudyError for an unreadable file that belongs to, or may belong to, a selected series."""
    selected = {c.series_instance_uid: (role, c) for role, c in selection.choices.items()}
    for file in inventory.unreadable:
        if file.study_instance_uid and file.study_instance_uid != selection.study_instance_uid:
            continue
        where = {"accession": selection.accession_number, "folder": inventory.folder, "file": file.path}
        if file.series_instance_uid in selected:
            role, choice = selected[file.series_instance_uid]
            label = f"#{choice.series_number} {choice.description!r} ({choice.series_instance_uid})"
            raise StudyError(
                selection.study_instance_uid,
                f"unreadable file {file.path} in the {role} series {label}: {file.reason}",
                series=label,
                **where,
            )
        if not file.series_instance_uid:
            raise StudyError(
                selection.study_instance_uid,
                f"unreadable file {file.path} of unknown series may belong to a selected series "
                f"({', '.join(selected_role for selected_role, _ in selected.values())}): {file.reason}",
                **where,
            )


def _operator_class() -> type:
    """Build the DicomSeriesSelector operator class (imports the SDK and holoscan)."""
    from monai.deploy.core import ConditionType, Fragment, Operator, OperatorSpec

    class DicomSeriesSelector(Operator):  # type: ignore[misc,valid-type]
        """Selects t1n/t1c/t2w/t2f in the loaded study (MONAI Deploy operator).

        Input `dicom_study_list`: List[DICOMStudy] from DICOMDataLoaderOperator.
        Output `selected_series`: dict role -> DICOMSeries. Output `series_selection`: the
        SeriesSelection (reasons, ignored series). Both outputs may be left unconnected.
        compute() raises SeriesSelectionError when the study does not qualify.
        """

        INPUT = "dicom_study_list"
        OUTPUT = "selected_series"
        OUTPUT_SELECTION = "series_selection"

        def __init__(
            self,
            fragment: Fragment,
            *args: Any,
            rules: Mapping[str, Any] | str | Path | None = None,
            **kwargs: Any,
        ) -> None:
            self.rules = load_rules(rules)
            self.last_selection: SeriesSelection | None = None
            super().__init__(fragment, *args, **kwargs)

        def setup(self, spec: OperatorSpec) -> None:
            spec.input(self.INPUT)
            spec.output(self.OUTPUT).condition(ConditionType.NONE)
            spec.output(self.OUTPUT_SELECTION).condition(ConditionType.NONE)

        def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
            studies = op_input.receive(self.INPUT)
            series, selection = select_from_studies(list(studies or []), self.rules)
            self.last_selection = selection
            op_output.emit(series, self.OUTPUT)
            op_output.emit(selection, self.OUTPUT_SELECTION)

    DicomSeriesSelector.__module__ = __name__
    DicomSeriesSelector.__qualname__ = "DicomSeriesSelector"
    return DicomSeriesSelector


def __getattr__(name: str) -> Any:
    """Create `DicomSeriesSelector` on first access, so the pure functions work without holoscan."""
    if name == "DicomSeriesSelector":
        cls = _operator_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
