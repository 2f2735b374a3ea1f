"""Brain mask from one series (T1 by default) with deepbet, offline, on the CPU.

deepbet (PyPI, MIT, Fisch et al. 2024) ships its trained TorchScript networks inside the wheel,
so nothing is downloaded at run time (HD-BET and SynthStrip fetch weights, which cannot be used
here). It was trained on T1-weighted images at about 1 mm: a series with other voxel sizes is
resampled onto a 1 mm grid with its own axes first, and the mask comes back on the series' own
grid (nearest neighbour). ``dilate_mm`` widens the mask (a safety margin for a tumour at the
brain's edge, the main risk of skull-stripping before segmentation).
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from operators.volume import ImageVolume, isotropic_grid, resample_to_grid, voxel_volume_ml

log = logging.getLogger(__name__)

NETWORK_SPACING_MM = 1.0
_SPACING_TOLERANCE = 0.1  # relative: series within 10 % of 1 mm go to the network as they are
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class BrainMask:
    """A brain mask on the grid of the series it was computed from."""

    mask: np.ndarray  # bool, same shape as the series' array
    affine: np.ndarray  # the series' voxel->LPS affine
    seconds: float

    @property
    def volume_ml(self) -> float:
        return float(self.mask.sum()) * voxel_volume_ml(self.affine)


@functools.lru_cache(maxsize=1)
def _network():  # type: ignore[no-untyped-def]
    """deepbet's brain-extraction networks, loaded once per process (CPU)."""
    from deepbet import BrainExtraction

    with warnings.catch_warnings():  # deepbet loads TorchScript files, which torch now calls deprecated
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=DeprecationWarning)
        return BrainExtraction(no_gpu=True)


def _network_mask(volume: ImageVolume, threshold: float) -> np.ndarray:
    image = nib.Nifti1Image(np.asarray(volume.array, dtype=np.float32), _LPS_TO_RAS @ volume.affine)
    _, mask, _ = _network().run(image, threshold=threshold)
    return np.asarray(mask.dataobj) > 0


def extract_brain(volume: ImageVolume, threshold: float = 0.5, dilate_mm: float = 0.0) -> BrainMask:
    """The brain mask of a (T1-weighted) series, on that series' grid."""
    started = time.perf_counter()
    if np.allclose(volume.spacing, NETWORK_SPACING_MM, rtol=_SPACING_TOLERANCE):
        mask = _network_mask(volume, threshold)
    else:
        shape, affine = isotropic_grid(volume, NETWORK_SPACING_MM)
        resampled = ImageVolume(array=resample_to_grid(volume, shape, affine, order=1), affine=affine)
        on_grid = _network_mask(resampled, threshold)
        back = ImageVolume(array=on_grid.astype(np.uint8), affine=affine)
        mask = resample_to_grid(back, volume.shape, volume.affine, order=0).astype(bool)
    if dilate_mm > 0:
        radius = np.maximum(np.round(dilate_mm / volume.spacing).astype(int), 1)
        zz, yy, xx = np.ogrid[tuple(slice(-r, r + 1) for r in radius)]
        ball = (zz / radius[0]) ** 2 + (yy / radius[1]) ** 2 + (xx / radius[2]) ** 2 <= 1.0
        mask = ndimage.binary_dilation(mask, structure=ball)
    result = BrainMask(mask=mask, affine=np.asarray(volume.affine, dtype=np.float64),
                       seconds=time.perf_counter() - started)
    log.info("brain mask of %s: %.0f mL in %.1f s", volume.series_description or "series", result.volume_ml,
             result.seconds)
    return result


def fraction_inside(mask: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of the labelled (tumour) voxels that lie inside the mask (1.0 when there are none)."""
    tumour = np.asarray(labels) > 0
    total = int(tumour.sum())
    return 1.0 if total == 0 else float((tumour & np.asarray(mask, dtype=bool)).sum()) / total


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Channels (C, ...) or one volume with everything outside the mask set to 0."""
    return np.where(np.asarray(mask, dtype=bool), image, np.zeros((), dtype=image.dtype)).astype(image.dtype)
