"""The model grid in a fixed array orientation, and labels from it back onto the native grid.

A network trained on NIfTI files read one fixed way has only seen one array orientation. The
reference SegMamba recipe (github ge-xing/SegMamba at cff3597, ``light_training/preprocessing/
preprocessors/preprocessor_mri.py``) reads each BraTS file with SimpleITK and feeds
``sitk.GetArrayFromImage`` to the network without any reorientation: the array is indexed
``[z, y, x]`` of the file's voxel axes. BraTS 2023 files are in SRI24 atlas space, 240 x 240 x 155
at 1 mm, with an ITK direction of identity (LPS; nibabel reads the affine as ``L, P, S``). So
array axis 0 runs inferior -> Superior, axis 1 anterior -> Posterior, axis 2 right -> Left:
axis codes ``("S", "P", "L")`` at 1 mm (`REFERENCE_ORIENTATION`, `REFERENCE_SPACING_MM`).

Axis codes name, per array axis, the patient direction that the index increases toward (the
nibabel ``aff2axcodes`` convention), in the project's LPS frame (see operators/volume.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from operators.volume import ImageVolume, resample_to_grid

REFERENCE_ORIENTATION: tuple[str, str, str] = ("S", "P", "L")
REFERENCE_SPACING_MM = 1.0
_DIRECTIONS = {
    "L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0), "A": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0), "I": (0.0, 0.0, -1.0),
}
_EXTENT_TOLERANCE = 1e-4  # voxels: a 1 mm series on a 1 mm grid keeps its voxel count


class OrientationError(ValueError):
    """Axis codes that do not name three distinct patient axes (a model card error)."""


def axis_directions(codes: Sequence[str]) -> np.ndarray:
    """3x3 matrix whose columns are the LPS unit vectors of the axis codes (e.g. ``"SPL"``)."""
    letters = [str(code).upper() for code in codes]
    if len(letters) != 3 or any(letter not in _DIRECTIONS for letter in letters):
        raise OrientationError(f"axis codes must be three of {sorted(_DIRECTIONS)}, got {list(codes)}")
    directions = np.array([_DIRECTIONS[letter] for letter in letters]).T
    if abs(abs(np.linalg.det(directions)) - 1.0) > 1e-9:
        raise OrientationError(f"axis codes {letters} name the same patient axis twice")
    return directions


def axis_codes(affine: np.ndarray) -> tuple[str, str, str]:
    """The nearest axis codes of a voxel->LPS affine (each axis's dominant patient direction)."""
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    codes = []
    for column in matrix.T:
        axis = int(np.argmax(np.abs(column)))
        codes.append("LPS"[axis] if column[axis] > 0 else "RAI"[axis])
    return tuple(codes)  # type: ignore[return-value]


def model_grid(
    reference: ImageVolume,
    codes: Sequence[str] = REFERENCE_ORIENTATION,
    spacing_mm: float = REFERENCE_SPACING_MM,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, voxel->LPS affine) of the grid with these axis codes and spacing that covers the
    reference series' extent (its voxel corners), centred on it.

    A reference whose axes are a permutation/flip of the codes and whose voxels already have this
    spacing gets exactly its own voxel centres (reorientation without interpolation).
    """
    directions = axis_directions(codes)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=np.float64)
    corners = corners * np.array(reference.shape) - 0.5
    world = corners @ reference.affine[:3, :3].T + reference.affine[:3, 3]
    along = world @ directions  # corner coordinates along the model axes (mm)
    low, high = along.min(axis=0), along.max(axis=0)
    counts = np.ceil((high - low) / spacing_mm - _EXTENT_TOLERANCE)
    shape = tuple(max(1, int(n)) for n in counts)
    affine = np.eye(4)
    affine[:3, :3] = directions * float(spacing_mm)
    centre = directions @ ((low + high) / 2.0)
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return shape, affine  # type: ignore[return-value]


def to_model_grid(volume: ImageVolume, shape: tuple[int, int, int], affine: np.ndarray, order: int = 1) -> np.ndarray:
    """A series' values at the model grid's voxel centres (0 outside the series)."""
    return resample_to_grid(volume, shape, affine, order=order)


def labels_to_native(
    labels: np.ndarray,
    grid_affine: np.ndarray,
    native_shape: tuple[int, int, int],
    native_affine: np.ndarray,
    method: str = "nearest",
) -> np.ndarray:
    """Integer labels on the model grid mapped onto a native grid (e.g. the reference T1c's).

    ``nearest``: each native voxel takes the label of the nearest model-grid voxel (exact for a
    grid that is a permutation/flip of the native one at the same spacing). ``labelwise``: each
    label's indicator is interpolated linearly and the native voxel takes the label with the
    largest value (background included), which gives smoother
    boundaries when the native grid is finer or oblique. Native voxels outside the model grid get 0.
    """
    grid = ImageVolume(array=np.asarray(labels), affine=np.asarray(grid_affine, dtype=np.float64))
    native_shape = tuple(int(n) for n in native_shape)  # type: ignore[assignment]
    if method == "nearest":
        return resample_to_grid(grid, native_shape, native_affine, order=0).astype(labels.dtype)
    if method != "labelwise":
        raise ValueError(f"unknown label mapping {method!r}: use 'nearest' or 'labelwise'")
    out = np.zeros(native_shape, dtype=labels.dtype)
    best = None
    for value in np.unique(np.append(labels, 0)):  # background first
        indicator = ImageVolume(array=(labels == value).astype(np.float32), affine=grid.affine)
        weight = resample_to_grid(indicator, native_shape, native_affine, order=1)
        if best is None:
            best = weight
            continue
        wins = weight > best
        out[wins] = value
        best[wins] = weight[wins]
    return out
