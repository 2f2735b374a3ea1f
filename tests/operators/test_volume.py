"""DICOM series -> volume in patient coordinates, resampling, and refusal of bad series."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from operators.volume import (
    ImageVolume,
    VolumeError,
    isotropic_grid,
    resample_all_to_grid,
    resample_to_grid,
    series_to_volume,
    sort_slices,
)
from segmamba.synthetic import Phantom
from tests.conftest import FLAIR_BY_ORIENTATION, REFERENCE_DESCRIPTION


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def _copies(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    return [copy.deepcopy(ds) for ds in datasets]


def test_volume_geometry_and_values_per_series(
    study: Any, study_series: dict[str, list[pydicom.Dataset]], phantom: Phantom
) -> None:
    for info in study.series:
        if info.spec.kind != "image":
            continue
        volume = series_to_volume(study_series[info.spec.description])
        assert volume.series_instance_uid == info.series_instance_uid
        assert volume.series_description == info.spec.description
        assert volume.array.dtype == np.float32 and volume.shape == info.shape
        np.testing.assert_allclose(volume.affine, info.affine, atol=1e-3)
        expected = phantom.render(volume.shape, volume.affine)[info.spec.contrast] * 1000.0
        assert np.median(np.abs(volume.array - expected)) < 25.0, info.spec.description


def test_slice_order_comes_from_positions_not_instance_numbers(
    study_series: dict[str, list[pydicom.Dataset]],
) -> None:
    datasets = _copies(study_series["T2W_FLAIR_SAG"])
    reference = series_to_volume(datasets)
    random.Random(3).shuffle(datasets)
    for ds in datasets:
        ds.InstanceNumber = 1000 - ds.InstanceNumber
    shuffled = series_to_volume(datasets)
    np.testing.assert_array_equal(shuffled.array, reference.array)
    np.testing.assert_array_equal(shuffled.affine, reference.affine)


def test_rescale_slope_and_intercept_are_applied(study_series: dict[str, list[pydicom.Dataset]]) -> None:
    datasets = _copies(study_series["Ax T2 FSE"])
    for ds in datasets:
        ds.RescaleSlope, ds.RescaleIntercept = 2.5, -7.0
    volume = series_to_volume(datasets)
    first = sort_slices(datasets)[0]
    np.testing.assert_allclose(volume.array[:, :, 0], first.pixel_array.T * 2.5 - 7.0)


@pytest.mark.parametrize("orientation", sorted(FLAIR_BY_ORIENTATION))
def test_flair_resampled_onto_t1c_grid_finds_the_lesion(
    orientation: str, study: Any, study_series: dict[str, list[pydicom.Dataset]], phantom: Phantom
) -> None:
    """Each orientation and resolution lands on the reference grid where the lesion truly is."""
    reference = series_to_volume(study_series[REFERENCE_DESCRIPTION])
    flair = series_to_volume(study_series[FLAIR_BY_ORIENTATION[orientation]])
    resampled = resample_to_grid(flair, reference.shape, reference.affine, order=1)
    truth = phantom.render(reference.shape, reference.affine)["label"] > 0
    assert _dice(resampled > 700.0, truth) >= 0.95


def test_other_contrasts_resampled_match_the_phantom(
    study_series: dict[str, list[pydicom.Dataset]], phantom: Phantom
) -> None:
    reference = series_to_volume(study_series[REFERENCE_DESCRIPTION])
    rendered = phantom.render(reference.shape, reference.affine)
    for description, contrast in (("t1_mprage_sag_p2_iso", "t1n"), ("Ax T2 FSE", "t2w")):
        resampled = resample_to_grid(series_to_volume(study_series[description]), reference.shape,
                                     reference.affine)
        expected = rendered[contrast] * 1000.0
        assert np.median(np.abs(resampled - expected)) < 25.0, description


def test_nearest_neighbour_labels_and_identity(study: Any, phantom: Phantom) -> None:
    source = study.by_description(REFERENCE_DESCRIPTION)
    labels = ImageVolume(phantom.render(source.shape, source.affine)["label"], source.affine)
    np.testing.assert_array_equal(resample_to_grid(labels, labels.shape, labels.affine, order=0), labels.array)
    target = study.by_description("t1_mprage_sag_p2_iso")
    moved = resample_to_grid(labels, target.shape, target.affine, order=0)
    assert moved.dtype == np.uint8
    truth = phantom.render(target.shape, target.affine)["label"]
    for value in (1, 2, 3):
        assert _dice(moved == value, truth == value) >= 0.8, value
    assert _dice(moved > 0, truth > 0) >= 0.95


def test_outside_the_source_is_zero() -> None:
    volume = ImageVolume(np.ones((4, 4, 4), dtype=np.float32), np.eye(4))
    shifted = np.eye(4)
    shifted[:3, 3] = [2.0, 0.0, 0.0]
    result = resample_to_grid(volume, (4, 4, 4), shifted)
    np.testing.assert_array_equal(result[:2], 1.0)
    np.testing.assert_array_equal(result[2:], 0.0)


def test_resampling_several_series_at_once_matches_one_at_a_time(
    study_series: dict[str, list[pydicom.Dataset]],
) -> None:
    """The model input's series are resampled side by side: each result must be the one alone."""
    descriptions = [REFERENCE_DESCRIPTION, "t1_mprage_sag_p2_iso", *FLAIR_BY_ORIENTATION.values()]
    volumes = [series_to_volume(study_series[description]) for description in descriptions]
    target = volumes[0]
    together = resample_all_to_grid(volumes, target.shape, target.affine, order=1, mode="nearest")
    assert len(together) == len(volumes)
    for volume, result in zip(volumes, together, strict=True):
        np.testing.assert_array_equal(result, resample_to_grid(volume, target.shape, target.affine, 1, "nearest"))


