"""Read a DICOM Segmentation back into patient space, by its own headers only.

Used to score what the application wrote (``python -m app evaluate``) and by the geometry tests:
nothing here trusts the writer's internal state, only the SEG's functional groups.
"""

from __future__ import annotations

import numpy as np
import pydicom


def seg_points(seg: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points (LPS mm) of every pixel of every frame, each frame's segment number, and whether each
    pixel lies in its frame's segment (uint8 0/1; see `segment_mask`).

    Shapes: (frames, rows, columns, 3), (frames,), (frames, rows, columns).
    """
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
    pixels = segment_mask(seg, seg.pixel_array.reshape(len(positions), seg.Rows, seg.Columns))
    return points, np.array(segment_numbers), pixels


def segment_mask(seg: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
    """Stored SEG pixels -> in-segment mask (uint8 0/1).

    BINARY: the bit itself. FRACTIONAL (what operators.seg_writer writes: 0 or MaximumFractionalValue):
    a pixel counts when its fraction is at least one half, so a probability or occupancy map reads as
    its 50 % mask.
    """
    kind = str(seg.get("SegmentationType", "BINARY"))
    if kind == "FRACTIONAL":
        maximum = int(seg.MaximumFractionalValue)
        return (2 * pixels.astype(np.int32) >= maximum).astype(np.uint8)
    if kind == "BINARY":
        return (pixels > 0).astype(np.uint8)
    raise ValueError(f"SEG {seg.get('SOPInstanceUID', '?')}: SegmentationType {kind!r} is not read here")


def seg_on_grid(seg: pydicom.Dataset, shape: tuple[int, int, int], affine: np.ndarray,
                segment_to_label: dict[int, int] | None = None) -> np.ndarray:
    """The SEG as a label map on a voxel grid ([i, j, k], LPS affine), nearest voxel per SEG pixel.

    ``segment_to_label`` maps segment numbers to label values (default: the segment number).
    Pixels falling outside the grid are ignored; a voxel set by several segments keeps the last.
    """
    points, numbers, pixels = seg_points(seg)
    labels = np.zeros(shape, dtype=np.uint8)
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    for frame in range(len(numbers)):
        on = pixels[frame] > 0
        if not on.any():
            continue
        index = np.rint(points[frame][on] @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.asarray(shape)), axis=1)
        index = index[inside]
        value = (segment_to_label or {}).get(int(numbers[frame]), int(numbers[frame]))
        labels[index[:, 0], index[:, 1], index[:, 2]] = value
    return labels
