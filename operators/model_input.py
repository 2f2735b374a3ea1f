"""Build the network's 4-channel input: each selected series to a volume, all onto one grid.

The model card's input convention (operators/input_convention.py, steps in operators/input_steps.py)
says what the network was trained on; in this order: rigid registration of every series onto the
convention's target series, optional atlas placement, the model grid over the reference series'
extent in the convention's orientation (the reference series' own axes for a card without one)
at its isotropic spacing, a brain mask from one contrast applied to every channel, normalisation
(inside the brain), crop. Channels follow the card's ``channel_order``. The labels go back onto the
reference series' own voxels (operators/results.py, reorientation.labels_to_native).

Partial coverage (a FLAIR slab, a T2 with a small field of view, series in different planes):
the network only ever saw complete inputs, every channel present wherever the head is, and
zero in all channels outside it (skull-stripped or background). So the input is restricted to
the region that every series covers (each voxel stands for its own extent, so a series covers up
to half a voxel beyond its outer voxel centres, e.g. the outer half of a slab's end slices; there
the nearest voxel's value is taken, never an interpolation against the zero outside the series):
all channels are zeroed outside it, which looks to the
network like the zero background of its training cases, never like a half-empty input. Each
channel is z-scored over its own nonzero voxels within its own coverage (for a series that
covers the whole head this is exactly the training statistic), then the input is cropped to the
covered foreground. Labels are kept only inside the covered region (``valid``).

How much of the head that region holds is measured (`Coverage`): the head is the foreground of
the series on the model grid (Otsu threshold per channel, within that series' coverage, holes
filled; the head, not the brain mask, whether or not brain extraction runs); below the card's
``preprocessing.min_head_coverage`` the log warns and the report says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec
from scipy import ndimage

from operators.errors import StudyError
from operators.input_convention import InputConvention
from operators.input_steps import (
    PreprocessingLog,
    atlas_grid,
    brain_mask_on_grid,
    convention_grid,
    register_series,
    zscore,
)
from operators.model_card import ModelCard, Preprocessing
from operators.reorientation import axis_codes
from operators.series_selection import SeriesSelection
from operators.volume import (
    ImageVolume,
    VolumeError,
    resample_all_to_grid,
    series_to_volume,
    voxel_volume_ml,
)

log = logging.getLogger(__name__)


HEAD_DEFINITION = ("head foreground of the series on the model grid (Otsu threshold per series within its "
                   "field of view, holes filled; no brain extraction)")


@dataclass(frozen=True)
class Coverage:
    """How much of the head every series covers, on the model grid.

    ``head_fraction`` is the part of the head inside the region every series covers (the only
    region segmented); ``by_role`` the part each series covers on its own.
    """

    head_fraction: float
    by_role: dict[str, float]
    head_ml: float
    covered_head_ml: float
    min_head_coverage: float

    @property
    def warning(self) -> str | None:
        """One line for the log and the report when the covered part is below the card's minimum."""
        if self.head_fraction >= self.min_head_coverage:
            return None
        short = sorted(role for role, fraction in self.by_role.items() if fraction < self.min_head_coverage)
        partial = ", ".join(f"{role} {self.by_role[role]:.0%}" for role in short)
        return (f"only {self.head_fraction:.0%} of the head is covered by every series (model card minimum "
                f"{self.min_head_coverage:.0%}; partial: {partial}); nothing is segmented outside the covered "
                f"region, so volumes may be incomplete")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for report.json."""
        return {
            "head_fraction": round(self.head_fraction, 4),
            "by_series": {role: round(value, 4) for role, value in self.by_role.items()},
            "head_ml": round(self.head_ml, 1),
            "covered_head_ml": round(self.covered_head_ml, 1),
            "min_head_coverage": self.min_head_coverage,
            "head_definition": HEAD_DEFINITION,
            "warning": self.warning,
        }


@dataclass
class ModelInput:
    """The prepared input and everything needed to map results back onto the reference series."""

    study_uid: str
    image: np.ndarray  # (C, i, j, k) float32, the cropped part of the model grid
    grid_shape: tuple[int, int, int]  # the full model grid
    grid_affine: np.ndarray
    crop: tuple[slice, slice, slice]  # where `image` lies in the model grid
    valid: np.ndarray  # (i, j, k) bool on `image`'s voxels: inside every series' field of view
    reference: ImageVolume  # the reference series as a volume (its own grid)
    reference_datasets: list[pydicom.Dataset]
    selection: SeriesSelection
    coverage: Coverage | None = None
    preprocessing: PreprocessingLog | None = None


def foreground_box(image: np.ndarray) -> tuple[slice, slice, slice]:
    """Bounding box of voxels where any channel is nonzero (the whole grid if none is)."""
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)  # type: ignore[return-value]
    bounds = []
    for axis in range(3):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(bounds)  # type: ignore[return-value]


def zscore_nonzero(channel: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the nonzero voxels; zero voxels stay 0."""
    mask = channel != 0
    out = np.zeros_like(channel, dtype=np.float32)
    if mask.any():
        values = channel[mask]
        out[mask] = (values - values.mean()) / max(float(values.std()), 1e-8)
    return out


