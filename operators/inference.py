"""The inference operator: ``ModelInput`` -> ``Prediction`` with a segmenter loaded once."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.model_card import Postprocessing
from operators.model_input import ModelInput
from operators.segmenters import Segmenter
from operators.volume import voxel_volume_ml
from segmamba.postprocess import remove_small_tumours

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Labels on the cropped model grid, with the input they belong to."""

    labels: np.ndarray  # (i, j, k) uint8, same voxels as model_input.image
    model_input: ModelInput
    inference: dict[str, Any] = field(default_factory=dict)  # Segmenter.describe: precision, windows, ...


class SegmentationOperator(Operator):
    """Runs the segmenter on the model input (MONAI Deploy operator).

    Input ``model_input``; output ``prediction``. The segmenter (and its weights) is created once,
    by the application, and reused for every study this process handles. Labels are cleared outside
    the region every series covers (``model_input.valid``), then the model card's postprocessing is applied.
    """

    def __init__(self, fragment: Fragment, *args: Any, segmenter: Segmenter,
                 postprocessing: Postprocessing | None = None, **kwargs: Any) -> None:
        self.segmenter = segmenter
        self.postprocessing = postprocessing or Postprocessing()
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("model_input")
        spec.output("prediction")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        model_input: ModelInput = op_input.receive("model_input")
        describe = getattr(self.segmenter, "describe", None)
        inference = describe(model_input.image.shape[1:]) if describe is not None else {}
        log.info("segmenting study %s, input %s, %s", model_input.study_uid, model_input.image.shape, inference)
        labels = self.segmenter(model_input.image)
        labels[~model_input.valid] = 0  # no label outside the region every series covers
        voxel_ml = voxel_volume_ml(model_input.grid_affine)
        labels, removed = remove_small_tumours(labels, voxel_ml, self.postprocessing.min_tumour_ml)
        if removed:
            log.info("removed %d tumour component(s) under %.2f mL", removed, self.postprocessing.min_tumour_ml)
        counts = np.bincount(labels.ravel(), minlength=1)
        log.info("labels found (voxels per label on the model grid): %s", dict(enumerate(counts.tolist())))
        op_output.emit(Prediction(labels=labels, model_input=model_input, inference=inference), "prediction")
