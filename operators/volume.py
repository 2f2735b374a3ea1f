"""DICOM series -> image volume in patient coordinates, and resampling between voxel grids.

Convention (used everywhere in the project): a volume's `array` is indexed [i, j, k] where
i is the column index within a slice (moving along the first ImageOrientationPatient vector,
the row direction), j is the row index (along the second vector, the column direction) and
k is the slice index, ascending along the slice normal (row direction x column direction).
`affine` (4x4, float64) maps (i, j, k, 1) to the voxel centre in patient LPS millimetres, as in
DICOM (not the RAS of NIfTI). So a slice's pixel_array ([row, column]) is array[:, :, k].T.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_rescale
from scipy import ndimage

from operators.multiframe import decode_instance, frame_source
from operators.pixel_decoding import FrameDecodeError

_GEOMETRY_KEYWORDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
_ORIENTATION_TOLERANCE = 1e-4
_POSITION_TOLERANCE_MM = 1e-3
_SPACING_TOLERANCE = 0.02  # relative
RELATIVE_PATH_ATTRIBUTE = "relative_path"  # the loader sets dataset.<this> to its path relative to the input


class VolumeError(ValueError):
    """A series that cannot be built into one rectilinear volume; the message says why.

    ``series`` is the series label (``#<number> '<description>' (<uid>)``); ``file`` the path,
    relative to the input folder, of the instance at fault when one file is ("" otherwise).
    """

    def __init__(self, message: str, *, series: str = "", file: str = "") -> None:
        super().__init__(message)
        self.series = series
        self.file = file


def relative_path(dataset: pydicom.Dataset) -> str:
    """The instance's file relative to the input folder (as the loader recorded it), else its name."""
    recorded = getattr(dataset, RELATIVE_PATH_ATTRIBUTE, None)
    if recorded:
        return str(recorded)
    filename = getattr(dataset, "filename", None)
    return Path(str(filename)).name if filename else str(dataset.get("SOPInstanceUID", "?"))


def series_label(datasets: list[pydicom.Dataset]) -> str:
    """``#<SeriesNumber> '<SeriesDescription>' (<SeriesInstanceUID>)`` of a series' first instance."""
    first = datasets[0] if datasets else pydicom.Dataset()
    number = first.get("SeriesNumber")
    prefix = f"#{number} " if number not in (None, "") else ""
    description = str(first.get("SeriesDescription", ""))
    return f"{prefix}{description!r} ({first.get('SeriesInstanceUID', 'no SeriesInstanceUID')})"


@dataclass
class ImageVolume:
    """A 3D image on a voxel grid in patient coordinates (see the module docstring)."""

    array: np.ndarray
    affine: np.ndarray
    series_instance_uid: str = ""
    series_description: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """Number of voxels along i, j, k."""
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (mm) along i, j, k."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume (mL) of one voxel of a grid with this affine."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def _is_empty(value: object) -> bool:
    return value is None or (hasattr(value, "__len__") and len(value) == 0)  # type: ignore[arg-type]


def sort_slices(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """Check that the instances form one rectilinear volume and sort them along the normal.

    Raises VolumeError naming the series and the reason: no or mixed series, multi-frame data
    other than the frames of one split Enhanced MR instance, 4D data, missing geometry, mixed
    orientation, matrix or pixel spacing, duplicate slice positions, a sheared stack, or uneven
    slice spacing (gaps).
    """
    name = f"series {series_label(datasets)}"
    if len(datasets) < 2:
        raise VolumeError(f"{name}: {len(datasets)} instance(s); a volume needs at least 2 slices")
    if len({ds.get("SeriesInstanceUID") for ds in datasets}) > 1:
        raise VolumeError(f"{name}: instances of several series were mixed")
    for ds in datasets:
        needed = _GEOMETRY_KEYWORDS if frame_source(ds) else (*_GEOMETRY_KEYWORDS, "PixelData")
        missing = [keyword for keyword in needed if _is_empty(ds.get(keyword))]
        if missing:
            path = relative_path(ds)
            raise VolumeError(f"{name}: file {path} lacks {', '.join(missing)}", file=path)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(f"{name}: multi-frame instances of this SOP class are not supported")
    originals = {id(source[0]) for source in map(frame_source, datasets) if source is not None}
    if originals and (len(originals) > 1 or any(frame_source(ds) is None for ds in datasets)):
        raise VolumeError(
            f"{name}: frames of {len(originals)} multi-frame instance(s) mixed with other instances "
            "(a SEG can reference one multi-frame instance per series)"
        )
    temporal = {ds.get("TemporalPositionIdentifier") for ds in datasets} - {None}
    if len(temporal) > 1:
        raise VolumeError(f"{name}: {len(temporal)} temporal positions (4D series)")
    orientation = np.array(datasets[0].ImageOrientationPatient, dtype=np.float64)
    for ds in datasets[1:]:
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=float), orientation,
                           atol=_ORIENTATION_TOLERANCE):
            raise VolumeError(f"{name}: mixed image orientations")
    if len({(int(ds.Rows), int(ds.Columns)) for ds in datasets}) > 1:
        raise VolumeError(f"{name}: mixed matrix sizes (Rows, Columns)")
    if len({tuple(round(float(v), 4) for v in ds.PixelSpacing) for ds in datasets}) > 1:
        raise VolumeError(f"{name}: mixed pixel spacings")

    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3:
        raise VolumeError(f"{name}: ImageOrientationPatient is not two orthogonal unit vectors")
    positions = np.array([ds.ImagePositionPatient for ds in datasets], dtype=np.float64)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]

    counts = Counter(np.round(along / _POSITION_TOLERANCE_MM).astype(np.int64).tolist())
    repeats = set(counts.values())
    if repeats != {1}:
        if len(repeats) == 1:
            raise VolumeError(
                f"{name}: {repeats.pop()} images at each slice position (4D series or repeated instances)"
            )
        duplicate = float(along[np.argmin(np.diff(along))])
        raise VolumeError(f"{name}: duplicate slice position at {duplicate:.3f} mm along the normal")
    in_plane = positions[order] @ np.stack([row, column], axis=1)
    pixel_size = min(float(v) for v in datasets[0].PixelSpacing)
    if np.abs(in_plane - in_plane[0]).max() > 0.01 * pixel_size + _POSITION_TOLERANCE_MM:
        raise VolumeError(f"{name}: slice positions do not follow the slice normal (sheared stack)")
    steps = np.diff(along)
    spacing = float(np.median(steps))
    if np.abs(steps - spacing).max() > _SPACING_TOLERANCE * spacing:
        raise VolumeError(
            f"{name}: uneven slice spacing ({steps.min():.3f} to {steps.max():.3f} mm; "
            "missing slices or gaps)"
        )
    return [datasets[index] for index in order]


