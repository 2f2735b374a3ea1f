"""Write a study's results: DICOM-SEG on the reference series, JSON report, PNG preview.

All three are written into a hidden staging folder inside the output folder and moved into
place only when all succeeded, so a failed job leaves no partial result behind.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.inference import Prediction
from operators.model_card import ModelCard
from operators.report import build_report, write_preview, write_report
from operators.seg_writer import SegmentSpec, write_segmentation
from operators.volume import ImageVolume, resample_to_grid, voxel_volume_ml

SEG_NAME = "segmentation.dcm"
REPORT_NAME = "report.json"
PREVIEW_NAME = "preview.png"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultFiles:
    """Where a study's results were written."""

    segmentation: Path
    report: Path
    preview: Path


def labels_on_reference(prediction: Prediction) -> np.ndarray:
    """The predicted labels mapped (nearest neighbour) from the model grid onto the reference series."""
    model_input = prediction.model_input
    full = np.zeros(model_input.grid_shape, dtype=np.uint8)
    full[model_input.crop] = prediction.labels
    on_model_grid = ImageVolume(full, model_input.grid_affine)
    reference = model_input.reference
    return resample_to_grid(on_model_grid, reference.shape, reference.affine, order=0).astype(np.uint8)


def write_results(
    prediction: Prediction, card: ModelCard, output_dir: Path, timings: Mapping[str, float] | None = None
) -> ResultFiles:
    """Write SEG, report and preview for one study into ``output_dir`` (all or nothing)."""
    model_input = prediction.model_input
    labels = labels_on_reference(prediction)
    reference = model_input.reference
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f".partial-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write_segmentation(
            labels, model_input.reference_datasets, [SegmentSpec.from_dict(entry) for entry in card.labels],
            card.name, card.version, staging / SEG_NAME, series_description=f"{card.name} segmentation",
        )
        report = build_report(
            labels, voxel_volume_ml(reference.affine), card.label_names, card.regions,
            model={"name": card.name, "version": card.version, "intended_use": card.intended_use},
            input_series=model_input.selection.to_dict(), study_uid=model_input.study_uid, timings=dict(timings or {}),
            selection=model_input.selection,
            coverage=model_input.coverage.to_dict() if model_input.coverage is not None else None,
            inference=prediction.inference,
        )
        write_report(report, staging / REPORT_NAME)
        write_preview(
            reference.array, labels, card.label_colours, staging / PREVIEW_NAME, affine=reference.affine,
            label_names=card.label_names,
        )
        final = ResultFiles(output_dir / SEG_NAME, output_dir / REPORT_NAME, output_dir / PREVIEW_NAME)
        for path in (final.segmentation, final.report, final.preview):
            (staging / path.name).replace(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("study %s: wrote %s, %s, %s", model_input.study_uid, SEG_NAME, REPORT_NAME, PREVIEW_NAME)
    return final


class ResultWriterOperator(Operator):
    """Input ``prediction``; writes the results of the study into the output folder."""

    def __init__(
        self, fragment: Fragment, *args: Any, card: ModelCard, output_dir: Path,
        stage_times: Mapping[str, float] | None = None, **kwargs: Any,
    ) -> None:
        self.card = card
        self.output_dir = Path(output_dir)
        self.timings = stage_times if stage_times is not None else {}
        self.written: ResultFiles | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("prediction")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        self.written = write_results(op_input.receive("prediction"), self.card, self.output_dir, self.timings)
