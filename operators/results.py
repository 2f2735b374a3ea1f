"""A study's results, staged then published: DICOM-SEG, JSON report, PNG preview, and the optional
DICOM outputs (SR, RTSTRUCT, SC) that later operators add.

`ResultWriterOperator` writes SEG, report and preview into a hidden staging folder inside the
output folder and passes the `StagedResults` on; each output operator (operators/sr_writer.py,
rtstruct_writer.py, overlay_writer.py) adds its files there; `PublishOperator` lists every DICOM
output in report.json (`outputs`), makes the files mode 0644 and moves them into place. A failure
at any step removes the staging folder, so a failed job leaves no partial result behind.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.brain_extraction import fraction_inside
from operators.inference import Prediction
from operators.model_card import ModelCard
from operators.reorientation import labels_to_native
from operators.report import build_report, write_preview, write_report
from operators.seg_writer import SegmentSpec, write_segmentation
from operators.volume import ImageVolume, sort_slices, voxel_volume_ml

SEG_NAME = "segmentation.dcm"
REPORT_NAME = "report.json"
PREVIEW_NAME = "preview.png"
FILE_MODE = 0o644
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DicomOutput:
    """One DICOM output of a study (one series), as report.json lists it under ``outputs``."""

    kind: str  # "seg" | "sr" | "rtstruct" | "sc"
    files: tuple[str, ...]  # paths relative to the output folder
    sop_class_uid: str
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]

    @classmethod
    def from_files(cls, kind: str, root: Path, paths: Sequence[Path]) -> DicomOutput:
        """Read the UIDs from the headers of ``paths`` (files under ``root``, one series)."""
        headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]
        classes = {str(h.SOPClassUID) for h in headers}
        series = {str(h.SeriesInstanceUID) for h in headers}
        if len(classes) != 1 or len(series) != 1:
            raise ValueError(f"{kind} output must be one series of one SOP class, got {classes} / {series}")
        return cls(kind, tuple(path.relative_to(root).as_posix() for path in paths), classes.pop(), series.pop(),
                   tuple(str(h.SOPInstanceUID) for h in headers))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "files": list(self.files), "sop_class_uid": self.sop_class_uid,
                "series_instance_uid": self.series_instance_uid, "sop_instance_uids": list(self.sop_instance_uids)}


@dataclass
class StagedResults:
    """What the output operators share: the labels on the reference series, its instances, the
    written SEG, the report (not yet written) and the DICOM outputs so far, all in ``staging``."""

    study_uid: str
    output_dir: Path
    staging: Path
    labels: np.ndarray  # on the reference grid, [i, j, k] (operators.volume)
    reference: ImageVolume
    reference_datasets: list[pydicom.Dataset]  # in slice order (k)
    segments: list[SegmentSpec]
    card: ModelCard
    report: dict[str, Any]
    outputs: list[DicomOutput] = field(default_factory=list)

    @property
    def segmentation_path(self) -> Path:
        return self.staging / SEG_NAME

    def add(self, kind: str, paths: Sequence[Path]) -> DicomOutput:
        """Record written DICOM files (under ``staging``) as one output of ``kind``."""
        output = DicomOutput.from_files(kind, self.staging, paths)
        self.outputs.append(output)
        return output

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


@dataclass(frozen=True)
class ResultFiles:
    """Where a study's results were written."""

    segmentation: Path
    report: Path
    preview: Path
    outputs: tuple[DicomOutput, ...] = ()


def labels_on_reference(prediction: Prediction) -> np.ndarray:
    """The predicted labels mapped (nearest neighbour) from the model grid onto the reference series."""
    model_input = prediction.model_input
    full = np.zeros(model_input.grid_shape, dtype=np.uint8)
    full[model_input.crop] = prediction.labels
    reference = model_input.reference
    return labels_to_native(full, model_input.grid_affine, reference.shape, reference.affine)


def preprocessing_section(prediction: Prediction) -> dict[str, Any] | None:
    """report.json ``preprocessing``: convention, grid, registrations, brain mask and the fraction of
    the predicted tumour inside it, seconds per step."""
    record = prediction.model_input.preprocessing
    if record is None:
        return None
    inside = None if record.brain_mask is None else fraction_inside(record.brain_mask, prediction.labels)
    return record.to_dict(tumour_fraction_inside_mask=inside)


