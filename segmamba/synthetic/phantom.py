"""Analytic brain-like phantom in patient coordinates (DICOM LPS, millimetres).

The phantom is defined by closed-form shapes, so it can be sampled exactly at any world point:
any grid, orientation or resolution renders the same anatomy, and the ground-truth label is
available on every grid. Tissue classes (`Tissue`) are nested ellipsoidal shells of the head:
scalp, skull, cerebrospinal fluid, grey matter, white matter and two lateral ventricles.
An optional `Lesion` adds BraTS labels (1 necrotic core, 2 surrounding FLAIR hyperintensity /
oedema, 3 enhancing rim) inside the intracranial space, with a smooth non-spherical outline
(radius modulated by low-order harmonics of the direction).

Grids follow the project's convention: an affine maps voxel index (i, j, k, 1) to LPS mm,
and arrays are indexed [i, j, k].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

CONTRASTS: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")


class Tissue(IntEnum):
    """Tissue class of a phantom point."""

    BACKGROUND = 0
    SCALP = 1
    SKULL = 2
    CSF = 3
    GREY_MATTER = 4
    WHITE_MATTER = 5
    VENTRICLE = 6


# Relative signal (0..1) per tissue, then per lesion label, for each contrast.
TISSUE_SIGNAL: dict[str, tuple[float, ...]] = {
    #       bg    scalp skull CSF   GM    WM    ventr.
    "t1n": (0.0, 0.85, 0.08, 0.15, 0.55, 0.75, 0.12),
    "t1c": (0.0, 0.85, 0.08, 0.15, 0.55, 0.75, 0.12),
    "t2w": (0.0, 0.55, 0.05, 1.00, 0.55, 0.40, 1.00),
    "t2f": (0.0, 0.50, 0.05, 0.08, 0.55, 0.40, 0.06),
}
LESION_SIGNAL: dict[str, tuple[float, float, float]] = {
    #       NCR   SNFH  ET
    "t1n": (0.30, 0.45, 0.50),
    "t1c": (0.25, 0.45, 1.00),
    "t2w": (0.90, 0.80, 0.65),
    "t2f": (0.85, 0.95, 0.85),
}

# Shell thicknesses (mm), measured inwards from the scalp surface.
_SKULL_DEPTH = 5.0
_CSF_DEPTH = 11.0
_GREY_DEPTH = 14.0
_WHITE_DEPTH = 18.0


def _harmonics(directions: np.ndarray) -> np.ndarray:
    """Real polynomial harmonics of degree 1-2 of unit directions (..., 3) -> (..., 8)."""
    x, y, z = directions[..., 0], directions[..., 1], directions[..., 2]
    return np.stack([x, y, z, x * y, y * z, z * x, x * x - y * y, 3.0 * z * z - 1.0], axis=-1)


def _inside_ellipsoid(points: np.ndarray, center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return np.sum(((points - center) / radii) ** 2, axis=-1) <= 1.0


@dataclass(frozen=True)
class Lesion:
    """A tumour: centre (LPS mm), mean outer radius of the oedema (mm) and its inner structure.

    Labels by normalised distance s = |p - centre| / R(direction): s < necrosis_fraction * core
    -> 1, s < core -> 3, else s < 1 -> 2, where `core` is core_fraction with its own outline.
    """

    center: tuple[float, float, float]
    radius: float = 25.0
    core_fraction: float = 0.6
    necrosis_fraction: float = 0.5
    irregularity: float = 0.15
    seed: int = 0
    _coefficients: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.radius <= 0 or not 0 < self.necrosis_fraction < 1 or not 0 < self.core_fraction < 1:
            raise ValueError("Lesion needs radius > 0 and fractions in (0, 1)")
        rng = np.random.default_rng(self.seed)
        coefficients = rng.uniform(-1.0, 1.0, size=(2, 8))
        # Bound the modulation so that 1 + sum(c * h) stays within 1 +- irregularity.
        coefficients *= self.irregularity / (np.abs(coefficients).sum(axis=1, keepdims=True) * 2.0)
        object.__setattr__(self, "_coefficients", coefficients)

    def labels(self, points: np.ndarray) -> np.ndarray:
        """BraTS label (0-3, uint8) of each world point (..., 3), ignoring the anatomy."""
        offset = np.asarray(points, dtype=np.float64) - np.asarray(self.center, dtype=np.float64)
        distance = np.linalg.norm(offset, axis=-1)
        labels = np.zeros(distance.shape, dtype=np.uint8)
        near = distance < self.radius * (1.0 + self.irregularity)
        offset, distance = offset[near], distance[near]
        directions = offset / np.maximum(distance, 1e-9)[:, None]
        modulation = 1.0 + _harmonics(directions) @ self._coefficients.T
        outer = distance / (self.radius * modulation[:, 0])
        core = distance / (self.radius * self.core_fraction * modulation[:, 1])
        near_labels = np.zeros(distance.shape, dtype=np.uint8)
        near_labels[outer < 1.0] = 2
        near_labels[core < 1.0] = 3
        near_labels[core < self.necrosis_fraction] = 1
        labels[near] = near_labels
        return labels


@dataclass(frozen=True)
class Phantom:
    """Ellipsoidal head at `center` (LPS mm) with semi-axes `radii` (L-R, A-P, I-S; mm)."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radii: tuple[float, float, float] = (75.0, 92.0, 80.0)
    lesion: Lesion | None = None

    def tissue(self, points_lps: np.ndarray) -> np.ndarray:
        """Tissue class (`Tissue` values, uint8) at world points (..., 3)."""
        points = np.asarray(points_lps, dtype=np.float64)
        center = np.asarray(self.center, dtype=np.float64)
        radii = np.asarray(self.radii, dtype=np.float64)
        tissue = np.zeros(points.shape[:-1], dtype=np.uint8)
        for depth, value in (
            (0.0, Tissue.SCALP),
            (_SKULL_DEPTH, Tissue.SKULL),
            (_CSF_DEPTH, Tissue.CSF),
            (_GREY_DEPTH, Tissue.GREY_MATTER),
            (_WHITE_DEPTH, Tissue.WHITE_MATTER),
        ):
            tissue[_inside_ellipsoid(points, center, radii - depth)] = value
        ventricle_radii = radii * np.array([0.08, 0.25, 0.12])
        for side in (-1.0, 1.0):
            ventricle_center = center + radii * np.array([0.11 * side, -0.05, 0.12])
            tissue[_inside_ellipsoid(points, ventricle_center, ventricle_radii)] = Tissue.VENTRICLE
        return tissue

    def sample(self, points_lps: np.ndarray) -> dict[str, np.ndarray]:
        """Signal of each contrast (float32, 0..1) and `label` (uint8 BraTS) at points (..., 3)."""
        tissue = self.tissue(points_lps)
        label = np.zeros(tissue.shape, dtype=np.uint8)
        if self.lesion is not None:
            intracranial = tissue >= Tissue.CSF
            label = np.where(intracranial, self.lesion.labels(points_lps), 0).astype(np.uint8)
        result: dict[str, np.ndarray] = {}
        for contrast in CONTRASTS:
            signal = np.asarray(TISSUE_SIGNAL[contrast], dtype=np.float32)[tissue]
            lesion_signal = np.asarray((0.0, *LESION_SIGNAL[contrast]), dtype=np.float32)[label]
            result[contrast] = np.where(label > 0, lesion_signal, signal)
        result["label"] = label
        return result

    def render(self, shape: tuple[int, int, int], affine: np.ndarray) -> dict[str, np.ndarray]:
        """`sample` at the voxel centres of a grid (arrays indexed [i, j, k])."""
        return self.sample(grid_points(shape, affine))


def grid_points(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """World (LPS mm) coordinates, shape (*shape, 3), of the voxel centres of a grid."""
    index = np.indices(shape, dtype=np.float64)
    affine = np.asarray(affine, dtype=np.float64)
    return np.einsum("ab,b...->...a", affine[:3, :3], index) + affine[:3, 3]
