"""Secondary Capture overlay series: reference (T1c) slices with the label contours burnt in, for PACS
that show neither SEG nor SR. Derived images, not for diagnosis, and labelled so everywhere:
SeriesDescription, ImageType DERIVED\\SECONDARY, BurnedInAnnotation YES, DerivationDescription,
ImageComments, and the text burnt into every image.

One RGB image per reference slice that carries a label (the middle slice when none does, so the
PACS shows that the study was searched), in the slice's own row/column orientation, windowed to
the 1st-99.5th percentile of the series; contours are the one-voxel boundary of each label in its
model-card colour. Each image references its source slice (SourceImageSequence).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw
from scipy import ndimage

from operators.atomic_files import save_atomically
from operators.multiframe import frame_source
from operators.results import StagedOutputOperator, StagedResults
from operators.seg_header import character_set_for, clean_source_header, header_texts
from operators.seg_writer import SegmentSpec

OVERLAY_FOLDER = "overlay"
SERIES_NUMBER = 9003
MANUFACTURER = "SegMamba node"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS"
SERIES_DESCRIPTION = f"DERIVED contour overlay - {NOT_FOR_DIAGNOSIS}"


def overlay_slices(labels: np.ndarray) -> list[int]:
    """Slice indices (k) shown: those with a label, or the middle slice when none has one."""
    present = np.flatnonzero(labels.reshape(-1, labels.shape[2]).any(axis=0))
    return [int(k) for k in present] if present.size else [labels.shape[2] // 2]


def render_slice(image: np.ndarray, labels: np.ndarray, segments: Sequence[SegmentSpec], window: tuple[float, float],
                 caption: str) -> np.ndarray:
    """RGB uint8 [row, column, 3] of one slice ([row, column] arrays) with coloured label contours and a caption."""
    low, high = window
    grey = np.clip((image.astype(np.float64) - low) / max(high - low, 1e-6), 0.0, 1.0)
    rgb = np.repeat((grey * 255.0).round().astype(np.uint8)[:, :, None], 3, axis=2)
    for spec in segments:
        mask = labels == spec.label
        edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
        rgb[edge] = spec.color_rgb
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    for row, text in enumerate((NOT_FOR_DIAGNOSIS, caption)):
        draw.text((2, 1 + 11 * row), text, fill=(255, 255, 0))
    return np.asarray(canvas)


def write_overlay_series(
    labels: np.ndarray, volume: np.ndarray, reference_datasets: Sequence[pydicom.Dataset],
    segments: Sequence[SegmentSpec], algorithm_name: str, algorithm_version: str, folder: Path,
) -> list[Path]:
    """One SC image per shown slice of ``volume``/``labels`` ([i, j, k] on ``reference_datasets``) in ``folder``."""
    if labels.shape != volume.shape or labels.shape[2] != len(reference_datasets):
        raise ValueError(f"labels {labels.shape}, volume {volume.shape} and {len(reference_datasets)} slices differ")
    finite = volume[np.isfinite(volume)]
    window = (float(np.percentile(finite, 1.0)), float(np.percentile(finite, 99.5))) if finite.size else (0.0, 1.0)
    series_uid = hd.UID()
    now = datetime.datetime.now()
    caption = f"{algorithm_name} {algorithm_version}"
    derivation = (f"Reference slice with the contours of {', '.join(s.name for s in segments)} burnt in by "
                  f"{caption}; derived image, not for diagnosis")
    paths = []
    for number, k in enumerate(overlay_slices(labels), start=1):
        source = reference_datasets[k]
        pixels = render_slice(volume[:, :, k].T, labels[:, :, k].T, segments, window, caption)
        reference = clean_source_header(source)
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=reference, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(), instance_number=number, manufacturer=MANUFACTURER,
            pixel_spacing=tuple(float(v) for v in source.PixelSpacing),
            patient_orientation=_orientation(source), transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
        )
        image.SeriesDescription = SERIES_DESCRIPTION
        image.ImageType = ["DERIVED", "SECONDARY"]
        image.BurnedInAnnotation = "YES"
        image.DerivationDescription = derivation
        image.ImageComments = f"{NOT_FOR_DIAGNOSIS}: derived overlay of automatic contours"
        image.SeriesDate = image.ContentDate = now.strftime("%Y%m%d")
        image.SeriesTime = image.ContentTime = now.strftime("%H%M%S")
        image.ManufacturerModelName = algorithm_name[:64]
        image.SoftwareVersions = algorithm_version
        image.SourceImageSequence = [_source_item(source)]
        image.BodyPartExamined = reference.get("BodyPartExamined") or "HEAD"
        charset = character_set_for(reference.get("SpecificCharacterSet"),
                                    [*header_texts(reference), derivation, *(s.name for s in segments)])
        if charset is not None:
            image.SpecificCharacterSet = charset
        paths.append(save_atomically(image, folder / f"IM{number:05d}.dcm"))
    return paths


def _orientation(dataset: pydicom.Dataset) -> tuple[str, str]:
    """PatientOrientation (row, column directions) from ImageOrientationPatient, by the dominant axes."""
    cosines = [float(v) for v in dataset.ImageOrientationPatient]
    return _direction_letters(cosines[:3]), _direction_letters(cosines[3:])


def _direction_letters(vector: Sequence[float]) -> str:
    letters = (("L", "R"), ("P", "A"), ("H", "F"))  # +x left, +y posterior, +z head (LPS)
    order = np.argsort(-np.abs(vector))
    chosen = [letters[axis][0 if vector[axis] > 0 else 1] for axis in order if abs(vector[axis]) > 0.25]
    return "".join(chosen[:3]) or letters[int(order[0])][0 if vector[int(order[0])] > 0 else 1]


def _source_item(source: pydicom.Dataset) -> pydicom.Dataset:
    item = pydicom.Dataset()
    multiframe = frame_source(source)
    original = multiframe[0] if multiframe else source
    item.ReferencedSOPClassUID = original.SOPClassUID
    item.ReferencedSOPInstanceUID = original.SOPInstanceUID
    if multiframe:
        item.ReferencedFrameNumber = multiframe[1]
    return item


class OverlayOperator(StagedOutputOperator):
    """Adds the Secondary Capture overlay series (``overlay/IM00001.dcm``, ...)."""

    def add_output(self, staged: StagedResults) -> None:
        paths = write_overlay_series(staged.labels, staged.reference.array, staged.reference_datasets,
                                     staged.segments, staged.card.name, staged.card.version,
                                     staged.staging / OVERLAY_FOLDER)
        staged.add("sc", paths)
