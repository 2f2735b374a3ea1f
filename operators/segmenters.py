"""Segmenters behind one interface: 4-channel model input (C, i, j, k) -> label map (i, j, k).

``SegMambaSegmenter`` runs the network with MONAI sliding-window inference; the model is built
and loaded once per process. ``ThresholdSegmenter`` applies intensity rules from its model
card: deterministic, so the geometry of the whole chain can be tested apart from model quality.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Protocol

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from operators.model_card import ModelCard, ModelCardError
from segmamba import SegMamba, load_checkpoint

log = logging.getLogger(__name__)


class Segmenter(Protocol):
    """Turns a prepared model input into integer labels on the same voxels."""

    def __call__(self, image: np.ndarray) -> np.ndarray: ...


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
    ) -> None:
        if card.weights_path is None:
            raise ModelCardError(f"{card.folder}: a segmamba model needs network.weights")
        self.card = card
        self.device = choose_device(device)
        self.settings = card.inference
        self.sw_batch_size = sw_batch_size or self.settings.sw_batch_size
        self.mirror_tta = self.settings.mirror_tta if mirror_tta is None else mirror_tta
        self.progress = progress
        if any(size % 16 for size in self.settings.roi_size):
            raise ModelCardError(f"{card.folder}: inference.roi_size must be multiples of 16")
        self.model = SegMamba(**card.network.get("args", {}))
        layout = load_checkpoint(self.model, card.weights_path)
        self.model.eval().to(self.device)
        log.info("loaded %s %s on %s (%s)", card.name, card.version, self.device, layout.describe())

    def _probabilities(self, x: torch.Tensor) -> torch.Tensor:
        logits = sliding_window_inference(
            x, self.settings.roi_size, self.sw_batch_size, self.model, overlap=self.settings.overlap,
            mode=self.settings.mode, progress=self.progress,
        )
        return torch.softmax(logits.float(), dim=1)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(image))[None].to(self.device)
        flips = [()] if not self.mirror_tta else [c for n in range(4) for c in itertools.combinations((2, 3, 4), n)]
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            total = None
            for dims in flips:
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


def build_segmenter(card: ModelCard, **options: Any) -> Segmenter:
    """The segmenter the card names; ``options`` (device, sw_batch_size, ...) apply to networks."""
    if card.network_type == "threshold":
        return ThresholdSegmenter(card)
    return SegMambaSegmenter(card, **options)
