"""Build the network's 4-channel input: each selected series to a volume, all onto one grid.

The model grid has the reference series' orientation and extent at the model card's isotropic
spacing (1 mm for the reference recipe). Channels follow the card's ``channel_order``; the
volume is cropped to the region where any channel has signal and each channel is z-scored
over its own nonzero voxels (background set to 0), as the card's preprocessing says.

Voxels where any series has no data (outside its field of view after resampling) are marked
invalid; the inference operator leaves them unlabelled, since the network cannot judge a voxel
from an incomplete input (a tilted FLAIR that misses the corners of the T1c grid, say).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from monai.deploy.core import Fragment, Operator, OperatorSpec

from operators.errors import StudyError
from operators.model_card import ModelCard, Preprocessing
from operators.series_selection import SeriesSelection
from operators.volume import ImageVolume, VolumeError, isotropic_grid, resample_to_grid, series_to_volume

log = logging.getLogger(__name__)


@dataclass
class ModelInput:
    """The prepared input and everything needed to map results back onto the reference series."""

    study_uid: str
    image: np.ndarray  # (C, i, j, k) float32, the cropped part of the model grid
    grid_shape: tuple[int, int, int]  # the full model grid
    grid_affine: np.ndarray
    crop: tuple[slice, slice, slice]  # where `image` lies in the model grid
    valid: np.ndarray  # (i, j, k) bool on `image`'s voxels: every series has data there
    reference: ImageVolume  # the reference series as a volume (its own grid)
    reference_datasets: list[pydicom.Dataset]
    selection: SeriesSelection


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


def preprocess(image: np.ndarray, settings: Preprocessing) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Crop to the foreground (if asked) and normalise each channel as the card says."""
    crop = foreground_box(image) if settings.crop_foreground else tuple(slice(0, n) for n in image.shape[1:])
    cropped = image[(slice(None), *crop)]
    if settings.normalize == "zscore_nonzero":
        cropped = np.stack([zscore_nonzero(channel) for channel in cropped])
    return np.ascontiguousarray(cropped, dtype=np.float32), crop  # type: ignore[return-value]


def build_model_input(
    series: Mapping[str, Sequence[pydicom.Dataset]],
    selection: SeriesSelection,
    card: ModelCard,
    reference_role: str = "t1c",
) -> ModelInput:
    """Volumes from the selected series, resampled onto the model grid and preprocessed."""
    study = selection.study_instance_uid
    if reference_role not in series:
        raise StudyError(
            study, f"reference role {reference_role!r} is not among the selected series {sorted(series)}",
            accession=selection.accession_number,
        )
    volumes: dict[str, ImageVolume] = {}
    for role in card.channel_order:
        try:
            volumes[role] = series_to_volume(list(series[role]))
        except VolumeError as error:
            raise StudyError(study, f"{role} series unusable: {error}", accession=selection.accession_number) from error
    reference = volumes[reference_role]
    grid_shape, grid_affine = isotropic_grid(reference, card.preprocessing.spacing_mm)
    image = np.stack([resample_to_grid(volumes[role], grid_shape, grid_affine, order=1) for role in card.channel_order])
    prepared, crop = preprocess(image.astype(np.float32), card.preprocessing)
    valid = np.all(image[(slice(None), *crop)] != 0, axis=0)
    log.info(
        "model grid %s at %.2f mm (orientation of %s), input cropped to %s",
        grid_shape, card.preprocessing.spacing_mm, reference_role, prepared.shape[1:],
    )
    return ModelInput(
        study_uid=study,
        image=prepared,
        grid_shape=tuple(grid_shape),  # type: ignore[arg-type]
        grid_affine=grid_affine,
        crop=crop,
        valid=valid,
        reference=reference,
        reference_datasets=list(series[reference_role]),
        selection=selection,
    )


class ModelInputOperator(Operator):
    """Selected series -> ``ModelInput`` (MONAI Deploy operator).

    Inputs ``selected_series`` (role -> DICOMSeries) and ``series_selection``; output ``model_input``.
    """

    def __init__(self, fragment: Fragment, *args: Any, card: ModelCard, reference_role: str, **kwargs: Any) -> None:
        self.card = card
        self.reference_role = reference_role
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
        op_output.emit(build_model_input(datasets, selection, self.card, self.reference_role), "model_input")