def slice_affine(sorted_datasets: list[pydicom.Dataset]) -> np.ndarray:
    """The 4x4 voxel-to-LPS affine of a series already sorted by `sort_slices`."""
    first, last = sorted_datasets[0], sorted_datasets[-1]
    orientation = np.array(first.ImageOrientationPatient, dtype=np.float64)
    row, column = orientation[:3], orientation[3:]
    normal = np.cross(row, column)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    origin = np.array(first.ImagePositionPatient, dtype=np.float64)
    extent = (np.array(last.ImagePositionPatient, dtype=np.float64) - origin) @ normal
    affine = np.eye(4)
    affine[:3, 0] = row * column_spacing
    affine[:3, 1] = column * row_spacing
    affine[:3, 2] = normal * extent / (len(sorted_datasets) - 1)
    affine[:3, 3] = origin
    return affine


def series_to_volume(datasets: list[pydicom.Dataset]) -> ImageVolume:
    """Build the float32 volume (rescale slope/intercept applied) of one series.

    The series is single-frame instances or the frames split from one multi-frame instance
    (operators.multiframe). Every frame is decoded strictly (operators.pixel_decoding): a frame
    that fails to decode, decodes to another size or with a decoder warning raises VolumeError
    naming the series and the file, so nothing is built from a series that did not decode cleanly.
    """
    try:
        ordered = sort_slices(datasets)
    except VolumeError as error:
        error.series = error.series or series_label(datasets)
        raise
    slices = [apply_rescale(_decoded(ds, ordered), ds).astype(np.float32).T for ds in ordered]
    first = ordered[0]
    return ImageVolume(
        array=np.stack(slices, axis=-1),
        affine=slice_affine(ordered),
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        series_description=str(first.get("SeriesDescription", "")),
    )


def _decoded(dataset: pydicom.Dataset, series: list[pydicom.Dataset]) -> np.ndarray:
    try:
        return decode_instance(dataset)
    except FrameDecodeError as error:
        label, path = series_label(series), relative_path(dataset)
        source = frame_source(dataset)
        where = f"file {path}" + (f" frame {source[1]}" if source else "")
        raise VolumeError(f"series {label}: {where}: {error}", series=label, file=path) from error


def resample_to_grid(
    volume: ImageVolume,
    target_shape: tuple[int, int, int],
    target_affine: np.ndarray,
    order: int = 1,
    mode: str = "constant",
) -> np.ndarray:
    """Sample `volume` at the voxel centres of a target grid (order 1 linear, 0 nearest).

    Points outside the source volume get 0 (``mode="constant"``) or the value of the nearest edge
    voxel (``mode="nearest"``). Order 0 keeps the input dtype (use it for labels).
    """
    source_from_target = np.linalg.solve(volume.affine, np.asarray(target_affine, dtype=np.float64))
    return ndimage.affine_transform(
        volume.array,
        source_from_target[:3, :3],
        offset=source_from_target[:3, 3],
        output_shape=tuple(int(n) for n in target_shape),
        order=order,
        mode=mode,
        cval=0.0,
    )


def resample_all_to_grid(
    volumes: Sequence[ImageVolume],
    target_shape: tuple[int, int, int],
    target_affine: np.ndarray,
    order: int = 1,
    mode: str = "constant",
) -> list[np.ndarray]:
    """`resample_to_grid` for each volume, run side by side on the CPUs this process may use (scipy's
    interpolation releases the GIL: four 240x240x155 series took half the time on 2 cores)."""
    resample = functools.partial(resample_to_grid, target_shape=target_shape, target_affine=target_affine,
                                 order=order, mode=mode)
    workers = min(len(volumes), len(os.sched_getaffinity(0)))
    if workers <= 1:
        return [resample(volume) for volume in volumes]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="resample") as pool:
        return list(pool.map(resample, volumes))


def isotropic_grid(volume: ImageVolume, spacing_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of a grid with `volume`'s axes, centre and extent at an isotropic spacing."""
    extent = volume.spacing * np.array(volume.shape)
    shape = tuple(max(1, round(float(n))) for n in extent / spacing_mm)
    directions = volume.affine[:3, :3] / volume.spacing
    center = volume.affine @ np.append((np.array(volume.shape) - 1) / 2.0, 1.0)
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing_mm
    affine[:3, 3] = center[:3] - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return shape, affine  # type: ignore[return-value]
