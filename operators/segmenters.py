"""Segmenters behind one interface: 4-channel model input (C, i, j, k) -> label map (i, j, k).

``SegMambaSegmenter`` runs the network with MONAI sliding-window inference; the model is built
and loaded once per process, in the precision ``operators.precision`` chooses (bfloat16 autocast on a
CPU with BF16 instructions, float16 on CUDA, float32 otherwise or when asked). ``ThresholdSegmenter``
applies intensity rules from its model card: deterministic, so the geometry of the whole chain can be
tested apart from model quality.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval
from monai.utils import ensure_tuple_rep

from operators.model_card import ModelCard, ModelCardError
from operators.precision import autocast, resolve_precision
from segmamba import SegMamba, load_checkpoint

log = logging.getLogger(__name__)


class Segmenter(Protocol):
    """Turns a prepared model input into integer labels on the same voxels."""

    def __call__(self, image: np.ndarray) -> np.ndarray: ...

    def describe(self, shape: Sequence[int]) -> dict[str, Any]:
        """How an image of spatial ``shape`` is run: device, precision, windows, overlap (report.json)."""
        ...


def window_count(shape: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Sliding windows MONAI's ``sliding_window_inference`` runs over an image of spatial ``shape``."""
    size = tuple(max(int(n), int(r)) for n, r in zip(shape, roi_size, strict=True))
    roi = tuple(int(r) for r in roi_size)
    overlaps = ensure_tuple_rep(overlap, len(roi))
    return len(dense_patch_slices(size, roi, _get_scan_interval(size, roi, len(roi), overlaps)))


def choose_device(requested: str = "auto") -> torch.device:
    """``auto`` takes CUDA when available, else the CPU; ``cpu``/``cuda``/``cuda:N`` are honoured."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelCardError(f"device {requested!r} requested but CUDA is not available")
    return device


class SegMambaSegmenter:
    """SegMamba with sliding-window inference (Gaussian blending, optional mirror TTA)."""

    def __init__(
        self,
        card: ModelCard,
        device: str = "auto",
        sw_batch_size: int | None = None,
        mirror_tta: bool | None = None,
        progress: bool = True,
        precision: str = "auto",
    ) -> None:
        if card.weights_path is None:
            raise ModelCardError(f"{card.folder}: a segmamba model needs network.weights")
        self.card = card
        self.device = choose_device(device)
        self.settings = card.inference
        self.sw_batch_size = sw_batch_size or self.settings.sw_batch_size
        self.mirror_tta = self.settings.mirror_tta if mirror_tta is None else mirror_tta
        self.progress = progress
        self.precision = resolve_precision(self.settings.precision if precision == "auto" else precision, self.device)
        if any(size % 16 for size in self.settings.roi_size):
            raise ModelCardError(f"{card.folder}: inference.roi_size must be multiples of 16")
        self.model = SegMamba(**card.network.get("args", {}))
        layout = load_checkpoint(self.model, card.weights_path)
        self.model.eval().to(self.device)
        log.info("loaded %s %s on %s in %s (%s)", card.name, card.version, self.device, self.precision,
                 layout.describe())

    @property
    def mirror_axes(self) -> tuple[int, ...]:
        """Spatial axes mirrored by TTA (the card's ``input_convention.mirror_axes``); none without TTA."""
        return self.card.convention.mirror_axes if self.mirror_tta else ()

    @property
    def flips(self) -> list[tuple[int, ...]]:
        """Tensor dims flipped in each pass: every subset of the mirrored axes, the unflipped first."""
        dims = tuple(axis + 2 for axis in self.mirror_axes)
        return [subset for n in range(len(dims) + 1) for subset in itertools.combinations(dims, n)]

    @property
    def passes(self) -> int:
        """Network passes over the whole image: 2**len(mirror_axes) with mirror TTA, else 1."""
        return len(self.flips)

    def describe(self, shape: Sequence[int]) -> dict[str, Any]:
        windows = window_count(shape, self.settings.roi_size, self.settings.overlap)
        return {"network": "segmamba", "device": str(self.device), "precision": self.precision,
                "roi_size": list(self.settings.roi_size), "overlap": self.settings.overlap,
                "mode": self.settings.mode, "input_shape": [int(n) for n in shape], "windows": windows,
                "mirror_tta": self.mirror_tta, "mirror_axes": list(self.mirror_axes),
                "windows_run": windows * self.passes}

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        logits = sliding_window_inference(
            x, self.settings.roi_size, self.sw_batch_size, self.model, overlap=self.settings.overlap,
            mode=self.settings.mode, progress=self.progress,
        )
        return torch.softmax(logits.float(), dim=1)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(image))[None].to(self.device)
        with torch.inference_mode(), autocast(self.precision, self.device):
            total = None
            for dims in self.flips:
                probs = self._probabilities(x.flip(dims) if dims else x)
                probs = probs.flip(dims) if dims else probs
                total = probs if total is None else total + probs
        assert total is not None
        return total.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


class ThresholdSegmenter:
    """Rules ``{"channel": role, "above"|"below": value, "label": n, "within": [labels]}`` in order."""

    def __init__(self, card: ModelCard) -> None:
        self.rules: list[dict[str, Any]] = list(card.network.get("rules", []))
        if not self.rules:
            raise ModelCardError(f"{card.folder}: a threshold model needs network.rules")
        self.channel_index = {role: i for i, role in enumerate(card.channel_order)}

    def __call__(self, image: np.ndarray) -> np.ndarray:
        labels = np.zeros(image.shape[1:], dtype=np.uint8)
        for rule in self.rules:
            channel = image[self.channel_index[rule["channel"]]]
            hit = channel > rule["above"] if "above" in rule else channel < rule["below"]
            if "within" in rule:
                hit &= np.isin(labels, rule["within"])
            labels[hit] = rule["label"]
        return labels

    def describe(self, shape: Sequence[int]) -> dict[str, Any]:
        return {"network": "threshold", "device": "cpu", "precision": "float32", "windows": 1, "overlap": 0.0}


def build_segmenter(card: ModelCard, **options: Any) -> Segmenter:
    """The segmenter the card names; ``options`` (device, sw_batch_size, ...) apply to networks."""
    if card.network_type == "threshold":
        return ThresholdSegmenter(card)
    return SegMambaSegmenter(card, **options)
