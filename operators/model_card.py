"""The model folder: weights plus a model card (``metadata.json``, MONAI bundle-style metadata).

Everything model-specific lives in the card, nothing in the operators. Its schema is segmamba/card.py
(the exporter writes through it); this loader parses with it, checks the values and fills each
label's DICOM ``type`` from operators/label_codes.py when the card gives none::

    {
      "name": "...", "version": "...", "description": "...", "intended_use": "...",
      "network": {"type": "segmamba", "args": {...SegMamba kwargs...}, "weights": "model.pt"},
      "channel_order": ["t2w", "t2f", "t1n", "t1c"],
      "preprocessing": {"spacing_mm": 1.0, "crop_foreground": true, "normalize": "zscore_nonzero",
                        "min_head_coverage": 0.9},
      "inference": {"roi_size": [128, 128, 128], "overlap": 0.5, "mode": "gaussian",
                    "sw_batch_size": 1, "mirror_tta": false, "precision": "auto"},
      "labels": [{"label": 1, "name": ..., "key": "necrotic_core", "color": [r, g, b]}, ...],
      "postprocessing": {"min_tumour_ml": 0.0},
      "regions": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    }

``preprocessing.min_head_coverage`` (0-1, default 0.9): below this fraction of the head covered by
every series (operators.model_input.Coverage), the log warns and report.json carries the warning.
``inference.precision`` (auto | float32 | bfloat16 | float16, default auto; operators.precision):
the arithmetic the network runs in; a card whose model is not accurate enough in reduced precision says float32.
``postprocessing.min_tumour_ml`` removes whole-tumour components smaller than this (mL); 0 keeps all.
A label's ``type`` ({"scheme", "value", "meaning"}; optional ``category`` alike) is the segmented
property the SEG codes; without one, its ``key`` names a row of operators/label_codes.py.

``input_convention`` (optional) declares the input convention the network was trained on
(orientation, spacing, registration, brain extraction, atlas; operators/input_convention.py). A card
without it keeps the native reference grid, scanner-coordinate alignment and no skull-stripping.

``network.type`` "threshold" is a deterministic segmenter (intensity rules on the model input)
used to test geometry independently of model quality; it is never a clinical model.
A model path may be the folder holding ``metadata.json`` or a folder with exactly one such
sub-folder (as HOLOSCAN_MODEL_PATH=/opt/holoscan/models holds named model folders).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from operators.errors import ConfigurationError
from operators.input_convention import ConventionError, InputConvention, legacy_convention, parse_convention
from operators.label_codes import coded_label
from operators.precision import PRECISIONS
from operators.roles import ROLES
from segmamba.card import CARD_NAME, InferenceSettings, Label, Postprocessing, Preprocessing, read_card

NORMALIZATIONS = ("zscore_nonzero", "none")
NETWORK_TYPES = ("segmamba", "threshold")


class ModelCardError(ConfigurationError, ValueError):
    """A model folder or card that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ModelCard:
    """A parsed model card and the folder it came from; labels carry their DICOM ``type``."""

    folder: Path
    name: str
    version: str
    description: str
    intended_use: str
    network: dict[str, Any]
    channel_order: tuple[str, ...]
    preprocessing: Preprocessing
    inference: InferenceSettings
    labels: tuple[Label, ...]
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    postprocessing: Postprocessing = field(default_factory=Postprocessing)
    input_convention: InputConvention | None = None  # None: the card has no ``input_convention`` block

    @property
    def convention(self) -> InputConvention:
        """The card's input convention, or today's behaviour for a card without the block."""
        if self.input_convention is not None:
            return self.input_convention
        return legacy_convention(self.preprocessing.spacing_mm, self.preprocessing.normalize)

    @property
    def network_type(self) -> str:
        return str(self.network["type"])

    @property
    def weights_path(self) -> Path | None:
        weights = self.network.get("weights")
        return self.folder / weights if weights else None

    @property
    def label_names(self) -> dict[int, str]:
        return {int(entry.label): str(entry.name) for entry in self.labels}

    @property
    def label_colours(self) -> dict[int, tuple[int, int, int]]:
        return {int(entry.label): tuple(int(c) for c in entry.color) for entry in self.labels}  # type: ignore[misc]


def find_model_folder(path: Path) -> Path:
    """The folder holding ``metadata.json``: ``path`` itself or its single model sub-folder."""
    if (path / CARD_NAME).is_file():
        return path
    if not path.is_dir():
        raise ModelCardError(f"model path {path} does not exist")
    candidates = sorted(p.parent for p in path.glob(f"*/{CARD_NAME}"))
    if len(candidates) != 1:
        found = ", ".join(p.name for p in candidates) or "none"
        raise ModelCardError(f"model path {path} must hold {CARD_NAME} or exactly one model folder (found: {found})")
    return candidates[0]


def load_model_card(path: Path) -> ModelCard:
    """Read and validate the model card of a model folder."""
    folder = find_model_folder(Path(path))
    card_path = folder / CARD_NAME
    try:
        card = read_card(folder)
        labels = tuple(coded_label(entry) for entry in card.labels)
    except ValueError as error:  # CardError, or a label without a code
        raise ModelCardError(f"{card_path}: {error}") from error
    if card.network.type not in NETWORK_TYPES:
        raise ModelCardError(f"{card_path}: network.type must be one of {NETWORK_TYPES}")
    if sorted(card.channel_order) != sorted(ROLES):
        raise ModelCardError(f"{card_path}: channel_order must list each of {ROLES} once, got {card.channel_order}")
    preprocessing = card.preprocessing
    if preprocessing.normalize not in NORMALIZATIONS:
        raise ModelCardError(f"{card_path}: preprocessing.normalize must be one of {NORMALIZATIONS}")
    minimum = preprocessing.min_head_coverage
    if isinstance(minimum, bool) or not isinstance(minimum, (int, float)) or not 0.0 <= minimum <= 1.0:
        raise ModelCardError(f"{card_path}: preprocessing.min_head_coverage must be a number from 0 to 1")
    if card.inference.precision not in PRECISIONS:
        raise ModelCardError(f"{card_path}: inference.precision must be one of {PRECISIONS}")
    if card.postprocessing.min_tumour_ml < 0:
        raise ModelCardError(f"{card_path}: postprocessing.min_tumour_ml must be >= 0")
    convention = None
    if card.input_convention is not None:
        try:
            convention = parse_convention(card.input_convention)
        except ConventionError as error:
            raise ModelCardError(f"{card_path}: {error}") from error
    model = ModelCard(
        folder=folder,
        name=card.name,
        version=card.version,
        description=card.description,
        intended_use=card.intended_use,
        network=card.network.to_dict(),
        channel_order=card.channel_order,
        preprocessing=preprocessing,
        inference=card.inference,
        labels=labels,
        regions=dict(card.regions),
        postprocessing=card.postprocessing,
        input_convention=convention,
    )
    if model.weights_path is not None and not model.weights_path.is_file():
        raise ModelCardError(f"{card_path}: weights file {model.weights_path.name} not found in {folder}")
    return model
