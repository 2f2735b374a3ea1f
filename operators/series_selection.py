"""Pick the four structural MR series of a brain-tumour study: t1n, t1c, t2w, t2f.

Input is the headers of a study's series (SeriesInstanceUID -> instances; pixel data is not
needed) and a rules dict (`operators/series_rules.json` by default, see `load_rules`). Output is a
`SeriesSelection` (role -> series, with the reason each was chosen), or a `SeriesSelectionError`
whose message lists every series found and why each candidate was rejected for each role that is
missing or ambiguous.

Policy, in order:

1. Ignored, whatever the rules say (the reason shows in error messages): modality other than MR;
   ImageType LOCALIZER; diffusion (DiffusionBValue > 0, ImageType DIFFUSION/ADC/TRACEW/...);
   derived images (ImageType value 1 DERIVED: MPR, MIP, subtraction); phase images (ImageType
   P/PHASE); 4D series (two instances at one ImagePositionPatient, TemporalPositionIdentifier > 1
   or NumberOfTemporalPositions > 1); fewer than `min_slices` instances. Then every series that
   matches an entry of the rules' `ignore` list (localizer/DWI/MPR/SWI... descriptions).
2. Description evidence: a series is a candidate for a role when it matches one of the rules'
   `selections` with that name (DICOMSeriesSelectorOperator format and semantics, see
   `match_conditions`). A t1n match whose ContrastBolusAgent is set (not "NONE"...) moves to t1c
   unless its description explicitly says pre-contrast (`attributes.explicit_pre_contrast`).
3. Attribute evidence, for a role with no description candidate: series whose description matches
   no selection are classified from ScanningSequence, RepetitionTime, EchoTime and InversionTime
   (`attributes` thresholds): long-TI inversion recovery with long TE is FLAIR (t2f); long TR and
   TE is t2w; short TE with short TR or a T1-range inversion (MPRAGE, T1-FLAIR) is T1, which is t1c
   with ContrastBolusAgent and t1n without.
4. Order fallback (`order_fallback`, default on): if t1c still has no candidate and exactly two
   T1 series are t1n candidates, the later one (AcquisitionTime, else SeriesTime, else SeriesNumber)
   is t1c and the earlier t1n: contrast is given after the native T1.
5. Ties (several candidates for one role), narrowed in this order: candidates whose attribute class
   agrees with the role beat those that disagree; for t1n, series acquired before the chosen t1c beat
   later ones; then the rules' `prefer` criteria ("3d", "most_slices", "latest", "earliest"), each
   keeping the best. A tie that remains is an error: the selector never guesses silently.

Roles are resolved in the order t2f, t2w, t1c, t1n; a series serves at most one role. The
`DicomSeriesSelector` MONAI Deploy operator (created lazily, so this module imports without
holoscan) wraps `select_from_studies`.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

from operators.errors import StudyError

ROLES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
PREFER_CRITERIA: tuple[str, ...] = ("3d", "most_slices", "latest", "earliest")
DEFAULT_RULES_PATH = Path(__file__).with_name("series_rules.json")

_RESOLUTION_ORDER = ("t2f", "t2w", "t1c", "t1n")
_ROLE_KIND = {"t1n": "t1", "t1c": "t1", "t2w": "t2w", "t2f": "t2f"}
_KIND_NAMES = {"t1": "T1-weighted", "t2w": "T2-weighted", "t2f": "FLAIR"}
_DIFFUSION_IMAGE_TYPES = frozenset({"DIFFUSION", "ADC", "EADC", "TRACEW", "TRACE", "FA", "DTI"})
_PHASE_IMAGE_TYPES = frozenset({"P", "PHASE", "PHASE MAP"})
_ORIENTATIONS = ("Sagittal", "Coronal", "Axial")
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
_TOP_LEVEL_KEYS = frozenset({"selections", "ignore", "min_slices", "prefer", "order_fallback", "attributes"})


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class RoleChoice:
    """The series chosen for one role and why."""

    series_instance_uid: str
    description: str
    series_number: int | None
    reason: str


@dataclass(frozen=True)
class SeriesSelection:
    """Role -> chosen series for one study, plus the series that were ignored (uid -> reason)."""

    study_instance_uid: str
    accession_number: str
    choices: Mapping[str, RoleChoice]
    ignored: Mapping[str, str] = field(default_factory=dict)

    @property
    def series_uids(self) -> dict[str, str]:
        """Role -> SeriesInstanceUID."""
        return {role: choice.series_instance_uid for role, choice in self.choices.items()}

    @property
    def reasons(self) -> dict[str, str]:
        """Role -> why that series was chosen."""
        return {role: choice.reason for role, choice in self.choices.items()}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Role -> {series_instance_uid, description, series_number, reason} (JSON-ready)."""
        return {
            role: {
                "series_instance_uid": c.series_instance_uid,
                "description": c.description,
                "series_number": c.series_number,
                "reason": c.reason,
            }
            for role, c in self.choices.items()
        }

    def describe(self) -> str:
        """Multi-line summary for logs."""
        lines = [f"Series selected for study {self.study_instance_uid} (accession {self.accession_number or '-'}):"]
        for role, c in self.choices.items():
            lines.append(f"  {role}: {c.description!r} ({c.series_instance_uid}): {c.reason}")
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

    Missing optional keys get their defaults; unknown keys (other than "_comment"-style keys
    starting with "_") and malformed entries raise ValueError.
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
    prefer = raw.get("prefer", [])
    if prefer is None or prefer == "none":
        prefer = []
    if isinstance(prefer, str):
        prefer = [prefer]
    if not isinstance(prefer, list) or any(p not in PREFER_CRITERIA for p in prefer):
        raise ValueError(f"prefer must be a list of {PREFER_CRITERIA} (or 'none'), not {prefer!r}")
    order_fallback = raw.get("order_fallback", True)
    if not isinstance(order_fallback, bool):
        raise ValueError("order_fallback must be true or false")
    attributes = dict(_ATTRIBUTE_DEFAULTS)
    given = raw.get("attributes", {})
    if not isinstance(given, Mapping):
        raise ValueError("attributes must be an object")
    bad = sorted(k for k in given if k not in _ATTRIBUTE_DEFAULTS and not str(k).startswith("_"))
    if bad:
        raise ValueError(f"unknown keys in attributes: {bad}; allowed: {sorted(_ATTRIBUTE_DEFAULTS)}")
    attributes.update({k: v for k, v in given.items() if not str(k).startswith("_")})
    for key in ("explicit_pre_contrast", "no_contrast_agent"):
        re.compile(attributes[key])
    for key in ("flair_inversion_ms", "t1_inversion_ms"):
        low, high = attributes[key]
        if not low <= high:
            raise ValueError(f"attributes.{key} must be [low, high]")
    return {
        "selections": selections,
        "ignore": ignore,
        "min_slices": min_slices,
        "prefer": list(prefer),
        "order_fallback": order_fallback,
        "attributes": attributes,
    }


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
    roles: tuple[str, ...] = ()  # description roles after the contrast move
    role_note: str = ""
    kind: str | None = None
    kind_text: str = ""
    agent: str | None = None

    @property
    def description(self) -> str:
        return str(self.header.get("SeriesDescription", "") or "")

    @property
    def modality(self) -> str:
        return str(self.header.get("Modality", "") or "")

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
    def label(self) -> str:
        number = f"#{self.number}" if self.number is not None else f"[...{self.uid[-8:]}]"
        return f"{number} {self.description!r}"

    @property
    def attribute_role(self) -> str | None:
        if self.kind == "t1":
            return "t1c" if self.agent else "t1n"
        return self.kind

    def details(self) -> str:
        when = _format_time(self.time_key)
        return f"{self.n_instances} instances, {self.acquisition_type or '?'}, acquired {when}"


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
    derived = False
    b_max = 0.0
    positions: list[tuple[float, ...]] = []
    temporal = 0
    for ds in ordered:
        types = [str(v).upper() for v in _as_list(ds.get("ImageType"))]
        image_types.update(types)
        derived = derived or (bool(types) and types[0] == "DERIVED")
        b_max = max(b_max, _float(ds.get("DiffusionBValue")) or 0.0)
        position = ds.get("ImagePositionPatient")
        if position is not None and len(position) == 3:
            positions.append(tuple(round(float(v), 2) for v in position))
        temporal = max(temporal, _int(ds.get("TemporalPositionIdentifier"), 0))
    temporal = max(temporal, _int(header.get("NumberOfTemporalPositions"), 0))
    if "LOCALIZER" in image_types:
        reasons.append("localizer (ImageType LOCALIZER)")
    if b_max > 0:
        reasons.append(f"diffusion (DiffusionBValue up to {b_max:g})")
    elif image_types & _DIFFUSION_IMAGE_TYPES:
        reasons.append(f"diffusion (ImageType {'/'.join(sorted(image_types & _DIFFUSION_IMAGE_TYPES))})")
    if derived:
        reasons.append(f"derived image (ImageType {_join(header.get('ImageType'))})")
    if image_types & _PHASE_IMAGE_TYPES:
        reasons.append("phase image (ImageType)")
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
    return _Series(uid, header, len(ordered), reasons, min(times) if times else None)