def field_of_view(volume: ImageVolume, grid_shape: tuple[int, int, int], grid_affine: np.ndarray) -> np.ndarray:
    """Grid voxels whose centres lie within the series' voxels (up to half a voxel beyond its outer
    voxel centres: each voxel, a slice for instance, stands for its whole extent)."""
    source_from_grid = np.linalg.solve(volume.affine, np.asarray(grid_affine, dtype=np.float64))
    axes = [np.arange(n, dtype=np.float32) for n in grid_shape]
    inside = np.ones(tuple(grid_shape), dtype=bool)
    tolerance = 1e-3
    for axis, size in enumerate(volume.shape):
        row = source_from_grid[axis].astype(np.float32)
        index = (row[3] + row[0] * axes[0][:, None, None] + row[1] * axes[1][None, :, None]
                 + row[2] * axes[2][None, None, :])
        inside &= (index >= -0.5 - tolerance) & (index <= size - 0.5 + tolerance)
    return inside


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The Otsu threshold of a sample (between-class variance maximised over a histogram up to the
    99.5th percentile; the middle of the maximum where empty bins between the classes tie)."""
    if values.size == 0:
        return 0.0
    high = float(np.percentile(values, 99.5))
    low = float(values.min())
    if high <= low:
        return low
    counts, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight = np.cumsum(counts).astype(np.float64)
    total = weight[-1]
    mean = np.cumsum(counts * centres)
    between = ((mean[-1] * weight / total - mean) ** 2 / np.maximum(weight * (total - weight), 1.0))[:-1]
    best = np.flatnonzero(between >= between.max() * (1.0 - 1e-9))  # empty bins make a plateau: its middle
    return float((centres[best[0]] + centres[best[-1]]) / 2.0)


def head_foreground(channel: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The head as one series shows it: above its Otsu threshold within its field of view, holes filled
    (in 3D, and slice by slice where the head is cut open by the grid or a slab)."""
    if not seen.any():
        return np.zeros_like(seen)
    mask = seen & (channel > otsu_threshold(channel[seen]))
    filled = ndimage.binary_fill_holes(mask)
    for k in range(mask.shape[2]):
        filled[:, :, k] |= ndimage.binary_fill_holes(mask[:, :, k])
    return filled & seen


def measure_coverage(image: np.ndarray, seen: np.ndarray, roles: Sequence[str], voxel_ml: float,
                     min_head_coverage: float, step: int = 2) -> Coverage:
    """How much of the head every series covers (``seen`` (C, i, j, k): each series' field of view).

    Measured on every ``step``-th voxel along each axis (a fraction needs no finer grid).
    """
    sample = (slice(None), *(slice(0, None, step),) * 3)
    image, seen = image[sample], seen[sample]
    voxel_ml *= step**3
    covered = np.all(seen, axis=0)
    head = np.zeros(covered.shape, dtype=bool)
    for channel, fov in zip(image, seen, strict=True):
        head |= head_foreground(channel, fov)
    head_voxels = int(head.sum())

    def fraction(mask: np.ndarray) -> float:
        return float((head & mask).sum()) / head_voxels if head_voxels else 0.0

    return Coverage(
        head_fraction=fraction(covered),
        by_role={role: fraction(fov) for role, fov in zip(roles, seen, strict=True)},
        head_ml=head_voxels * voxel_ml,
        covered_head_ml=float((head & covered).sum()) * voxel_ml,
        min_head_coverage=min_head_coverage,
    )


