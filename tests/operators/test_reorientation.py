"""The model grid in the reference recipe's array orientation, and labels back on the native grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from operators.reorientation import (
    REFERENCE_ORIENTATION,
    OrientationError,
    axis_codes,
    labels_to_native,
    model_grid,
    to_model_grid,
)
from operators.volume import ImageVolume
from segmamba.synthetic.phantom import grid_points

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# DICOM ImageOrientationPatient (row, column) of the usual acquisitions
AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
SAGITTAL = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
CORONAL = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))


def series_affine(row: tuple, column: tuple, spacing: tuple, shape: tuple, centre: tuple,
                  rotation_deg: tuple = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Voxel->LPS affine of a series with this orientation, spacing and centre (as in volume.slice_affine)."""
    rotation = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    row_v, column_v = rotation @ np.asarray(row), rotation @ np.asarray(column)
    affine = np.eye(4)
    affine[:3, :3] = np.stack([row_v, column_v, np.cross(row_v, column_v)], axis=1) * np.asarray(spacing)
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def truth_labels(points: np.ndarray) -> np.ndarray:
    """Analytic lesion (LPS mm): core 1 in oedema 2, and a separate enhancing ball 3, off the centre."""
    labels = np.zeros(points.shape[:-1], dtype=np.uint8)
    r_a = np.linalg.norm(points - np.array([8.0, -5.0, 6.0]), axis=-1)
    r_b = np.linalg.norm(points - np.array([-12.0, 9.0, -4.0]), axis=-1)
    labels[r_a < 13.0] = 2
    labels[r_a < 6.5] = 1
    labels[r_b < 5.0] = 3
    return labels


def boundary_distance(points: np.ndarray) -> np.ndarray:
    r_a = np.linalg.norm(points - np.array([8.0, -5.0, 6.0]), axis=-1)
    r_b = np.linalg.norm(points - np.array([-12.0, 9.0, -4.0]), axis=-1)
    return np.minimum.reduce([np.abs(r_a - 13.0), np.abs(r_a - 6.5), np.abs(r_b - 5.0)])


def test_brats_file_read_as_the_reference_reads_it_is_our_model_grid(tmp_path: Path) -> None:
    # A file with the BraTS 2023 header (SRI24: RAS affine diag(-1, -1, 1), origin (0, 239, 0), 1 mm).
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(24, 20, 16)).astype(np.int16)
    ras = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, ras), tmp_path / "t1c.nii.gz")
    assert nib.aff2axcodes(ras) == ("L", "P", "S")
    image = sitk.ReadImage(str(tmp_path / "t1c.nii.gz"))
    assert np.allclose(image.GetDirection(), np.eye(3).ravel())
    network_array = sitk.GetArrayFromImage(image)  # what the reference recipe feeds the network
    volume = ImageVolume(array=data.astype(np.float32), affine=LPS_FROM_RAS @ ras)
    shape, affine = model_grid(volume, REFERENCE_ORIENTATION, 1.0)
    assert shape == network_array.shape == (16, 20, 24)
    np.testing.assert_array_equal(to_model_grid(volume, shape, affine, order=0), network_array)
    assert axis_codes(affine) == ("S", "P", "L")


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        (AXIAL, lambda a: a.transpose(2, 1, 0)),  # i->L, j->P, k->S
        (SAGITTAL, lambda a: a.transpose(1, 0, 2)[::-1, :, ::-1]),  # i->P, j->I, k->R
        (CORONAL, lambda a: a.transpose(1, 2, 0)[::-1]),  # i->L, j->I, k->P
    ],
    ids=["axial", "sagittal", "coronal"],
)
def test_axis_aligned_series_reorient_without_interpolation_and_round_trip(orientation, expected) -> None:
    rng = np.random.default_rng(1)
    shape = (18, 22, 14)
    affine = series_affine(*orientation, (1.0, 1.0, 1.0), shape, (3.0, -20.0, 11.0))
    truth = rng.integers(0, 4, size=shape).astype(np.uint8)
    volume = ImageVolume(array=truth, affine=affine)
    grid_shape, grid_affine = model_grid(volume)
    on_grid = to_model_grid(volume, grid_shape, grid_affine, order=0)
    np.testing.assert_array_equal(on_grid, expected(truth))
    for method in ("nearest", "labelwise"):
        back = labels_to_native(on_grid, grid_affine, shape, affine, method=method)
        np.testing.assert_array_equal(back, truth)


@pytest.mark.parametrize(
    ("orientation", "spacing", "rotation_deg"),
    [(AXIAL, (1.0, 1.0, 1.0), (14.0, -19.0, 9.0)), (SAGITTAL, (0.9, 0.9, 1.2), (-11.0, 7.0, 23.0))],
    ids=["oblique-axial-1mm", "oblique-sagittal-anisotropic"],
)
@pytest.mark.parametrize("method", ["nearest", "labelwise"])
def test_oblique_series_labels_mapped_back_equal_the_truth(orientation, spacing, rotation_deg, method) -> None:
    shape = (50, 56, 46)
    affine = series_affine(*orientation, spacing, shape, (1.0, 2.0, -3.0), rotation_deg)
    volume = ImageVolume(array=np.zeros(shape, dtype=np.float32), affine=affine)
    grid_shape, grid_affine = model_grid(volume)
    assert axis_codes(grid_affine) == REFERENCE_ORIENTATION
    predicted = truth_labels(grid_points(grid_shape, grid_affine))  # a perfect network on the model grid
    back = labels_to_native(predicted, grid_affine, shape, affine, method=method)
    native_points = grid_points(shape, affine)
    truth = truth_labels(native_points)
    wrong = back != truth
    # Only voxels within reach of a label boundary may differ (half a model voxel's diagonal for
    # nearest, a whole one for the interpolated indicators); a flip or shift would miss far more.
    reach = np.sqrt(3.0) * (0.5 if method == "nearest" else 1.0)
    assert boundary_distance(native_points[wrong]).max(initial=0.0) <= reach
    far = boundary_distance(native_points) > reach
    assert far.mean() > 0.9 and (back[far] == truth[far]).all()
    for label in (1, 2, 3):
        dice = 2 * ((back == label) & (truth == label)).sum() / ((back == label).sum() + (truth == label).sum())
        assert dice >= 0.9, (label, dice)


def test_model_grid_covers_the_whole_reference_series() -> None:
    shape = (40, 44, 30)
    affine = series_affine(*SAGITTAL, (0.8, 0.8, 1.5), shape, (0.0, 0.0, 0.0), (25.0, -30.0, 12.0))
    grid_shape, grid_affine = model_grid(ImageVolume(array=np.zeros(shape, np.float32), affine=affine))
    everywhere = np.ones(grid_shape, dtype=np.uint8)
    assert labels_to_native(everywhere, grid_affine, shape, affine).all()


def test_axis_codes_must_name_three_patient_axes() -> None:
    volume = ImageVolume(array=np.zeros((4, 4, 4), np.float32), affine=np.eye(4))
    with pytest.raises(OrientationError):
        model_grid(volume, ("S", "I", "L"))
    with pytest.raises(OrientationError):
        model_grid(volume, ("S", "P", "X"))
