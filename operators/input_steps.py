"""The steps a model card's input convention asks for before the network, and what each did.

In the order operators.model_input runs them: rigid registration of every series onto the
card's ``registration.onto`` series (`register_series`), optional rigid registration of the
reference onto an atlas (`atlas_grid`: nilearn's MNI152 2009 template, a stand-in for the
training atlas), the model grid in the card's orientation and spacing (`convention_grid`), the
brain mask from the card's contrast on that grid (`brain_mask_on_grid`), and the normalisation
(`normalize_channels`). `PreprocessingLog` collects per series transforms, the mask volume and
the seconds per step for report.json.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from operators.brain_extraction import extract_brain
from operators.input_convention import ATLAS_TEMPLATE, InputConvention
from operators.registration import RegistrationLimits, RigidRegistration, check_registration, register_rigid
from operators.reorientation import axis_codes, model_grid
from operators.volume import ImageVolume, isotropic_grid, voxel_volume_ml

log = logging.getLogger(__name__)

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Scanner coordinates are not atlas coordinates: the head may sit anywhere relative to the template,
# so the atlas registration starts from the intensity centroids and is only refused when the
# similarity gets worse.
ATLAS_LIMITS = RegistrationLimits(max_translation_mm=1000.0, max_rotation_deg=180.0)


@dataclass
class PreprocessingLog:
    """What the convention's steps did to one study (report.json ``preprocessing``)."""

    convention: InputConvention
    grid_shape: tuple[int, int, int] = (0, 0, 0)
    grid_affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    registrations: dict[str, dict[str, Any]] = field(default_factory=dict)
    atlas: dict[str, Any] | None = None
    brain_mask_ml: float | None = None
    brain_mask: np.ndarray | None = None  # bool, on the cropped model grid (ModelInput.image's voxels)
    seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, step: str, started: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - started

    def to_dict(self, tumour_fraction_inside_mask: float | None = None) -> dict[str, Any]:
        """JSON-ready form; the fraction of the predicted tumour inside the brain mask when one was used."""
        spacing = np.linalg.norm(self.grid_affine[:3, :3], axis=0)
        entry: dict[str, Any] = {
            "convention": self.convention.to_dict(),
            "grid": {"shape": [int(n) for n in self.grid_shape], "orientation": list(axis_codes(self.grid_affine)),
                     "spacing_mm": [round(float(s), 4) for s in spacing]},
            "registration": self.registrations if self.convention.registration.enabled else None,
            "atlas": self.atlas,
            "brain_extraction": None,
            "seconds": {step: round(seconds, 3) for step, seconds in self.seconds.items()},
        }
        if self.convention.brain_extraction.enabled:
            entry["brain_extraction"] = {
                "method": self.convention.brain_extraction.method,
                "contrast": self.convention.brain_extraction.contrast,
                "mask_volume_ml": round(float(self.brain_mask_ml or 0.0), 1),
                "tumour_fraction_inside_mask": (None if tumour_fraction_inside_mask is None
                                                else round(float(tumour_fraction_inside_mask), 4)),
            }
        return entry


def _series_label(role: str, volume: ImageVolume) -> str:
    return f"{role} '{volume.series_description}' {volume.series_instance_uid}".strip()


def registration_entry(result: RigidRegistration) -> dict[str, Any]:
    """The transform of one series for the report (mm, degrees, Mattes MI before/after)."""
    return {
        "translation_mm": [round(v, 3) for v in result.translation_mm],
        "rotation_deg": [round(v, 3) for v in result.rotation_deg],
        "translation_norm_mm": round(result.translation_norm_mm, 3),
        "rotation_angle_deg": round(result.rotation_angle_deg, 3),
        "mattes_mi_before": round(result.metric_before, 5) if np.isfinite(result.metric_before) else None,
        "mattes_mi_after": round(result.metric_after, 5) if np.isfinite(result.metric_after) else None,
        "matrix": [[round(float(v), 6) for v in row] for row in result.matrix],  # reference point -> series point
        "iterations": result.iterations,
        "sampled_on": result.sampled_on,
        "accepted": result.success,
        "problems": list(result.problems),
        "seconds": round(result.seconds, 2),
    }


