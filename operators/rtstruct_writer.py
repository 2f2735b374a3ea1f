"""RT Structure Set: the contours of each label on the reference (T1c) slices, for planning systems
and viewers without SEG support. rt-utils builds the structure set (modules, ROI, observation and
contour items); OpenCV traces the contours; the contour geometry is computed here.

Contours, per slice and label: a closed planar polygon around each 8-connected region and one
around each hole (traced around the hole's own voxels), a quarter voxel outside the centres of the
boundary voxels (traced on the mask upsampled 2x). Filled by the even-odd rule they give the
label's voxels back exactly both for systems that take the voxels whose centres lie inside and for
those that round the vertices and include the boundary (rt-utils, OpenCV fillPoly). Every label is
declared as an ROI with its model-card colour, even without voxels (then without contours).

rt-utils 1.2.7's own mask-to-contour step is not used: it scales the row direction by
PixelSpacing[0] (wrong for non-square pixels), its hole contours run through the region's voxels
(filling them drops the voxels around each hole), and its contours through the voxel centres lose
the boundary voxels for centre-inside rasterisers. Here a vertex at column c, row r of
slice k is IPP_k + c * PixelSpacing[1] * row direction + r * PixelSpacing[0] * column direction
(PS3.3 C.7.6.2), on that slice's own plane. Slices split from one Enhanced MR instance are
referenced as that instance and frame.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from operators.atomic_files import save_atomically
from operators.errors import ConfigurationError
from operators.multiframe import frame_source
from operators.results import StagedOutputOperator, StagedResults
from operators.seg_header import character_set_for, clean_source_header, header_texts
from operators.seg_writer import SegmentSpec

RTSTRUCT_NAME = "rtstruct.dcm"
SERIES_NUMBER = 9002
MANUFACTURER = "SegMamba node"


def _libraries() -> tuple[Any, Any, Any]:
    """(cv2, rt_utils.ds_helper, rt_utils.utils.ROIData), imported only when an RTSTRUCT is written:
    OpenCV needs libGL.so.1 and libglib-2.0 (Debian libgl1, libglib2.0-0), which slim images lack."""
    try:
        import cv2
        from rt_utils import ds_helper
        from rt_utils.utils import ROIData
    except ImportError as error:
        raise ConfigurationError(f"output_rtstruct needs rt-utils and OpenCV, which do not import here: {error}"
                                 " (install requirements.txt; OpenCV needs libGL.so.1 and libglib-2.0)") from error
    return cv2, ds_helper, ROIData


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D mask ([row, column]) as (column, row) vertex arrays: region outlines, then holes.

    Traced on the mask upsampled 2x, so each vertex lies a quarter voxel outside the centres of the
    boundary voxels (of the region, or of the hole for a hole outline).
    """
    cv2 = _libraries()[0]
    fine = np.ascontiguousarray(np.asarray(mask, dtype=bool).repeat(2, axis=0).repeat(2, axis=1), dtype=np.uint8)
    holes = (ndimage.binary_fill_holes(fine) & ~fine.astype(bool)).astype(np.uint8)
    outlines, hierarchy = cv2.findContours(fine, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parents = hierarchy[0][:, 3] if hierarchy is not None else []
    regions = [c for c, parent in zip(outlines, parents, strict=True) if parent < 0]  # not the holes
    hole_outlines, _ = cv2.findContours(holes, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [(contour.reshape(-1, 2).astype(np.float64) - 0.5) / 2.0 for contour in (*regions, *hole_outlines)]


def patient_points(vertices: np.ndarray, dataset: pydicom.Dataset) -> list[float]:
    """(column, row) pixel vertices of one slice to flat x, y, z patient coordinates (mm), rounded for DS."""
    origin = np.array(dataset.ImagePositionPatient, dtype=np.float64)
    cosines = np.array(dataset.ImageOrientationPatient, dtype=np.float64)
    row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    points = (origin + np.outer(vertices[:, 0] * column_spacing, cosines[:3])
              + np.outer(vertices[:, 1] * row_spacing, cosines[3:]))
    return [round(float(v), 4) for v in points.ravel()]  # DS: at most 16 characters


def write_structure_set(
    labels: np.ndarray, reference_datasets: Sequence[pydicom.Dataset], segments: Sequence[SegmentSpec],
    algorithm_name: str, algorithm_version: str, output_path: Path,
) -> pydicom.Dataset:
    """Contours of each segment's label in ``labels`` ([i, j, k] on the slices ``reference_datasets``,
    in slice order) as an RT Structure Set in the reference study; written atomically."""
    if labels.shape[2] != len(reference_datasets):
        raise ValueError(f"label map has {labels.shape[2]} slices, the reference series {len(reference_datasets)}")
    _cv2, ds_helper, ROIData = _libraries()
    series = [clean_source_header(ds) for ds in reference_datasets]
    with _quiet_pydicom():  # rt-utils sets FileDataset.is_little_endian, deprecated in pydicom 3
        dataset = ds_helper.create_rtstruct_dataset(series)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    frame_of_reference = str(dataset.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID)
    for number, spec in enumerate(segments, start=1):
        roi = ROIData(mask="", color=list(spec.color_rgb), number=number, name=spec.name,
                      frame_of_reference_uid=frame_of_reference, roi_generation_algorithm=0,  # AUTOMATIC
                      description=f"{spec.name}, automatic ({algorithm_name} {algorithm_version})")
        dataset.StructureSetROISequence.append(ds_helper.create_structure_set_roi(roi))
        dataset.RTROIObservationsSequence.append(ds_helper.create_rtroi_observation(roi))
        item = pydicom.Dataset()
        item.ROIDisplayColor = list(spec.color_rgb)
        item.ReferencedROINumber = number
        contours = [ds_helper.create_contour(source, patient_points(vertices, source))
                    for k, source in enumerate(series) for vertices in slice_contours(spec.label == labels[:, :, k].T)]
        if contours:  # an ROI without voxels is declared without contours
            item.ContourSequence = contours
        dataset.ROIContourSequence.append(item)
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
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


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
        for contour in roi.get("ContourSequence", []):
            contour.NumberOfContourPoints = len(contour.ContourData) // 3
    texts = [*header_texts(source), algorithm_name, algorithm_version, *(spec.name for spec in segments)]
    dataset.SpecificCharacterSet = character_set_for(source.get("SpecificCharacterSet"), texts) or "ISO_IR 6"


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
