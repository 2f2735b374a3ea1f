"""Random BraTS-like cases from a seed, and a writer for the BraTS 2023 NIfTI layout.

Each case is an anatomy with an optional random `Lesion` (position inside the brain, size,
shape, inner structure): by default a `TemplateHead` (MNI152 anatomy, randomly deformed, with its
own per-scan appearance), or the analytic `Phantom` with random head size/position. It is
rendered on a 1 mm grid with per-contrast random tissue contrast, intensity scale, smooth
multiplicative bias field, partial-volume blur and noise (zero or Rician background), optionally
skull-stripped. The same seed always gives the same case, bit for bit.

Arrays are indexed [i, j, k] on a grid whose affine maps voxel indices to LPS mm (the project's
convention). NIfTI stores RAS world coordinates, so the written affine is diag(-1, -1, 1) @ LPS
affine (BraTS files have this same voxel layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from segmamba.synthetic.config import CaseConfig
from segmamba.synthetic.phantom import CONTRASTS, LESION_SIGNAL, TISSUE_SIGNAL, Lesion, Phantom, Tissue, grid_points
from segmamba.synthetic.template import TemplateHead, bias_terms, random_template_head

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
BRATS_SUFFIXES: tuple[str, ...] = (*CONTRASTS, "seg")
INTENSITY_SCALE = 1000.0  # full signal (1.0) -> stored value before the per-scan random scale


@dataclass(frozen=True)
class SyntheticCase:
    """One rendered case: contrasts (float32), BraTS label map (uint8), the LPS affine, its anatomy
    and the intracranial mask (bool) of the grid."""

    name: str
    seed: int
    images: dict[str, np.ndarray]
    label: np.ndarray
    affine_lps: np.ndarray
    anatomy: Phantom | TemplateHead
    skull_stripped: bool
    brain: np.ndarray

    @property
    def affine_ras(self) -> np.ndarray:
        """The NIfTI (RAS) affine of the same grid."""
        return LPS_TO_RAS @ self.affine_lps


def case_name(seed: int) -> str:
    """BraTS-like case identifier of a seed."""
    return f"SYN-{seed:05d}-000"


def random_phantom(rng: np.random.Generator, config: CaseConfig = CaseConfig()) -> Phantom:
    """A phantom with random head size/position and (with tumour_probability) a random lesion."""
    radii = np.array(Phantom().radii) * rng.uniform(*config.head_scale, size=3)
    center = rng.uniform(-config.head_shift_mm, config.head_shift_mm, size=3)
    lesion = None
    if rng.random() < config.tumour_probability:
        radius = float(rng.uniform(*config.lesion_radius_mm))
        brain = radii - 18.0  # white-matter ellipsoid
        # Uniform direction, radial fraction keeping the lesion centre well inside the brain.
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        reach = np.clip(1.0 - (radius * 0.5) / brain.min(), 0.2, 0.75)
        offset = direction * brain * reach * rng.uniform(0.0, 1.0) ** 0.5
        lesion = Lesion(
            center=tuple(float(v) for v in center + offset),
            radius=radius,
            core_fraction=float(rng.uniform(0.4, 0.75)),
            necrosis_fraction=float(rng.uniform(0.25, 0.7)),
            irregularity=float(rng.uniform(0.05, 0.3)),
            seed=int(rng.integers(0, 2**31 - 1)),
        )
    return Phantom(center=tuple(float(v) for v in center), radii=tuple(float(v) for v in radii), lesion=lesion)


def _grid(box: np.ndarray, rng: np.random.Generator, margin_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """1 mm axis-aligned grid (i -> L, j -> P, k -> S) covering a (2, 3) LPS box, slightly off-centre."""
    shape = tuple(int(v) for v in np.ceil(box[1] - box[0] + 2.0 * margin_mm))
    grid_center = box.mean(axis=0) + rng.uniform(-margin_mm / 2, margin_mm / 2, size=3)
    affine = np.eye(4)
    affine[:3, 3] = grid_center - (np.asarray(shape) - 1) / 2.0
    return shape, affine  # type: ignore[return-value]


def _bias_field(shape: tuple[int, int, int], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial), within exp(+-amplitude)."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = bias_terms(x, y, z)
    coefficients = rng.uniform(-1.0, 1.0, size=len(terms))
    coefficients *= amplitude / np.abs(coefficients).sum()
    log_field = sum(float(c) * t for c, t in zip(coefficients, terms, strict=True))
    return np.exp(np.broadcast_to(log_field, shape)).astype(np.float32)


def generate_case(seed: int, config: CaseConfig = CaseConfig(), name: str | None = None) -> SyntheticCase:
    """The case of `seed`: deterministic, independent of any other case."""
    if config.anatomy == "mni152":
        return _template_case(seed, config, name)
    if config.anatomy != "phantom":
        raise ValueError(f"unknown anatomy {config.anatomy!r}")
    rng = np.random.default_rng(seed)
    phantom = random_phantom(rng, config)
    center, radii = np.asarray(phantom.center), np.asarray(phantom.radii)
    shape, affine = _grid(np.array([center - radii, center + radii]), rng, config.margin_mm)
    points = grid_points(shape, affine)
    tissue = phantom.tissue(points)
    label = np.zeros(shape, dtype=np.uint8)
    if phantom.lesion is not None:
        label = np.where(tissue >= Tissue.CSF, phantom.lesion.labels(points), 0).astype(np.uint8)
    del points
    skull_stripped = bool(rng.random() < config.skull_strip_probability)
    noisy_background = bool(rng.random() < config.noisy_background_probability)
    head = tissue >= (Tissue.CSF if skull_stripped else Tissue.SCALP)
    images: dict[str, np.ndarray] = {}
    for contrast in CONTRASTS:
        jitter = 1.0 + config.contrast_jitter * rng.uniform(-1.0, 1.0, size=7 + 3)
        tissue_signal = np.asarray(TISSUE_SIGNAL[contrast], dtype=np.float32) * jitter[:7].astype(np.float32)
        lesion_signal = np.asarray((0.0, *LESION_SIGNAL[contrast]), dtype=np.float32)
        lesion_signal[1:] *= jitter[7:].astype(np.float32)
        signal = np.where(label > 0, lesion_signal[label], tissue_signal[tissue]).astype(np.float32)
        signal *= _bias_field(shape, rng, config.bias_amplitude)
        signal[~head] = 0.0
        sigma = rng.uniform(*config.blur_sigma_mm, size=3)
        if sigma.max() > 0.05:
            signal = ndimage.gaussian_filter(signal, sigma=sigma, mode="constant", truncate=3.0)
        noise = float(rng.uniform(*config.noise_sigma))
        if noisy_background:
            real = signal + rng.normal(0.0, noise, size=shape).astype(np.float32)
            imaginary = rng.normal(0.0, noise, size=shape).astype(np.float32)
            signal = np.sqrt(real * real + imaginary * imaginary)
        else:
            signal = np.where(head, np.abs(signal + rng.normal(0.0, noise, size=shape).astype(np.float32)), 0.0)
        scale = INTENSITY_SCALE * float(rng.uniform(*config.intensity_scale))
        images[contrast] = (signal * scale).astype(np.float32)
    return SyntheticCase(
        name=name or case_name(seed), seed=seed, images=images, label=label, affine_lps=affine, anatomy=phantom,
        skull_stripped=skull_stripped, brain=tissue >= Tissue.CSF,
    )


def _template_case(seed: int, config: CaseConfig, name: str | None) -> SyntheticCase:
    """A `TemplateHead` case: the head carries contrast, bias and scale; the scan adds blur and noise."""
    rng = np.random.default_rng(seed)
    head = random_template_head(rng, config)
    shape, affine = _grid(head.bounds(), rng, config.margin_mm)
    fields = head.render_fields(shape, affine)
    brain = fields["intracranial"] >= 0.5
    skull_stripped = bool(rng.random() < config.skull_strip_probability)
    noisy_background = bool(rng.random() < config.noisy_background_probability) and not skull_stripped
    inside = brain if skull_stripped else fields["head"] >= 0.5
    images: dict[str, np.ndarray] = {}
    for contrast in CONTRASTS:
        signal = np.where(inside, fields.pop(contrast), np.float32(0.0))
        sigma = rng.uniform(*config.blur_sigma_mm, size=3)
        if sigma.max() > 0.05:
            signal = ndimage.gaussian_filter(signal, sigma=sigma, mode="constant", truncate=3.0)
        noise = np.float32(rng.uniform(*config.noise_sigma))
        real = signal + noise * rng.standard_normal(size=shape, dtype=np.float32)
        if noisy_background:
            imaginary = noise * rng.standard_normal(size=shape, dtype=np.float32)
            signal = np.sqrt(real * real + imaginary * imaginary)
        else:
            signal = np.where(inside, np.abs(real), np.float32(0.0))
        images[contrast] = signal * np.float32(INTENSITY_SCALE)
    label = np.where(brain, fields["label"], 0).astype(np.uint8)
    return SyntheticCase(
        name=name or case_name(seed), seed=seed, images=images, label=label, affine_lps=affine, anatomy=head,
        skull_stripped=skull_stripped, brain=brain,
    )


def write_brats_case(case: SyntheticCase, out_dir: Path) -> Path:
    """Write `<out_dir>/<name>/<name>-{t1n,t1c,t2w,t2f,seg}.nii.gz` (int16 images, uint8 seg)."""
    import nibabel as nib

    folder = Path(out_dir) / case.name
    folder.mkdir(parents=True, exist_ok=True)
    volumes = {c: np.clip(np.rint(case.images[c]), 0, np.iinfo(np.int16).max).astype(np.int16) for c in CONTRASTS}
    volumes["seg"] = case.label
    for suffix in BRATS_SUFFIXES:
        image = nib.Nifti1Image(volumes[suffix], case.affine_ras)
        image.header.set_xyzt_units("mm", "sec")
        image.set_qform(case.affine_ras, code=1)
        image.set_sform(case.affine_ras, code=1)
        nib.save(image, folder / f"{case.name}-{suffix}.nii.gz")
    return folder


def _write_one(job: tuple[int, str, CaseConfig]) -> str:
    seed, out, config = job
    return str(write_brats_case(generate_case(seed, config), Path(out)))


def write_brats_dataset(
    out_dir: Path, cases: int, seed: int, config: CaseConfig = CaseConfig(), workers: int = 1
) -> list[Path]:
    """Write `cases` cases with seeds seed, seed+1, ... (parallel over `workers` processes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(seed + n, str(out_dir), config) for n in range(cases)]
    if workers <= 1:
        return [Path(_write_one(job)) for job in jobs]
    from multiprocessing import get_context

    with get_context("spawn").Pool(workers) as pool:
        return [Path(p) for p in pool.map(_write_one, jobs)]
