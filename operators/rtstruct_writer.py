"""RT Structure Set: the contours of each label on the reference (T1c) slices, for planning systems
and viewers without SEG support (rt-utils builds the structure set; OpenCV finds the contours).

Contours are closed planar polygons through the centres of each region's boundary voxels, one per
connected region and one per hole (RETR_TREE), on the slices that carry the label; a planning
system that fills them (boundary included) gets the label's voxels back. Every label is declared
as an ROI with its model-card colour, even when it has no voxels (then without contours).

Geometry: rt-utils 1.2.7 scales the image row direction by PixelSpacing[0] (the spacing between
rows) and the column direction by PixelSpacing[1], which is right only for square pixels. It is
given header copies with the two values swapped, so a contour vertex at column c, row r is
IPP + c * PixelSpacing[1] * row direction + r * PixelSpacing[0] * column direction, as PS3.3 C.7.6.2
defines. The slices of a split Enhanced MR instance are referenced as that instance and frame.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.uid import ExplicitVRLittleEndian
from rt_utils import RTStruct
from rt_utils.ds_helper import create_rtstruct_dataset

from operators.dicom_files import save_atomically
from operators.multiframe import frame_source
from operators.results import StagedOutputOperator, StagedResults
from operators.seg_header import character_set_for, clean_source_header, header_texts
from operators.seg_writer import SegmentSpec

RTSTRUCT_NAME = "rtstruct.dcm"
SERIES_NUMBER = 9002
MANUFACTURER = "SegMamba node"


def write_structure_set(
    labels: np.ndarray, reference_datasets: Sequence[pydicom.Dataset], segments: Sequence[SegmentSpec],
    algorithm_name: str, algorithm_version: str, output_path: Path,
) -> pydicom.Dataset:
    """Contours of each segment's label in ``labels`` ([i, j, k] on the slices ``reference_datasets``,
    in slice order) as an RT Structure Set in the reference study; written atomically."""
    if labels.shape[2] != len(reference_datasets):
        raise ValueError(f"label map has {labels.shape[2]} slices, the reference series {len(reference_datasets)}")
    series = [_geometry_copy(ds) for ds in reference_datasets]
    with _quiet_pydicom():  # rt-utils sets FileDataset.is_little_endian, deprecated in pydicom 3
        dataset = create_rtstruct_dataset(series)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    structure = RTStruct(series, dataset)
    for spec in segments:
        mask = np.ascontiguousarray((labels == spec.label).transpose(1, 0, 2))  # [row, column, slice]
        with contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints a note for an empty mask
            structure.add_roi(mask, color=list(spec.color_rgb), name=spec.name, approximate_contours=False,
                              description=f"{spec.name}, automatic ({algorithm_name} {algorithm_version})",
                              roi_generation_algorithm=0)  # AUTOMATIC
    dataset = structure.ds
    _describe(dataset, series[0], segments, algorithm_name, algorithm_version)
    _reference_frames(dataset, reference_datasets)
    save_atomically(dataset, output_path)
    return dataset


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _geometry_copy(source: pydicom.Dataset) -> pydicom.Dataset:
    """A repaired header copy (operators.seg_header) with PixelSpacing swapped for rt-utils (see above)."""
    copy = clean_source_header(source)
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    copy.add(DataElement(tag_for_keyword("PixelSpacing"), "DS", [column_spacing, row_spacing]))
    return copy


def _describe(dataset: pydicom.Dataset, source: pydicom.Dataset, segments: Sequence[SegmentSpec],
              algorithm_name: str, algorithm_version: str) -> None:
    """Our series, equipment and ROI attributes in place of rt-utils' defaults."""
    now = datetime.datetime.now()
    description = f"{algorithm_name} contours"
    dataset.SeriesDescription = description
    dataset.SeriesNumber = SERIES_NUMBER
    dataset.SeriesDate = dataset.StructureSetDate = dataset.InstanceCreationDate = now.strftime("%Y%m%d")
    dataset.SeriesTime = dataset.StructureSetTime = dataset.InstanceCreationTime = now.strftime("%H%M%S")
    dataset.StructureSetLabel = algorithm_name[:16]
    dataset.StructureSetName = description[:64]
    dataset.Manufacturer = MANUFACTURER
    dataset.ManufacturerModelName = algorithm_name[:64]
    dataset.SoftwareVersions = algorithm_version
    dataset.OperatorsName = ""
    dataset.ReferringPhysicianName = source.get("ReferringPhysicianName", "")
    dataset.AccessionNumber = source.get("AccessionNumber", "")
    dataset.InstanceNumber = 1
    dataset.FrameOfReferenceUID = source.FrameOfReferenceUID  # Frame of Reference module (dciodvfy)
    dataset.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    if "InstitutionName" in source:
        dataset.InstitutionName = source.InstitutionName
    else:
        del dataset.InstitutionName
    for keyword in ("PatientAge", "PatientSize", "PatientWeight"):
        if keyword in dataset and dataset[keyword].value in ("", None):
            del dataset[keyword]  # Type 3: rt-utils writes them empty
    for observation, spec in zip(dataset.RTROIObservationsSequence, segments, strict=True):
        observation.ROIObservationDescription = f"{spec.name}: automatic segmentation, not reviewed"
        observation.ROIObservationLabel = spec.name[:16]
    for roi in dataset.ROIContourSequence:
        if "ContourSequence" in roi and not roi.ContourSequence:
            del roi.ContourSequence  # an ROI without voxels: declared, no contours
        for contour in roi.get("ContourSequence", []):
            contour.NumberOfContourPoints = len(contour.ContourData) // 3
    texts = [*header_texts(source), algorithm_name, algorithm_version, *(spec.name for spec in segments)]
    dataset.SpecificCharacterSet = character_set_for(source.get("SpecificCharacterSet"), texts) or "ISO_IR 6"
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID


def _reference_frames(dataset: pydicom.Dataset, reference_datasets: Sequence[pydicom.Dataset]) -> None:
    """Frames split from one Enhanced MR instance are referenced as that instance and its frame number."""
    frames = {str(ds.SOPInstanceUID): frame_source(ds) for ds in reference_datasets if frame_source(ds)}
    if not frames:
        return
    items = [image for frame in dataset.ReferencedFrameOfReferenceSequence
             for study in frame.RTReferencedStudySequence for series in study.RTReferencedSeriesSequence
             for image in series.ContourImageSequence]
    items += [image for roi in dataset.ROIContourSequence for contour in roi.get("ContourSequence", [])
              for image in contour.ContourImageSequence]
    for image in items:
        original, number = frames[str(image.ReferencedSOPInstanceUID)]
        image.ReferencedSOPClassUID = original.SOPClassUID
        image.ReferencedSOPInstanceUID = original.SOPInstanceUID
        image.ReferencedFrameNumber = number


class StructureSetOperator(StagedOutputOperator):
    """Adds the RT Structure Set of the staged labels (``rtstruct.dcm``)."""

    def add_output(self, staged: StagedResults) -> None:
        path = staged.staging / RTSTRUCT_NAME
        write_structure_set(staged.labels, staged.reference_datasets, staged.segments, staged.card.name,
                            staged.card.version, path)
        staged.add("rtstruct", [path])
