"""The application: the operator chain from a DICOM study to its DICOM results, composed once.

    load study -> select series -> build model input -> infer -> write SEG, report, preview (staged)
        -> [SR] -> [RTSTRUCT] -> [SC overlay] -> publish (report.json lists the outputs; files moved into place)

The bracketed outputs are switched by the settings output_sr, output_rtstruct, output_sc.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from monai.deploy.conditions import CountCondition
from monai.deploy.core import Application

from app.config import Settings
from operators.inference import SegmentationOperator
from operators.input_convention import with_overrides
from operators.model_card import ModelCard
from operators.model_input import ModelInputOperator
from operators.overlay_writer import OverlayOperator
from operators.results import PublishOperator, ResultFiles, ResultWriterOperator
from operators.rtstruct_writer import StructureSetOperator
from operators.segmenters import Segmenter
from operators.series_selection.operator import DicomSeriesSelector
from operators.sr_writer import MeasurementReportOperator
from operators.study_loader import StrictDicomLoader
from operators.timing import timed

# Each stage's operator with its compute()'s wall time recorded (the output writers all count as "write").
_TimedLoader = timed(StrictDicomLoader, "load")
_TimedSelector = timed(DicomSeriesSelector, "select")
_TimedModelInput = timed(ModelInputOperator, "volume")
_TimedSegmentation = timed(SegmentationOperator, "infer")
_TimedWriter = timed(ResultWriterOperator, "write")
_TimedReport = timed(MeasurementReportOperator, "write")
_TimedStructureSet = timed(StructureSetOperator, "write")
_TimedOverlay = timed(OverlayOperator, "write")
_TimedPublish = timed(PublishOperator, "write")


class SegmentationApp(Application):
    """One study in (a folder of DICOM files), its segmentation results out.

    The segmenter (network and weights) is built by the caller and passed in, so a process that
    runs many studies loads the model once.
    """

    def __init__(self, settings: Settings, card: ModelCard, segmenter: Segmenter, **kwargs: Any) -> None:
        self.settings = settings
        self.card = card
        self.segmenter = segmenter
        self.stage_times: dict[str, float] = {}
        self._publish: PublishOperator | None = None
        super().__init__([__file__], **kwargs)

    def compose(self) -> None:
        settings = self.settings
        load_study = _TimedLoader(self, CountCondition(self, 1), input_folder=Path(settings.input), name="load_study")
        select_series = _TimedSelector(self, rules=settings.series_rules, name="select_series")
        convention = with_overrides(self.card.convention, settings.registration, settings.brain_extraction)
        build_input = _TimedModelInput(
            self, card=self.card, reference_role=settings.reference_role, convention=convention,
            name="build_model_input",
        )
        infer = _TimedSegmentation(
            self, segmenter=self.segmenter, postprocessing=self.card.postprocessing, name="infer"
        )
        write = _TimedWriter(
            self, card=self.card, output_dir=Path(settings.output), stage_times=self.stage_times, name="write_results"
        )
        optional = [(settings.output_sr, _TimedReport, "write_sr"),
                    (settings.output_rtstruct, _TimedStructureSet, "write_rtstruct"),
                    (settings.output_sc, _TimedOverlay, "write_sc_overlay")]
        outputs = [kind(self, name=name) for wanted, kind, name in optional if wanted]
        publish = _TimedPublish(self, stage_times=self.stage_times, name="publish_results")
        for operator in (load_study, select_series, build_input, infer, write, *outputs, publish):
            operator.stage_times = self.stage_times
        self._publish = publish

        self.add_flow(load_study, select_series, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(
            select_series, build_input,
            {("selected_series", "selected_series"), ("series_selection", "series_selection")},
        )
        self.add_flow(build_input, infer, {("model_input", "model_input")})
        self.add_flow(infer, write, {("prediction", "prediction")})
        chain = [write, *outputs, publish]
        for upstream, downstream in itertools.pairwise(chain):
            self.add_flow(upstream, downstream, {("results", "results")})

    @property
    def results(self) -> ResultFiles | None:
        """The files written by the last run (None before a successful run)."""
        return self._publish.written if self._publish else None
