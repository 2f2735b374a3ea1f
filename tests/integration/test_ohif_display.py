"""Browser test: our SEG over the T1c in OHIF 3.13 (prebuilt dist) over Orthanc 1.10 DICOMweb, headless Chromium.

For each study shape the T1c series and the SEG written by operators.seg_writer go to Orthanc; the driver
(tests/viewer/ohif_driver.mjs) opens the study, loads the SEG as a user does (double-click, "Yes") and captures
the viewport on the slice through the lesion before and after. The capture is compared with the phantom's true
labels projected into the canvas through the viewport's own canvas -> world mapping: segment colours must
cover the lesion, with each label in its segment's colour, and appear nowhere else. The test fails when the
SEG does not load (the driver exits with the reason).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from scipy import ndimage

from app.synthetic_study import SeriesSpec, truth_labels, write_study
from operators.seg_writer import SegmentSpec, write_segmentation
from segmamba.synthetic import Lesion, Phantom
from tests.conftest import BRATS_SEGMENTS
from tests.support.ohif_peers import DicomWebOrthanc, ViewerServer, run_driver

PHANTOM = Phantom(center=(2.0, -8.0, 15.0), lesion=Lesion(center=(-26.0, 2.0, 36.0), radius=22.0, seed=1))
SLAB = dict(slices=14, slice_thickness=5.0, center=(2.0, -8.0, 36.0))  # 70 mm through the lesion: small, fast

# Rows x Columns not a multiple of 8 (150 x 125, 131 x 117): 1-bit frames would not be whole bytes.
CASES = {
    "axial-256-wide": SeriesSpec("t1c", "AX T1 POST GAD", "axial", rows=224, columns=256,
                                 pixel_spacing=(1.0, 1.0), **SLAB),
    "coronal-150-wide": SeriesSpec("t1c", "COR T1 POST GAD", "coronal", rows=125, columns=150,
                                   pixel_spacing=(1.9, 1.6), **SLAB),
    "oblique-131-wide": SeriesSpec("t1c", "OBL T1 POST GAD", "axial", tilt_deg=(14.0, -8.0, 11.0), rows=117,
                                   columns=131, pixel_spacing=(1.9, 1.8), **SLAB),
    "sagittal-97-wide": SeriesSpec("t1c", "SAG T1 POST GAD", "sagittal", rows=101, columns=97,
                                   pixel_spacing=(2.3, 2.4), **SLAB),
}
CHROMA = 30  # max - min of R, G, B: a segment colour over the greyscale image


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DicomWebOrthanc, ViewerServer]]:
    orthanc = DicomWebOrthanc(tmp_path_factory.mktemp("orthanc")).start()
    try:
        with ViewerServer(orthanc) as server:
            yield orthanc, server
    finally:
        orthanc.stop()


@pytest.mark.parametrize("case", sorted(CASES))
def test_ohif_shows_the_seg_on_the_lesion(case: str, tmp_path: Path,
                                          viewer: tuple[DicomWebOrthanc, ViewerServer]) -> None:
    orthanc, server = viewer
    spec = CASES[case]
    study = write_study(tmp_path / "study", PHANTOM, [spec], seed=sorted(CASES).index(case) + 40,
                        patient_id=f"OHIF{sorted(CASES).index(case)}")
    series = study.series[0]
    labels = truth_labels(PHANTOM, series)
    segments = [SegmentSpec.from_dict(entry) for entry in BRATS_SEGMENTS]
    seg_path = write_segmentation(labels, [pydicom.dcmread(p) for p in series.files], segments,
                                  "SegMamba", "0.1", tmp_path / "seg.dcm")
    for path in (*series.files, seg_path):
        orthanc.upload(path)

    shots = tmp_path / "shots"
    answer = run_driver({"viewerUrl": server.url, "studyUid": study.study_instance_uid,
                         "referenceSeriesUid": series.series_instance_uid,
                         "targetPoint": list(PHANTOM.lesion.center)}, shots)
    assert answer["segments"] == [len(segments)], answer["segments"]

    before = np.asarray(Image.open(shots / "before.png").convert("RGB"), dtype=np.int32)
    after = np.asarray(Image.open(shots / "after.png").convert("RGB"), dtype=np.int32)
    expected, voxel_px = _labels_on_canvas(answer["after"], labels, series.affine)
    coloured = np.ptp(after, axis=2) > CHROMA
    assert not (np.ptp(before, axis=2) > CHROMA).any(), "colour in the viewport before the SEG was loaded"

    lesion = expected > 0
    margin = int(np.ceil(voxel_px)) + 2  # the outline and voxel edges: one voxel and a little more
    core = ndimage.binary_erosion(lesion, iterations=margin)
    near = ndimage.binary_dilation(lesion, iterations=margin)
    assert core.sum() > 500, f"the lesion covers only {core.sum()} canvas pixels"
    assert coloured[core].mean() > 0.97, f"only {coloured[core].mean():.1%} of the lesion is coloured"
    stray = coloured & ~near
    assert stray.sum() <= 0.01 * coloured.sum(), f"{stray.sum()} coloured pixels away from the lesion"
    for spec_number, spec in enumerate(segments, start=1):
        region = ndimage.binary_erosion(expected == spec.label, iterations=margin)
        if region.sum() < 50:
            continue
        nearest = _nearest_segment(after[region], segments)
        share = float((nearest == spec_number).mean())
        assert share > 0.9, f"{spec.name}: only {share:.1%} of its pixels are in its colour"


def _labels_on_canvas(shot: dict[str, Any], labels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, float]:
    """The true label of every canvas pixel (nearest voxel of the reference grid; 0 off the grid) and the size
    of one voxel in canvas pixels, from the viewport's canvas -> world mapping."""
    width, height = shot["pixels"]
    css_width, css_height = shot["css"]
    origin, right, down = (np.asarray(shot[key], dtype=np.float64) for key in ("origin", "right", "down"))
    x = (np.arange(width) + 0.5) * css_width / width
    y = (np.arange(height) + 0.5) * css_height / height
    world = (origin + np.multiply.outer(y / css_height, down - origin)[:, None, :]
             + np.multiply.outer(x / css_width, right - origin)[None, :, :])
    inverse = np.linalg.inv(affine)
    index = np.rint(world @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.asarray(labels.shape)), axis=-1)
    found = np.zeros((height, width), dtype=np.uint8)
    found[inside] = labels[tuple(index[inside].T)]
    mm_per_px = float(np.linalg.norm(right - origin)) / width
    voxel_mm = float(np.max(np.linalg.norm(affine[:3, :2], axis=0)))
    return found, voxel_mm / mm_per_px


def _nearest_segment(pixels: np.ndarray, segments: list[SegmentSpec]) -> np.ndarray:
    """Per pixel, the segment number (1-based) whose colour direction (colour minus its grey) is closest."""
    chroma = pixels - pixels.mean(axis=1, keepdims=True)
    colours = np.array([spec.color_rgb for spec in segments], dtype=np.float64)
    directions = colours - colours.mean(axis=1, keepdims=True)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return np.argmax(chroma @ directions.T, axis=1) + 1
