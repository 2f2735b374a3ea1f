"""The random case generator's ranges and probabilities (shared by the phantom and the template head)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class CaseConfig:
    """Ranges and probabilities of the random case generator.

    anatomy "mni152" draws a `TemplateHead` (head_scale is then its scale per axis), "phantom"
    the analytic ellipsoid head; rotation_deg, elastic_mm and mass_effect* apply to "mni152" only.
    """

    anatomy: Literal["mni152", "phantom"] = "mni152"
    tumour_probability: float = 0.85
    skull_strip_probability: float = 0.25
    noisy_background_probability: float = 0.5
    head_scale: tuple[float, float] = (0.88, 1.08)
    head_shift_mm: float = 10.0
    lesion_radius_mm: tuple[float, float] = (10.0, 32.0)
    contrast_jitter: float = 0.12
    intensity_scale: tuple[float, float] = (0.5, 2.0)
    bias_amplitude: float = 0.25
    noise_sigma: tuple[float, float] = (0.0, 0.035)
    blur_sigma_mm: tuple[float, float] = (0.0, 1.2)
    margin_mm: float = 6.0
    rotation_deg: float = 10.0
    elastic_mm: tuple[float, float] = (0.0, 4.0)
    mass_effect_probability: float = 0.5
    mass_effect: tuple[float, float] = (0.1, 0.35)
