"""Place a DICOM SEG in patient space from its own headers and compare it with the phantom."""

from __future__ import annotations

import numpy as np
import pydicom

from segmamba.synthetic import Phantom


def seg_points(seg: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points (LPS) of every pixel of every frame, from the SEG's own functional groups,
    with the frame's segment number and its pixel values: (frames, rows, cols, 3), (frames,), pixels."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    rows, columns = np.meshgrid(np.arange(seg.Rows), np.arange(seg.Columns), indexing="ij")
    offsets = (columns[..., None] * column_spacing * orientation[:3]
               + rows[..., None] * row_spacing * orientation[3:])
    positions, segment_numbers = [], []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        positions.append(np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float))
        identification = frame if "SegmentIdentificationSequence" in frame else shared
        segment_numbers.append(int(identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber))
    points = np.stack(positions)[:, None, None, :] + offsets[None]
    pixels = seg.pixel_array.reshape(len(positions), seg.Rows, seg.Columns)
    return points, np.array(segment_numbers), pixels


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
