"""Run the application once over a folder: the MAP batch contract."""

from __future__ import annotations

import logging
import os

from app.config import Settings
from operators.model_card import load_model_card
from operators.results import ResultFiles
from operators.segmenters import build_segmenter

log = logging.getLogger("app")


def run_batch(settings: Settings) -> tuple[ResultFiles, dict[str, float]]:
    """Segment the study in ``settings.input`` into ``settings.output``; returns files and stage times.

    Raises the pipeline's own errors (StudyError, SeriesSelectionError, ModelCardError, ...) unchanged.
    """
    os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "OFF")  # our log says what failed; GXF would repeat it
    from app.app import SegmentationApp  # imports holoscan, after its log level is set

    card = load_model_card(settings.models)
    log.info("model %s %s from %s (%s)", card.name, card.version, card.folder, card.intended_use or "no stated use")
    segmenter = build_segmenter(
        card, device=settings.device, sw_batch_size=settings.sw_batch_size, mirror_tta=settings.mirror_tta,
        progress=settings.progress,
    ) if card.network_type != "threshold" else build_segmenter(card)
    application = SegmentationApp(settings, card, segmenter)
    application.run()
    if application.results is None:
        raise RuntimeError("the pipeline finished without writing results")
    return application.results, dict(application.stage_times)
