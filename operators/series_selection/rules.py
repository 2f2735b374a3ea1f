"""The selection policy (`operators/series_rules.json` by default) as a validated, frozen object.

`parse_rules` reads the shipped file, a path, JSON text or a mapping into `SelectionRules`;
anything malformed raises `RulesError` (a ConfigurationError) naming the key and, for a file,
the file. `load_rules` gives the same policy as the JSON-shaped dict (a fresh copy, for callers
that derive a variant: ``{**load_rules(), "prefer": []}``).

Keys: ``selections`` (role rules in DICOMSeriesSelectorOperator format), ``ignore`` (named rules
of series never used), ``min_slices``, ``prefer`` (criteria of `PREFER_CRITERIA`, in order; [] or
"none": every tie fails), ``order_fallback``, ``attributes`` (thresholds of the attribute
evidence), ``derived`` (ImageType values never used / of reformats, description hints). Keys
starting with "_" are comments.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

from operators.errors import ConfigurationError
from operators.roles import ROLES, Role, as_role

PreferCriterion = Literal[
    "original", "3d", "thinnest", "finest_in_plane", "axial", "distortion_corrected", "lossless",
    "full_coverage", "latest", "earliest", "most_slices",
]  # fmt: skip
PREFER_CRITERIA: tuple[PreferCriterion, ...] = get_args(PreferCriterion)
DEFAULT_PREFER: tuple[PreferCriterion, ...] = (
    "original", "3d", "thinnest", "finest_in_plane", "axial", "distortion_corrected", "lossless", "full_coverage",
    "latest",
)  # fmt: skip
DEFAULT_RULES_PATH = Path(__file__).parent.parent / "series_rules.json"


class RulesError(ConfigurationError, ValueError):
    """The selection rules are malformed (misconfiguration, not the study's fault)."""


@dataclass(frozen=True)
class Rule:
    """A named DICOMSeriesSelectorOperator rule: attribute keyword -> wanted value (see `match_conditions`)."""

    name: str
    conditions: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The rule in the rules file's format."""
        return {"name": self.name, "conditions": dict(self.conditions)}


@dataclass(frozen=True)
class AttributeEvidence:
    """Thresholds (ms) and patterns of the evidence read from acquisition and contrast attributes."""

    use: bool = True
    explicit_pre_contrast: str = r"(?i)(?<![a-z0-9])(?:pre|w/o|without|nativ|non[-_ ]?contrast)"
    no_contrast_agent: str = r"(?i)^\s*(?:none|no|n/?a|nil|0|-+)?\s*$"
    flair_inversion_ms: tuple[float, float] = (1500, 3000)
    flair_min_echo_ms: float = 60
    t2_min_repetition_ms: float = 1500
    t2_min_echo_ms: float = 60
    t1_max_echo_ms: float = 20
    t1_max_repetition_ms: float = 1000
    t1_inversion_ms: tuple[float, float] = (300, 1300)


@dataclass(frozen=True)
class DerivedPolicy:
    """Derived images: ImageType values never used, those of reformats, and the description hints."""

    never_usable: tuple[str, ...] = (
        "MIP", "MINIP", "MNIP", "PROJECTION", "SUBTRACTION", "SUB", "P", "PHASE", "R", "REAL", "I", "IMAGINARY",
        "MAP", "MOSAIC", "VRT", "FUSED", "CBF", "CBV", "MTT", "TTP",
    )  # fmt: skip
    reformat: tuple[str, ...] = ("MPR", "REFORMAT", "REFORMATTED", "CSAMPR", "CSAPARALLEL")
    description_never_usable: str = r"(?i)(?<![a-z0-9])(?:mip|minip|mnip|sub|subtraction|projection)(?![a-z0-9])"
    description_reformat: str = r"(?i)(?<![a-z0-9])(?:mpr|reformat|reformatted|rfmt)(?![a-z0-9])"


@dataclass(frozen=True)
class SelectionRules:
    """The whole selection policy, validated."""

    selections: tuple[Rule, ...]
    ignore: tuple[Rule, ...] = ()
    min_slices: int = 10
    prefer: tuple[PreferCriterion, ...] = DEFAULT_PREFER
    order_fallback: bool = True
    attributes: AttributeEvidence = AttributeEvidence()
    derived: DerivedPolicy = DerivedPolicy()

    def rules_for(self, role: Role) -> tuple[Rule, ...]:
        """The selections naming ``role``."""
        return tuple(rule for rule in self.selections if rule.name == role)

    def to_dict(self) -> dict[str, Any]:
        """The policy in the rules file's format (a fresh, editable copy; `parse_rules` reads it back)."""
        return {
            "selections": [rule.to_dict() for rule in self.selections],
            "ignore": [rule.to_dict() for rule in self.ignore],
            "min_slices": self.min_slices,
            "prefer": list(self.prefer),
            "order_fallback": self.order_fallback,
            "attributes": {f.name: _listed(getattr(self.attributes, f.name)) for f in fields(AttributeEvidence)},
            "derived": {f.name: _listed(getattr(self.derived, f.name)) for f in fields(DerivedPolicy)},
        }


_TOP_LEVEL_KEYS = frozenset(f.name for f in fields(SelectionRules))


def load_rules(source: SelectionRules | Mapping[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """The validated policy as the JSON-shaped dict (defaults filled in); see `parse_rules`."""
    return parse_rules(source).to_dict()


def parse_rules(source: SelectionRules | Mapping[str, Any] | str | Path | None = None) -> SelectionRules:
    """Read and validate selection rules: None (the shipped file), a path, JSON text or a mapping.

    Missing optional keys get their defaults; unknown keys (other than "_"-prefixed comments),
    malformed entries, patterns that do not compile, an unreadable file or bad JSON raise
    RulesError (naming the file where there is one).
    """
    if isinstance(source, SelectionRules):
        return source
    where = ""
    try:
        if source is None or (isinstance(source, (str, Path)) and not str(source).lstrip().startswith("{")):
            path = Path(source) if source is not None else DEFAULT_RULES_PATH
            where = str(path)
            raw: Any = json.loads(path.read_text(encoding="utf-8"))
        elif isinstance(source, Mapping):
            raw = source
        else:
            raw = json.loads(str(source))
        return _parse(raw)
    except (OSError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        reason = str(error) if isinstance(error, RulesError) else f"{type(error).__name__}: {error}"
        raise RulesError(f"selection rules {where}: {reason}" if where else reason) from error


def _parse(raw: Any) -> SelectionRules:
    if not isinstance(raw, Mapping):
        raise RulesError("selection rules must be a JSON object")
    unknown = sorted(k for k in raw if k not in _TOP_LEVEL_KEYS and not str(k).startswith("_"))
    if unknown:
        raise RulesError(f"unknown keys in selection rules: {unknown}; allowed: {sorted(_TOP_LEVEL_KEYS)}")
    min_slices = raw.get("min_slices", 10)
    if not isinstance(min_slices, int) or isinstance(min_slices, bool) or min_slices < 1:
        raise RulesError(f"min_slices must be a positive integer, not {min_slices!r}")
    order_fallback = raw.get("order_fallback", True)
    if not isinstance(order_fallback, bool):
        raise RulesError("order_fallback must be true or false")
    return SelectionRules(
        selections=_rules(raw.get("selections"), "selections", roles_only=True),
        ignore=_rules(raw.get("ignore", []), "ignore", roles_only=False),
        min_slices=min_slices,
        prefer=_prefer(raw.get("prefer", list(DEFAULT_PREFER))),
        order_fallback=order_fallback,
        attributes=_attributes(_section(raw, "attributes", AttributeEvidence)),
        derived=_derived(_section(raw, "derived", DerivedPolicy)),
    )


def _prefer(prefer: Any) -> tuple[PreferCriterion, ...]:
    if prefer is None or prefer == "none":
        return ()
    if isinstance(prefer, str):
        prefer = [prefer]
    if not isinstance(prefer, list) or any(p not in PREFER_CRITERIA for p in prefer):
        raise RulesError(f"prefer must be a list of {PREFER_CRITERIA} (or 'none'), not {prefer!r}")
    return tuple(c for p in prefer for c in PREFER_CRITERIA if c == p)  # the given order, typed


def _section(raw: Mapping[str, Any], key: str, kind: type) -> dict[str, Any]:
    """The given part of section ``key``, its keys checked against the fields of ``kind``."""
    given = raw.get(key, {})
    if not isinstance(given, Mapping):
        raise RulesError(f"{key} must be an object")
    allowed = sorted(f.name for f in fields(kind))
    bad = sorted(k for k in given if k not in allowed and not str(k).startswith("_"))
    if bad:
        raise RulesError(f"unknown keys in {key}: {bad}; allowed: {allowed}")
    return {k: v for k, v in given.items() if not str(k).startswith("_")}


def _attributes(given: Mapping[str, Any]) -> AttributeEvidence:
    values: dict[str, Any] = {}
    for key, value in given.items():
        if key == "use":
            if not isinstance(value, bool):
                raise RulesError("attributes.use must be true or false")
            values[key] = value
        elif key in ("explicit_pre_contrast", "no_contrast_agent"):
            values[key] = _pattern(value, f"attributes.{key}")
        elif key in ("flair_inversion_ms", "t1_inversion_ms"):
            if not (isinstance(value, Sequence) and len(value) == 2 and all(_is_number(v) for v in value)) or not (
                value[0] <= value[1]
            ):
                raise RulesError(f"attributes.{key} must be [low, high]")
            values[key] = (value[0], value[1])
        else:
            if not _is_number(value):
                raise RulesError(f"attributes.{key} must be a number of milliseconds, not {value!r}")
            values[key] = value
    return AttributeEvidence(**values)


def _derived(given: Mapping[str, Any]) -> DerivedPolicy:
    values: dict[str, Any] = {}
    for key, value in given.items():
        if key in ("never_usable", "reformat"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise RulesError(f"derived.{key} must be a list of ImageType values")
            values[key] = tuple(v.strip().upper() for v in value)
        else:
            values[key] = _pattern(value, f"derived.{key}")
    return DerivedPolicy(**values)


def _rules(entries: Any, where: str, *, roles_only: bool) -> tuple[Rule, ...]:
    if not isinstance(entries, list):
        raise RulesError(f'selection rules need a "{where}" list')
    checked = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
            raise RulesError(f"{where}[{i}] needs a string 'name'")
        name = entry["name"].strip()
        if roles_only and name not in ROLES:
            raise RulesError(f"{where}[{i}] name {name!r} is not one of {ROLES}")
        conditions = entry.get("conditions")
        if not isinstance(conditions, Mapping) or not conditions:
            raise RulesError(f"{where}[{i}] ({name}) needs a non-empty 'conditions' object")
        for key, wanted in conditions.items():
            if isinstance(wanted, str):
                _pattern(wanted, f"{where}[{i}] ({name}) condition {key}")
            elif isinstance(wanted, list) and not all(isinstance(v, (str, int, float)) for v in wanted):
                raise RulesError(f"{where}[{i}] ({name}) condition {key} has an unsupported value {wanted!r}")
        checked.append(Rule(as_role(name) if roles_only else name, MappingProxyType(dict(conditions))))
    return tuple(checked)


def _pattern(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RulesError(f"{where} must be a regular expression, not {value!r}")
    try:
        re.compile(value)
    except re.error as error:
        raise RulesError(f"{where}: {value!r} is not a regular expression ({error})") from error
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _listed(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