def preprocess(image: np.ndarray, seen: np.ndarray, settings: Preprocessing, *, normalize: str | None = None,
               brain: np.ndarray | None = None, normalize_within_mask: bool = True,
               ) -> tuple[np.ndarray, tuple[slice, slice, slice], np.ndarray]:
    """Normalise each channel over its own field of view, zero every channel outside the region all
    series cover, crop to the covered foreground (if asked). Returns the input, the crop and the
    covered region on the crop.

    ``normalize`` (default: the card's ``preprocessing.normalize``): ``zscore_nonzero`` per channel
    over its nonzero voxels; ``zscore_crop`` per channel over the whole cropped box, zeros included
    (the reference recipe); ``none``. ``brain`` (a mask on the grid) zeroes every channel outside
    the brain, before the statistics (``normalize_within_mask``) or after them; the crop is then the
    brain's box.
    """
    normalize = settings.normalize if normalize is None else normalize
    image = np.where(seen, image, 0.0).astype(np.float32)
    if brain is not None and normalize_within_mask:
        image[:, ~brain] = 0.0
    if normalize == "zscore_nonzero":
        image = np.stack([zscore_nonzero(channel) for channel in image])
    covered = np.all(seen, axis=0)
    image[:, ~covered] = 0.0
    if brain is not None and not normalize_within_mask:
        image[:, ~brain] = 0.0
    crop = foreground_box(image) if settings.crop_foreground else tuple(slice(0, n) for n in image.shape[1:])
    cropped = image[(slice(None), *crop)]
    if normalize == "zscore_crop":
        everywhere = np.ones(cropped.shape[1:], dtype=bool)
        cropped = np.stack([zscore(channel, everywhere) for channel in cropped])
    return np.ascontiguousarray(cropped, dtype=np.float32), crop, covered[crop]  # type: ignore[return-value]


def _volumes(series: Mapping[str, Sequence[pydicom.Dataset]], roles: Sequence[str],
             selection: SeriesSelection) -> dict[str, ImageVolume]:
    volumes: dict[str, ImageVolume] = {}
    for role in roles:
        try:
            volumes[role] = series_to_volume(list(series[role]))
        except VolumeError as error:
            raise StudyError(selection.study_instance_uid, f"{role} series unusable: {error}",
                             accession=selection.accession_number, series=error.series, file=error.file) from error
    return volumes


