"""The input convention a network was trained on: the model card's ``input_convention`` block.

    "input_convention": {
      "orientation": ["S", "P", "L"], "spacing_mm": 1.0, "reference_role": "t1c",
      "normalize": "zscore_crop" | "zscore_nonzero" | "none",
      "registration": {"enabled": true, "method": "rigid_mattes_mi", "onto": "t1c",
                       "max_translation_mm": 15.0, "max_rotation_deg": 15.0, "on_failure": "refuse" | "warn"},
      "brain_extraction": {"enabled": true, "method": "deepbet", "contrast": "t1n",
                           "apply_to": "all_channels", "normalize_within_mask": true},
      "atlas": {"enabled": false},
      "mirror_axes": [0, 1, 2]
    }

Every key is optional (the defaults below); unknown keys are refused. A card without the block
keeps the behaviour from before it existed (`legacy_convention`): the model grid has the
reference series' own axes, series are aligned by scanner coordinates only, nothing is
skull-stripped. The ablation settings ``registration`` and ``brain_extraction`` (card | on | off)
switch a step on or off whatever the card says (`with_overrides`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from operators.reorientation import OrientationError, axis_directions
from operators.roles import ROLES

CONVENTION_NORMALIZATIONS = ("zscore_crop", "zscore_nonzero", "none")
REGISTRATION_METHODS = ("rigid_mattes_mi",)
BRAIN_EXTRACTION_METHODS = ("deepbet",)
ON_FAILURE = ("refuse", "warn")
APPLY_TO = ("all_channels",)
OVERRIDES = ("card", "on", "off")
ATLAS_TEMPLATE = "nilearn MNI152 2009 (stand-in for the training atlas: the only template available offline)"


class ConventionError(ValueError):
    """A value of the ``input_convention`` block that cannot be used (the message names the key)."""


@dataclass(frozen=True)
class RegistrationConvention:
    """Rigid co-registration of every series onto the ``onto`` series (operators.registration)."""

    enabled: bool = False
    method: str = "rigid_mattes_mi"
    onto: str = "t1c"
    max_translation_mm: float = 15.0
    max_rotation_deg: float = 15.0
    on_failure: str = "refuse"


@dataclass(frozen=True)
class BrainExtractionConvention:
    """Brain mask from one contrast (operators.brain_extraction), applied to every channel."""

    enabled: bool = False
    method: str = "deepbet"
    contrast: str = "t1n"
    apply_to: str = "all_channels"
    normalize_within_mask: bool = True


@dataclass(frozen=True)
class AtlasConvention:
    """Rigid registration of the reference series onto an atlas; the model grid is the atlas box."""

    enabled: bool = False


@dataclass(frozen=True)
class InputConvention:
    """What the network saw in training. ``orientation`` None: the reference series' own axes."""

    orientation: tuple[str, str, str] | None = None
    spacing_mm: float = 1.0
    reference_role: str = "t1c"
    normalize: str = "zscore_nonzero"
    registration: RegistrationConvention = field(default_factory=RegistrationConvention)
    brain_extraction: BrainExtractionConvention = field(default_factory=BrainExtractionConvention)
    atlas: AtlasConvention = field(default_factory=AtlasConvention)
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    declared: bool = True  # False: the card has no block (today's behaviour)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (report.json)."""
        return {
            "declared_by_card": self.declared,
            "orientation": list(self.orientation) if self.orientation else "reference series axes",
            "spacing_mm": self.spacing_mm,
            "normalize": self.normalize,
            "registration": {f.name: getattr(self.registration, f.name) for f in fields(self.registration)},
            "brain_extraction": {f.name: getattr(self.brain_extraction, f.name) for f in fields(self.brain_extraction)},
            "atlas": {"enabled": self.atlas.enabled,
                      **({"template": ATLAS_TEMPLATE} if self.atlas.enabled else {})},
        }


def legacy_convention(spacing_mm: float, normalize: str) -> InputConvention:
    """The convention of a card without ``input_convention``: native reference axes, no registration,
    no brain extraction, the card's ``preprocessing`` spacing and normalisation."""
    return InputConvention(spacing_mm=float(spacing_mm), normalize=normalize, declared=False)


