"""The model card (``metadata.json`` of a model folder): one schema for the exporter and the loaders.

`segmamba.export` builds a `Card` and writes ``Card.to_json()``; operators/model_card.py and
`segmamba.evaluate` read it with `read_card` / `parse_card`. A block's keys are its dataclass's
field names, in the order they are written. The schema checks structure (required keys, block
types, unknown keys inside a block; a label's are dropped); the application checks values (roles, network types,
precisions) and adds its own vocabulary (the DICOM codes of the labels, operators/label_codes.py).

Labels are described by value, name, colour and a neutral ``key`` (`BRATS_LABELS`); a card may also
carry coded concepts of its own (``type``, ``category``: {"scheme", "value", "meaning"}), which the
schema keeps without reading them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

CARD_NAME = "metadata.json"
WEIGHTS_NAME = "model.pt"
# Part of the head (model grid) that every series must cover before report and log warn: complete
# clinical protocols measure >= 0.97 (tilted 2D series miss corners), a 48 mm slab about 0.3.
DEFAULT_MIN_HEAD_COVERAGE = 0.9

# The neutral keys of the BraTS 2023 labels.
NECROTIC_CORE = "necrotic_core"
EDEMA = "edema"
ENHANCING = "enhancing"


class CardError(ValueError):
    """A card that does not fit the schema; the message names the key."""


def _plain(value: Any) -> Any:
    """``value`` as JSON types: dataclasses by their ``to_dict``, tuples as lists."""
    if is_dataclass(value) and not isinstance(value, type):
        return value.to_dict()  # type: ignore[attr-defined]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class _Block:
    """A card block: written field by field; None, and an ``OPTIONAL`` field at its default, left out."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()  # the application's options: written only when set

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None or (f.name in self.OPTIONAL and value == f.default):
                continue
            out[f.name] = _plain(value)
        return out


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise CardError(f"'{where}' is missing or not a dict")
    return dict(raw)


def _block(cls: type, raw: Any, where: str, tuples: tuple[str, ...] = (), strict: bool = True) -> Any:
    """``cls`` from the mapping ``raw`` (an absent block: all defaults); unknown keys refused if ``strict``."""
    values = _mapping({} if raw is None else raw, where)
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown and strict:
        raise CardError(f"{where}: unknown key(s) {unknown} (known: {', '.join(known)})")
    values = {k: v for k, v in values.items() if k in known}
    for key in tuples:
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    return cls(**values)


@dataclass(frozen=True)
class Network(_Block):
    """The network: its type, constructor arguments, weights file; type-specific keys in ``options``."""

    type: str
    args: Mapping[str, Any] | None = None
    weights: str | None = None
    dtype: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # e.g. the threshold segmenter's "rules"

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        return {**{k: v for k, v in out.items() if k != "options"}, **_plain(self.options)}

    @classmethod
    def parse(cls, raw: Any) -> Network:
        values = _mapping(raw, "network")
        if "type" not in values:
            raise CardError("'network.type' is missing")
        known = {f.name for f in fields(cls)} - {"options"}
        options = {k: v for k, v in values.items() if k not in known}
        return cls(**{k: v for k, v in values.items() if k in known}, options=options)


@dataclass(frozen=True)
class Preprocessing(_Block):
    """How the 4-channel input is prepared on the model grid."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"min_head_coverage"})

    spacing_mm: float = 1.0
    crop_foreground: bool = True
    normalize: str = "zscore_nonzero"
    min_head_coverage: float = DEFAULT_MIN_HEAD_COVERAGE


@dataclass(frozen=True)
class InferenceSettings(_Block):
    """Sliding-window inference parameters (MONAI sliding_window_inference)."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"precision"})

    roi_size: tuple[int, int, int] = (128, 128, 128)
    overlap: float = 0.5
    mode: str = "gaussian"
    sw_batch_size: int = 1
    mirror_tta: bool = False
    precision: str = "auto"