def register_series(volumes: Mapping[str, ImageVolume], convention: InputConvention, study_uid: str,
                    accession: str, record: PreprocessingLog) -> dict[str, ImageVolume]:
    """Every series registered onto ``registration.onto``: the corrected volumes (an unaccepted one is
    refused with a StudyError naming it, or kept as aligned by scanner coordinates under ``warn``)."""
    settings = convention.registration
    limits = RegistrationLimits(settings.max_translation_mm, settings.max_rotation_deg)
    fixed = volumes[settings.onto]
    out = dict(volumes)
    for role, moving in volumes.items():
        if role == settings.onto:
            continue
        started = time.perf_counter()
        result = register_rigid(fixed, moving, limits)
        record.timed("registration", started)
        record.registrations[role] = registration_entry(result)
        check_registration(result, study_uid, _series_label(role, moving), settings.on_failure, accession)
        if result.success:
            out[role] = result.corrected(moving)
    return out


@functools.lru_cache(maxsize=1)
def atlas_template() -> ImageVolume:
    """nilearn's MNI152 2009 T1 template at 1 mm (shipped with nilearn: offline), in LPS."""
    from nilearn import datasets

    image = datasets.load_mni152_template(resolution=1)
    return ImageVolume(array=np.asarray(image.get_fdata(), dtype=np.float32),
                       affine=_RAS_TO_LPS @ np.asarray(image.affine, dtype=np.float64),
                       series_description="MNI152 2009 template")


def _centroid(volume: ImageVolume) -> np.ndarray:
    array = np.asarray(volume.array, dtype=np.float64)
    weights = np.clip(array, 0.0, None)
    index = np.array(np.nonzero(weights > 0)).T
    if index.size == 0:
        return (volume.affine @ np.append((np.array(volume.shape) - 1) / 2.0, 1.0))[:3]
    centre = np.average(index, axis=0, weights=weights[weights > 0])
    return (volume.affine @ np.append(centre, 1.0))[:3]


def atlas_grid(subject: ImageVolume, convention: InputConvention, study_uid: str, accession: str,
               record: PreprocessingLog) -> tuple[tuple[int, int, int], np.ndarray]:
    """The model grid as the atlas box in the card's orientation, placed on the subject by a rigid
    registration of the template onto `subject` (Mattes MI, started from the intensity centroids)."""
    started = time.perf_counter()
    template = atlas_template()
    shift = np.eye(4)
    shift[:3, 3] = _centroid(subject) - _centroid(template)  # template point -> subject point, first guess
    moved_subject = replace(subject, affine=np.linalg.solve(shift, subject.affine))
    result = register_rigid(template, moved_subject, ATLAS_LIMITS)
    check_registration(result, study_uid, "atlas (MNI152 2009 template) onto the reference series", "refuse",
                       accession)
    template_to_subject = shift @ result.matrix
    codes = convention.orientation or axis_codes(template.affine)
    shape, affine = model_grid(template, codes, convention.spacing_mm)
    record.atlas = {"template": ATLAS_TEMPLATE, **registration_entry(result),
                    "initial_shift_mm": [round(float(v), 2) for v in shift[:3, 3]]}
    record.timed("atlas", started)
    return shape, template_to_subject @ affine


def convention_grid(reference: ImageVolume, convention: InputConvention) -> tuple[tuple[int, int, int], np.ndarray]:
    """The model grid: the card's orientation over the reference's extent, or (no orientation
    declared) the reference series' own axes, at the convention's spacing."""
    if convention.orientation is None:
        return isotropic_grid(reference, convention.spacing_mm)
    return model_grid(reference, convention.orientation, convention.spacing_mm)


def brain_mask_on_grid(channel: np.ndarray, grid_affine: np.ndarray, record: PreprocessingLog) -> np.ndarray:
    """deepbet's brain mask of one channel (the card's contrast) on the model grid."""
    started = time.perf_counter()
    mask = extract_brain(ImageVolume(array=channel.astype(np.float32), affine=grid_affine,
                                     series_description=record.convention.brain_extraction.contrast)).mask
    record.brain_mask_ml = float(mask.sum()) * voxel_volume_ml(grid_affine)
    record.timed("brain_extraction", started)
    return mask


def zscore(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(x - mean) / std with the statistics over ``where``; every voxel transformed."""
    if not where.any():
        return np.zeros_like(values, dtype=np.float32)
    sample = values[where]
    return ((values - sample.mean()) / max(float(sample.std()), 1e-8)).astype(np.float32)
