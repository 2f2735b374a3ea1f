"""Compare a DICOM SEG, placed in patient space by its own headers, with the phantom."""

from __future__ import annotations

import numpy as np
import pydicom

from app.seg_reader import seg_points
from segmamba.synthetic import Phantom

__all__ = ["seg_dice", "seg_points"]


def seg_dice(
    seg: pydicom.Dataset, segments: set[int], phantom: Phantom, labels: set[int], truth_count: int
) -> float:
    """Dice between the union of SEG segments (disjoint; placed by the SEG's own geometry) and
    the phantom's voxels with these labels, of which the reference grid holds truth_count."""
    points, segment_numbers, pixels = seg_points(seg)
    chosen = np.isin(segment_numbers, list(segments))
    positive = pixels[chosen] > 0
    truth_at_seg = np.isin(phantom.sample(points[chosen])["label"], list(labels))
    return 2.0 * float((positive & truth_at_seg).sum()) / float(positive.sum() + truth_count)