@dataclass(frozen=True)
class Postprocessing(_Block):
    """Clean-up of the predicted labels on the model grid."""

    min_tumour_ml: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Label(_Block):
    """One output value: its name, neutral key, display colour (sRGB 0-255) and any codes of the card's own."""

    label: int
    name: str
    key: str | None = None
    type: Mapping[str, str] | None = None
    color: tuple[int, int, int]
    category: Mapping[str, str] | None = None

    @classmethod
    def parse(cls, raw: Any) -> Label:
        """A ``labels`` entry; keys the schema does not know are dropped."""
        values = _mapping(raw, "labels[]")
        missing = [key for key in ("label", "name", "color") if key not in values]
        if missing:
            raise CardError(f"each label needs label, name and color ('{missing[0]}' is missing): {raw}")
        label: Label = _block(cls, values, "labels", tuples=("color",), strict=False)
        return label


@dataclass(frozen=True, kw_only=True)
class Card(_Block):
    """A model card; fields in the order ``metadata.json`` lists them."""

    name: str
    version: str
    description: str = ""
    intended_use: str = ""
    network: Network
    channel_order: tuple[str, ...]
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    postprocessing: Postprocessing = field(default_factory=Postprocessing)
    labels: tuple[Label, ...]
    regions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    input_convention: Any = None  # as written: operators/input_convention.py checks and parses it
    training: Mapping[str, Any] | None = None
    validation: Mapping[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, folder: Path) -> Path:
        """Write ``folder/metadata.json``; returns its path."""
        path = Path(folder) / CARD_NAME
        path.write_text(self.to_json())
        return path


def _require(raw: Mapping[str, Any], key: str, kind: type) -> Any:
    if key not in raw or not isinstance(raw[key], kind):
        raise CardError(f"'{key}' is missing or not a {kind.__name__}")
    return raw[key]


# The blocks with all-default fields, and the fields of each that a list becomes a tuple in.
_BLOCKS: dict[str, tuple[type, tuple[str, ...]]] = {
    "preprocessing": (Preprocessing, ()),
    "inference": (InferenceSettings, ("roi_size",)),
    "postprocessing": (Postprocessing, ()),
}


def parse_card(raw: Any) -> Card:
    """The `Card` of a parsed ``metadata.json``; unknown top-level keys are ignored."""
    raw = _mapping(raw, "card")
    network = Network.parse(_require(raw, "network", dict))
    channel_order = tuple(_require(raw, "channel_order", list))
    blocks = {key: _block(cls, raw.get(key), key, tuples) for key, (cls, tuples) in _BLOCKS.items()}
    labels = tuple(Label.parse(entry) for entry in _require(raw, "labels", list))
    optional = {key: _mapping(raw[key], key) for key in ("training", "validation") if key in raw}
    texts = {key: str(raw.get(key, "")) for key in ("description", "intended_use")}
    regions = {str(k): tuple(v) for k, v in _mapping(raw.get("regions", {}), "regions").items()}
    return Card(name=str(_require(raw, "name", str)), version=str(_require(raw, "version", str)), network=network,
                channel_order=channel_order, labels=labels, regions=regions,
                input_convention=raw.get("input_convention"), **texts, **blocks, **optional)


def read_card(folder: Path) -> Card:
    """The card of the model folder ``folder`` (its ``metadata.json``)."""
    path = Path(folder) / CARD_NAME
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CardError(f"cannot read the model card ({error})") from error
    return parse_card(raw)


BRATS_LABELS: tuple[Label, ...] = (
    Label(label=1, name="Necrotic tumour core", key=NECROTIC_CORE, color=(230, 60, 60)),
    Label(label=2, name="Peritumoral oedema", key=EDEMA, color=(90, 200, 90)),
    Label(label=3, name="Enhancing tumour", key=ENHANCING, color=(250, 220, 60)),
)