def stage_results(
    prediction: Prediction, card: ModelCard, output_dir: Path, timings: Mapping[str, float] | None = None
) -> StagedResults:
    """Write SEG and preview into a new staging folder in ``output_dir``; build the report."""
    model_input = prediction.model_input
    labels = labels_on_reference(prediction)
    reference = model_input.reference
    segments = [SegmentSpec.from_dict(entry.to_dict()) for entry in card.labels]
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f".partial-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write_segmentation(
            labels, model_input.reference_datasets, segments,
            card.name, card.version, staging / SEG_NAME, series_description=f"{card.name} segmentation",
        )
        report = build_report(
            labels, voxel_volume_ml(reference.affine), card.label_names, card.regions,
            model={"name": card.name, "version": card.version, "intended_use": card.intended_use},
            input_series=model_input.selection.to_dict(), study_uid=model_input.study_uid, timings=dict(timings or {}),
            selection=model_input.selection,
            coverage=model_input.coverage.to_dict() if model_input.coverage is not None else None,
            preprocessing=preprocessing_section(prediction),
            inference=prediction.inference,
        )
        write_preview(
            reference.array, labels, card.label_colours, staging / PREVIEW_NAME, affine=reference.affine,
            label_names=card.label_names,
        )
        staged = StagedResults(model_input.study_uid, output_dir, staging, labels, reference,
                               sort_slices(list(model_input.reference_datasets)), segments, card, report)
        staged.add("seg", [staging / SEG_NAME])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staged


def publish(staged: StagedResults, timings: Mapping[str, float] | None = None) -> ResultFiles:
    """Write report.json (with ``outputs``), make every file mode 0644 and move it into the output folder."""
    try:
        report = dict(staged.report)
        if timings:
            report["timings_s"] = {str(k): round(float(v), 3) for k, v in timings.items()}
        report["outputs"] = [output.to_dict() for output in staged.outputs]
        write_report(report, staged.staging / REPORT_NAME)
        for path in staged.staging.rglob("*"):
            if path.is_file():
                path.chmod(FILE_MODE)
        output_dir = staged.output_dir
        for entry in sorted(staged.staging.iterdir()):
            target = output_dir / entry.name
            if entry.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            entry.replace(target)
    finally:
        staged.discard()
    log.info("study %s: wrote %s", staged.study_uid,
             ", ".join([*(f for output in staged.outputs for f in output.files[:1]), REPORT_NAME, PREVIEW_NAME]))
    return ResultFiles(output_dir / SEG_NAME, output_dir / REPORT_NAME, output_dir / PREVIEW_NAME,
                       tuple(staged.outputs))


class ResultWriterOperator(Operator):
    """Input ``prediction``; output ``results`` (StagedResults): SEG, preview and report, staged."""

    def __init__(
        self, fragment: Fragment, *args: Any, card: ModelCard, output_dir: Path,
        stage_times: Mapping[str, float] | None = None, **kwargs: Any,
    ) -> None:
        self.card = card
        self.output_dir = Path(output_dir)
        self.timings = stage_times if stage_times is not None else {}
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("prediction")
        spec.output("results")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        staged = stage_results(op_input.receive("prediction"), self.card, self.output_dir, self.timings)
        op_output.emit(staged, "results")


class StagedOutputOperator(Operator):
    """Base of the optional output operators: input and output ``results``; ``add_output`` writes
    this operator's files into the staging folder. On failure the staging folder is removed."""

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")
        spec.output("results")

    def add_output(self, staged: StagedResults) -> None:
        raise NotImplementedError

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        staged: StagedResults = op_input.receive("results")
        try:
            self.add_output(staged)
        except BaseException:
            staged.discard()
            raise
        op_output.emit(staged, "results")


class PublishOperator(Operator):
    """Input ``results``; writes report.json and moves every staged file into the output folder."""

    def __init__(self, fragment: Fragment, *args: Any, stage_times: Mapping[str, float] | None = None,
                 **kwargs: Any) -> None:
        self.timings = stage_times if stage_times is not None else {}
        self.written: ResultFiles | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("results")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        self.written = publish(op_input.receive("results"), self.timings)