def test_isotropic_grid_keeps_orientation_centre_and_extent(
    study_series: dict[str, list[pydicom.Dataset]],
) -> None:
    volume = series_to_volume(study_series["T2W_FLAIR"])  # oblique, 1.9 x 1.9 x 2.8 mm
    shape, affine = isotropic_grid(volume, 1.0)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), 1.0)
    np.testing.assert_allclose(affine[:3, :3] / 1.0, volume.affine[:3, :3] / volume.spacing, atol=1e-9)
    centre = lambda a, s: (a @ np.append((np.array(s) - 1) / 2.0, 1.0))[:3]  # noqa: E731
    np.testing.assert_allclose(centre(affine, shape), centre(volume.affine, volume.shape), atol=1e-6)
    np.testing.assert_allclose(np.array(shape), volume.spacing * np.array(volume.shape), atol=0.51)


# --- bad series ----------------------------------------------------------------------------------


def _expect_error(datasets: list[pydicom.Dataset], reason: str) -> None:
    with pytest.raises(VolumeError) as raised:
        series_to_volume(datasets)
    message = str(raised.value)
    assert reason in message
    if datasets:
        assert str(datasets[0].SeriesDescription) in message and str(datasets[0].SeriesInstanceUID) in message


def test_gap_is_refused(study_series: dict[str, list[pydicom.Dataset]]) -> None:
    datasets = sort_slices(_copies(study_series[REFERENCE_DESCRIPTION]))
    _expect_error(datasets[:20] + datasets[21:], "uneven slice spacing")


def test_duplicate_position_is_refused(study_series: dict[str, list[pydicom.Dataset]]) -> None:
    datasets = _copies(study_series[REFERENCE_DESCRIPTION])
    duplicate = copy.deepcopy(datasets[5])
    duplicate.SOPInstanceUID = generate_uid()
    _expect_error([*datasets, duplicate], "duplicate slice position")


def test_4d_series_are_refused(study_series: dict[str, list[pydicom.Dataset]]) -> None:
    _expect_error(_copies(study_series["ep2d_diff_3scan_trace_p2"]), "4D")
    datasets = _copies(study_series[REFERENCE_DESCRIPTION])
    for index, ds in enumerate(datasets):
        ds.TemporalPositionIdentifier = 1 + index % 2
    _expect_error(datasets, "temporal positions")


def test_mixed_orientation_matrix_and_spacing_are_refused(
    study_series: dict[str, list[pydicom.Dataset]],
) -> None:
    _expect_error(_copies(study_series["localizer"]), "mixed image orientations")
    datasets = _copies(study_series[REFERENCE_DESCRIPTION])
    datasets[3].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    _expect_error(datasets, "mixed image orientations")
    datasets = _copies(study_series[REFERENCE_DESCRIPTION])
    datasets[3].Rows = datasets[3].Rows // 2
    _expect_error(datasets, "mixed matrix sizes")
    datasets = _copies(study_series[REFERENCE_DESCRIPTION])
    datasets[3].PixelSpacing = [1.0, 1.0]
    _expect_error(datasets, "mixed pixel spacings")


def test_missing_geometry_and_unsupported_forms_are_refused(
    study_series: dict[str, list[pydicom.Dataset]],
) -> None:
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        datasets = _copies(study_series[REFERENCE_DESCRIPTION])
        delattr(datasets[7], keyword)
        _expect_error(datasets, f"lacks {keyword}")
    datasets = _copies(study_series[REFERENCE_DESCRIPTION])
    datasets[0].NumberOfFrames = 2
    _expect_error(datasets, "multi-frame")
    _expect_error(_copies(study_series[REFERENCE_DESCRIPTION][:1]), "at least 2 slices")
    mixed = _copies(study_series[REFERENCE_DESCRIPTION]) + _copies(study_series["Ax T2 FSE"])
    _expect_error(mixed, "several series")
    sheared = sort_slices(_copies(study_series[REFERENCE_DESCRIPTION]))
    for k, ds in enumerate(sheared):
        position = np.add(np.array(ds.ImagePositionPatient, dtype=float), (0.0, 0.5 * k, 0.0))
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    _expect_error(sheared, "sheared stack")