def _number(where: str, value: Any, minimum: float = 0.0, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or (positive and value == 0):
        raise ConventionError(f"input_convention.{where} must be a number {'>' if positive else '>='} {minimum:g}, "
                              f"got {value!r}")
    return float(value)


def _flag(where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConventionError(f"input_convention.{where} must be true or false, got {value!r}")
    return value


def _choice(where: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConventionError(f"input_convention.{where} must be one of {list(allowed)}, got {value!r}")
    return str(value)


def _block(where: str, value: Any, kind: type, extra: tuple[str, ...] = (), hidden: tuple[str, ...] = ()
           ) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConventionError(f"input_convention{'.' + where if where else ''} must be an object, got {value!r}")
    known = ({f.name for f in fields(kind)} | set(extra)) - set(hidden)
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConventionError(f"input_convention{'.' + where if where else ''}: unknown keys {unknown}; "
                              f"known: {sorted(known)}")
    return dict(value)


def parse_convention(block: Any) -> InputConvention:
    """The validated convention of a card's ``input_convention`` block (ConventionError if invalid)."""
    top = _block("", block, InputConvention, extra=("source",), hidden=("declared",))
    top.pop("source", None)  # where the convention comes from: documentation only
    raw_registration = _block("registration", top.pop("registration", {}), RegistrationConvention)
    raw_brain = _block("brain_extraction", top.pop("brain_extraction", {}), BrainExtractionConvention)
    raw_atlas = _block("atlas", top.pop("atlas", {}), AtlasConvention)
    convention = InputConvention()
    if "orientation" in top:
        codes = top["orientation"]
        try:
            axis_directions(codes if isinstance(codes, (list, tuple)) else [codes])
        except OrientationError as error:
            raise ConventionError(f"input_convention.orientation: {error}") from error
        convention = replace(convention, orientation=tuple(str(c).upper() for c in codes))  # type: ignore[arg-type]
    if "spacing_mm" in top:
        convention = replace(convention, spacing_mm=_number("spacing_mm", top["spacing_mm"], positive=True))
    if "reference_role" in top:
        convention = replace(convention, reference_role=_choice("reference_role", top["reference_role"], ROLES))
    if "normalize" in top:
        convention = replace(convention, normalize=_choice("normalize", top["normalize"], CONVENTION_NORMALIZATIONS))
    if "mirror_axes" in top:
        axes = top["mirror_axes"]
        if (not isinstance(axes, (list, tuple)) or len(set(axes)) != len(axes)
                or any(isinstance(a, bool) or a not in (0, 1, 2) for a in axes)):
            raise ConventionError(f"input_convention.mirror_axes must list distinct axes of 0, 1, 2, got {axes!r}")
        convention = replace(convention, mirror_axes=tuple(int(a) for a in axes))
    registration = RegistrationConvention(
        enabled=_flag("registration.enabled", raw_registration.get("enabled", False)),
        method=_choice("registration.method", raw_registration.get("method", "rigid_mattes_mi"),
                       REGISTRATION_METHODS),
        onto=_choice("registration.onto", raw_registration.get("onto", convention.reference_role), ROLES),
        max_translation_mm=_number("registration.max_translation_mm",
                                   raw_registration.get("max_translation_mm", 15.0)),
        max_rotation_deg=_number("registration.max_rotation_deg", raw_registration.get("max_rotation_deg", 15.0)),
        on_failure=_choice("registration.on_failure", raw_registration.get("on_failure", "refuse"), ON_FAILURE),
    )
    brain = BrainExtractionConvention(
        enabled=_flag("brain_extraction.enabled", raw_brain.get("enabled", False)),
        method=_choice("brain_extraction.method", raw_brain.get("method", "deepbet"), BRAIN_EXTRACTION_METHODS),
        contrast=_choice("brain_extraction.contrast", raw_brain.get("contrast", "t1n"), ROLES),
        apply_to=_choice("brain_extraction.apply_to", raw_brain.get("apply_to", "all_channels"), APPLY_TO),
        normalize_within_mask=_flag("brain_extraction.normalize_within_mask",
                                    raw_brain.get("normalize_within_mask", True)),
    )
    atlas = AtlasConvention(enabled=_flag("atlas.enabled", raw_atlas.get("enabled", False)))
    return replace(convention, registration=registration, brain_extraction=brain, atlas=atlas)


def _switch(name: str, value: str, current: bool) -> bool:
    if value not in OVERRIDES:
        raise ConventionError(f"setting {name!r} must be one of {list(OVERRIDES)}, got {value!r}")
    return current if value == "card" else value == "on"


def with_overrides(convention: InputConvention, registration: str = "card",
                   brain_extraction: str = "card") -> InputConvention:
    """The convention with registration / brain extraction forced on or off (``card`` keeps the card's)."""
    return replace(
        convention,
        registration=replace(convention.registration,
                             enabled=_switch("registration", registration, convention.registration.enabled)),
        brain_extraction=replace(convention.brain_extraction,
                                 enabled=_switch("brain_extraction", brain_extraction,
                                                 convention.brain_extraction.enabled)),
    )