def build_model_input(
    series: Mapping[str, Sequence[pydicom.Dataset]],
    selection: SeriesSelection,
    card: ModelCard,
    reference_role: str = "t1c",
    convention: InputConvention | None = None,
) -> ModelInput:
    """Volumes from the selected series, resampled onto the model grid and preprocessed.

    ``convention`` (default: the card's, see operators/input_convention.py) says, in this order:
    register every series onto ``registration.onto``, place the grid on an atlas, the grid's
    orientation and spacing, the brain mask from ``brain_extraction.contrast``, the normalisation.
    The model grid spans the ``reference_role`` series (the SEG's grid).
    """
    study = selection.study_instance_uid
    convention = card.convention if convention is None else convention
    if reference_role not in series:
        raise StudyError(
            study, f"reference role {reference_role!r} is not among the selected series {sorted(series)}",
            accession=selection.accession_number,
        )
    record = PreprocessingLog(convention=convention)
    roles = list(card.channel_order)
    volumes = _volumes(series, roles, selection)
    if convention.registration.enabled:
        volumes = register_series(volumes, convention, study, selection.accession_number, record)
    reference = volumes[reference_role]
    if convention.atlas.enabled:
        grid_shape, grid_affine = atlas_grid(volumes[convention.brain_extraction.contrast], convention, study,
                                             selection.accession_number, record)
    else:
        grid_shape, grid_affine = convention_grid(reference, convention)
    record.grid_shape, record.grid_affine = tuple(grid_shape), grid_affine  # type: ignore[assignment]
    started = time.perf_counter()
    # "nearest" beyond the outer voxel centres: the half-voxel margins take the edge voxels' values
    image = np.stack(resample_all_to_grid([volumes[role] for role in roles], grid_shape, grid_affine, order=1,
                                          mode="nearest"))
    seen = np.stack([field_of_view(volumes[role], grid_shape, grid_affine) for role in roles])
    record.timed("resample", started)
    if not np.all(seen, axis=0).any():
        on_reference = seen[roles.index(reference_role)]
        apart = [role for role, fov in zip(roles, seen, strict=True) if not (fov & on_reference).any()]
        where = f": {', '.join(apart)} entirely outside the {reference_role} series" if apart else ""
        raise StudyError(study, f"the selected series have no region in common{where}",
                         accession=selection.accession_number)
    coverage = measure_coverage(image, seen, roles, voxel_volume_ml(grid_affine),
                                   card.preprocessing.min_head_coverage)
    brain = None
    extraction = convention.brain_extraction
    if extraction.enabled:
        index = roles.index(extraction.contrast)
        brain = brain_mask_on_grid(np.where(seen[index], image[index], 0.0), grid_affine, record)
        if not brain.any():
            raise StudyError(study, f"brain extraction found no brain in the {extraction.contrast} series",
                             accession=selection.accession_number)
    started = time.perf_counter()
    prepared, crop, valid = preprocess(image.astype(np.float32), seen, card.preprocessing,
                                       normalize=convention.normalize, brain=brain,
                                       normalize_within_mask=extraction.normalize_within_mask)
    record.timed("normalize_crop", started)
    if brain is not None:
        record.brain_mask = brain[crop]
    log.info(
        "model grid %s at %.2f mm (orientation %s), input cropped to %s; every series covers %.1f%% of the "
        "head (%s)", grid_shape, convention.spacing_mm, "".join(axis_codes(grid_affine)), prepared.shape[1:],
        100.0 * coverage.head_fraction, ", ".join(f"{r} {v:.1%}" for r, v in coverage.by_role.items()),
    )
    if coverage.warning:
        log.warning("study %s: %s", study, coverage.warning)
    return ModelInput(
        study_uid=study,
        image=prepared,
        grid_shape=tuple(grid_shape),  # type: ignore[arg-type]
        grid_affine=grid_affine,
        crop=crop,
        valid=valid,
        reference=reference,  # its own voxels; registered (when it is not the target): in the target's frame
        reference_datasets=list(series[reference_role]),
        selection=selection,
        coverage=coverage,
        preprocessing=record,
    )


class ModelInputOperator(Operator):
    """Selected series -> ``ModelInput`` (MONAI Deploy operator).

    Inputs ``selected_series`` (role -> DICOMSeries) and ``series_selection``; output ``model_input``.
    """

    def __init__(self, fragment: Fragment, *args: Any, card: ModelCard, reference_role: str,
                 convention: InputConvention | None = None, **kwargs: Any) -> None:
        self.card = card
        self.reference_role = reference_role
        self.convention = convention
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("selected_series")
        spec.input("series_selection")
        spec.output("model_input")

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        selected = op_input.receive("selected_series")
        selection: SeriesSelection = op_input.receive("series_selection")
        log.info("%s", selection.describe())
        datasets = {
            role: [sop.get_native_sop_instance() for sop in dicom_series.get_sop_instances()]
            for role, dicom_series in selected.items()
        }
        model_input = build_model_input(datasets, selection, self.card, self.reference_role, self.convention)
        op_output.emit(model_input, "model_input")