def _classify(series: _Series, rules: Mapping[str, Any]) -> None:
    """Fill description roles, attribute class and contrast agent of a candidate series."""
    attrs = rules["attributes"]
    header = series.header
    agent = str(header.get("ContrastBolusAgent", "") or "").strip()
    series.agent = None if re.search(attrs["no_contrast_agent"], agent) else agent
    roles = [
        role
        for role in ROLES
        if any(match_conditions(s["conditions"], header) for s in rules["selections"] if s["name"] == role)
    ]
    if (
        "t1n" in roles
        and "t1c" not in roles
        and series.agent
        and attrs["use"]
        and not re.search(attrs["explicit_pre_contrast"], series.description)
    ):
        roles = ["t1c" if r == "t1n" else r for r in roles]
        series.role_note = f" (matches the t1n rule, but ContrastBolusAgent {series.agent!r} says post-contrast)"
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
    role is missing or ambiguous, ValueError when the series belong to several studies.
    """
    config = load_rules(rules)
    infos = [_describe_series(str(uid), instances, config) for uid, instances in series.items()]
    infos.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.time_key or "", s.uid))
    studies = {str(s.header.get("StudyInstanceUID", "")) for s in infos if s.n_instances}
    if len(studies) > 1:
        raise ValueError(f"series from {len(studies)} studies given; select per study: {sorted(studies)}")
    header = next((s.header for s in infos if s.n_instances), Dataset())
    study_uid = str(header.get("StudyInstanceUID", "") or "")
    accession = str(header.get("AccessionNumber", "") or "")
    candidates = [s for s in infos if not s.ignore_reasons]
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
    choices = {
        role: RoleChoice(s.uid, s.description, s.number, resolver.reasons[role])
        for role in ROLES
        for s in [resolver.chosen[role]]
    }
    ignored = {s.uid: "; ".join(s.ignore_reasons) for s in infos if s.ignore_reasons}
    return SeriesSelection(study_uid, accession, choices, ignored)


class _Resolver:
    """Applies the description / attribute / order / tie-break policy role by role."""

    def __init__(self, candidates: list[_Series], rules: Mapping[str, Any]) -> None:
        self.candidates = candidates
        self.rules = rules
        self.use_attributes = bool(rules["attributes"]["use"])
        self.chosen: dict[str, _Series] = {}
        self.reasons: dict[str, str] = {}
        self.missing: dict[str, str] = {}
        self.ambiguous: dict[str, tuple[list[_Series], list[str]]] = {}

    def _taken(self, s: _Series) -> str | None:
        return next((role for role, c in self.chosen.items() if c is s), None)

    def _pool(self, role: str) -> tuple[list[_Series], str]:
        free = [s for s in self.candidates if self._taken(s) is None]
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
        self.reasons[role] = reason

    def _why(self, s: _Series, role: str, tier: str) -> str:
        if tier == "description":
            reason = f"description {s.description!r} matches the {role} rule{s.role_note}"
            return reason + (f"; attributes: {s.kind_text}" if s.kind_text else "")
        reason = f"description {s.description!r} matches no rule; attributes: {s.kind_text}"
        if role == "t1c":
            reason += f"; ContrastBolusAgent {s.agent!r}"
        elif role == "t1n":
            reason += "; no ContrastBolusAgent"
        return reason

    def _order_fallback(self) -> bool:
        pool, tier = self._pool("t1n")
        if len(pool) != 2 or any(s.agent for s in pool):
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
        if len(pool) > 1 and self.use_attributes:
            agree = [s for s in pool if s.kind == _ROLE_KIND[role]]
            if 0 < len(agree) < len(pool):
                dropped = [s for s in pool if s not in agree]
                notes.append(
                    f"; preferred over {_labels(dropped)}, whose attributes do not say {_KIND_NAMES[_ROLE_KIND[role]]}"
                )
                pool = agree
        post = self.chosen.get("t1c")
        if role == "t1n" and len(pool) > 1 and post is not None:
            before = [s for s in pool if _before(s, post)]
            if 0 < len(before) < len(pool):
                dropped = [s for s in pool if s not in before]
                notes.append(f"; preferred over {_labels(dropped)}, acquired after the chosen t1c")
                pool = before
        for criterion in self.rules["prefer"]:
            if len(pool) < 2:
                break
            kept = _prefer(criterion, pool)
            if len(kept) < len(pool):
                dropped = [s for s in pool if s not in kept]
                notes.append(f"; preferred over {_labels(dropped)} by prefer={criterion}")
                pool = kept
        return pool

    def explain(self, s: _Series, role: str) -> str:
        """Why candidate `s` is not the series for `role`."""
        taken = self._taken(s)
        if taken is not None:
            return f"chosen for {taken}"
        if s.roles:
            return f"description matches the {'/'.join(s.roles)} rule{s.role_note}"
        if not self.use_attributes:
            return "description matches no rule (attribute evidence disabled)"
        text = f"description matches no rule; attributes: {s.kind_text}"
        if s.kind == "t1" and role == "t1c" and not s.agent:
            text += "; no ContrastBolusAgent"
        return text


def _failure_message(study_uid: str, accession: str, infos: list[_Series], resolver: _Resolver) -> str:
    problems = [f"no {role} series" for role in ROLES if role in resolver.missing]
    problems += [f"{len(tied)} series tie for {role}" for role, (tied, _) in resolver.ambiguous.items()]
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
# Small helpers


def _prefer(criterion: str, pool: list[_Series]) -> list[_Series]:
    if criterion == "3d":
        three_d = [s for s in pool if s.acquisition_type == "3D"]
        return three_d or pool
    if criterion == "most_slices":
        most = max(s.n_instances for s in pool)
        return [s for s in pool if s.n_instances == most]
    ordered = _order(pool)
    if ordered is None:
        return pool
    pick = ordered[-1] if criterion == "latest" else ordered[0]
    return [s for s in pool if _order_key(s, pool) == _order_key(pick, pool)]


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
    than one) SeriesSelectionError explains each study.
    """
    config = load_rules(rules)
    if not studies:
        raise SeriesSelectionError("Series selection failed: no DICOM study in the input")
    results: list[tuple[dict[str, SeriesLike], SeriesSelection]] = []
    errors: list[SeriesSelectionError] = []
    for study in studies:
        by_uid = {str(series.SeriesInstanceUID): series for series in study.get_all_series()}
        headers = {
            uid: [sop.get_native_sop_instance() for sop in series.get_sop_instances()] for uid, series in by_uid.items()
        }
        try:
            selection = select_series(headers, config)
        except SeriesSelectionError as error:
            errors.append(error)
            continue
        results.append(({role: by_uid[uid] for role, uid in selection.series_uids.items()}, selection))
    if len(results) == 1:
        return results[0]
    if len(studies) == 1:
        raise errors[0]
    if not results:
        raise SeriesSelectionError(
            f"Series selection failed: none of the {len(studies)} studies in the input has all four series\n"
            + "\n".join(str(e) for e in errors)
        )
    uids = ", ".join(selection.study_instance_uid for _, selection in results)
    raise SeriesSelectionError(
        f"Series selection failed: {len(results)} studies in the input each have all four series "
        f"({uids}); send one study at a time"
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
