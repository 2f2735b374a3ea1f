"""Run the operator chain over one study folder: the MAP batch contract, and the node's job runner."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

from app.config import Settings
from operators.model_card import ModelCard, load_model_card
from operators.results import ResultFiles
from operators.segmenters import Segmenter, build_segmenter

log = logging.getLogger("app")


def load_model(settings: Settings) -> tuple[ModelCard, Segmenter]:
    """Read the model card and build its segmenter (weights loaded once, for every later study)."""
    card = load_model_card(settings.models)
    log.info("model %s %s from %s (%s)", card.name, card.version, card.folder, card.intended_use or "no stated use")
    segmenter = build_segmenter(
        card, device=settings.device, sw_batch_size=settings.sw_batch_size, mirror_tta=settings.mirror_tta,
        progress=settings.progress, precision=settings.precision,
    )
    return card, segmenter


def process_study(
    settings: Settings, card: ModelCard, segmenter: Segmenter, input_dir: Path, output_dir: Path
) -> tuple[ResultFiles, dict[str, float]]:
    """Segment the study in ``input_dir`` into ``output_dir``; returns the files and seconds per stage.

    Raises the pipeline's own errors (StudyError, SeriesSelectionError, ...) unchanged.
    """
    os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "OFF")  # our log says what failed; GXF would repeat it
    from app.app import SegmentationApp  # imports holoscan, after its log level is set

    job_settings = dataclasses.replace(settings, input=Path(input_dir), output=Path(output_dir))
    application = SegmentationApp(job_settings, card, segmenter)
    application.run()
    if application.results is None:
        raise RuntimeError("the pipeline finished without writing results")
    return application.results, dict(application.stage_times)


def run_batch(settings: Settings) -> tuple[ResultFiles, dict[str, float]]:
    """The batch job: load the model, segment ``settings.input`` into ``settings.output``."""
    card, segmenter = load_model(settings)
    return process_study(settings, card, segmenter, settings.input, settings.output)
