"""Clean a predicted label map: drop tumour islands too small to be a lesion.

Sliding-window networks leave small scattered false positives (a few voxels of "oedema" in normal
tissue, or in studies without a tumour). The model card sets the smallest tumour component kept
(``postprocessing.min_tumour_ml``); 0 keeps everything. Components are connected regions of the
whole tumour (any label > 0, 26-connectivity), so a lesion's inner labels stay with it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def remove_small_tumours(labels: np.ndarray, voxel_ml: float, min_tumour_ml: float) -> tuple[np.ndarray, int]:
    """``labels`` with whole-tumour components under ``min_tumour_ml`` set to 0; also how many were removed."""
    if min_tumour_ml <= 0 or not labels.any():
        return labels, 0
    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    sizes_ml = np.bincount(components.ravel(), minlength=count + 1) * voxel_ml
    too_small = sizes_ml < min_tumour_ml
    too_small[0] = False
    if not too_small.any():
        return labels, 0
    cleaned = labels.copy()
    cleaned[too_small[components]] = 0
    return cleaned, int(too_small.sum())
