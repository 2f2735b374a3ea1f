"""Brain-like anatomy from the MNI152 2009 template that nilearn ships (no downloads).

`TemplateHead` has the interface of `Phantom` (`center`, `lesion`, `sample`, `render`): it can be
sampled at any world point (DICOM LPS mm), so every grid, orientation and resolution shows the
same head. Its anatomy is the 1 mm template's grey- and white-matter probability maps; CSF fills
the rest of the intracranial space (a smooth hull of nilearn's brain mask). nilearn's T1 template
is skull-stripped, so skull and scalp are synthetic shells around that hull. Each head is the
template under a random scale/rotation/shift, a smooth random elastic displacement and optional
mass effect (tissue pushed away from the lesion); signals mix per-class intensities by partial
volume (trilinear interpolation of the probability maps). The per-case appearance (`Appearance`:
per-class gain, smooth bias field as a function of world position, intensity scale) belongs to
the head, so a 1 mm NIfTI and an oblique DICOM series of the same head look alike.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from segmamba.synthetic.config import CaseConfig
from segmamba.synthetic.phantom import CONTRASTS, LESION_SIGNAL, TISSUE_SIGNAL, Lesion, grid_points

LPS_RAS = np.diag([-1.0, -1.0, 1.0])
CLASSES: tuple[str, ...] = ("scalp", "skull", "csf", "grey", "white", "necrosis", "oedema", "enhancing")
# Relative signal (0..1) per class and contrast: the phantom's tissue and lesion tables.
_CLASS_SIGNAL: dict[str, np.ndarray] = {
    c: np.array([*TISSUE_SIGNAL[c][1:6], *LESION_SIGNAL[c]], dtype=np.float32) for c in CONTRASTS
}
_DISTANCE_SPACING = 2.0  # mm, grid of the signed distance to the intracranial hull
_DISTANCE_PAD = 24.0  # mm added around the template box for the skull and scalp shells
_ELASTIC_SPACING = 10.0  # mm, control grid of the elastic displacement
_BIAS_RADIUS = 100.0  # mm, the bias polynomial's unit length
_CHUNK = 1 << 21  # points per sampling chunk (bounds memory)


@dataclass(frozen=True)
class _Template:
    """The template's maps on its own voxel grids, and lesion-centre candidates (template LPS mm)."""

    grey: np.ndarray  # (X, Y, Z) float32 probability, 1 mm template voxels
    white: np.ndarray
    lps_to_voxel: np.ndarray  # 4x4: template LPS mm -> template voxel index
    distance: np.ndarray  # signed distance (mm) to the intracranial hull, negative inside
    distance_origin: np.ndarray  # template voxel index of distance[0, 0, 0]
    centroid: np.ndarray  # intracranial centre of mass, LPS mm
    outline: np.ndarray  # (M, 3) LPS points whose hull spans every point within 15 mm of the hull
    candidates: dict[str, tuple[np.ndarray, np.ndarray]]  # class -> (points LPS, depth mm)


@functools.lru_cache(maxsize=1)
def load_template() -> _Template:
    """Load nilearn's bundled 1 mm MNI152 2009 T1-derived maps once per process (no network)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets

        grey_image = datasets.load_mni152_gm_template(resolution=1)
        white_image = datasets.load_mni152_wm_template(resolution=1)
        mask_image = datasets.load_mni152_brain_mask(resolution=1)
    grey = np.asarray(grey_image.get_fdata(), dtype=np.float32)
    white = np.asarray(white_image.get_fdata(), dtype=np.float32)
    mask = np.asarray(mask_image.get_fdata()) > 0.5
    for image in (white_image, mask_image):
        if image.shape != grey.shape or not np.allclose(image.affine, grey_image.affine):
            raise ValueError("nilearn's MNI152 maps do not share one grid")
    # Template voxel -> RAS (nilearn) -> LPS (project), and its inverse.
    voxel_to_lps = np.eye(4)
    voxel_to_lps[:3] = LPS_RAS @ np.asarray(grey_image.affine, dtype=np.float64)[:3]
    lps_to_voxel = np.linalg.inv(voxel_to_lps)
    spacing = np.linalg.norm(voxel_to_lps[:3, :3], axis=0)
    if not np.allclose(spacing, 1.0, atol=1e-3):
        raise ValueError(f"expected the 1 mm template, got voxel size {spacing}")

    # Intracranial hull: the brain mask with every grey/white voxel, smoothed at 2 mm, holes filled.
    intracranial = mask | (grey + white > 0.5)
    step = int(_DISTANCE_SPACING)
    pad = int(_DISTANCE_PAD / _DISTANCE_SPACING)
    even = intracranial[tuple(slice(0, n - n % step) for n in intracranial.shape)].astype(np.float32)
    blocks = even.reshape(even.shape[0] // step, step, even.shape[1] // step, step, even.shape[2] // step, step)
    coarse = np.pad(blocks.mean(axis=(1, 3, 5)), pad)
    hull = ndimage.binary_fill_holes(ndimage.gaussian_filter(coarse, 1.5) > 0.5)
    distance = (ndimage.distance_transform_edt(~hull) - ndimage.distance_transform_edt(hull)) * _DISTANCE_SPACING
    distance = ndimage.gaussian_filter(distance.astype(np.float32), 0.7)
    distance_origin = np.full(3, -pad * step + (step - 1) / 2.0)

    index = np.argwhere(intracranial).mean(axis=0)
    centroid = voxel_to_lps[:3, :3] @ index + voxel_to_lps[:3, 3]
    head = distance < 15.0
    rim = head & ~ndimage.binary_erosion(head)
    outline = (np.argwhere(rim)[::7] * _DISTANCE_SPACING + distance_origin) @ voxel_to_lps[:3, :3].T
    outline += voxel_to_lps[:3, 3]

    candidates: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, probability in (("white", white), ("grey", grey)):
        voxels = np.argwhere(probability[::3, ::3, ::3] > 0.6) * 3.0
        depth = -ndimage.map_coordinates(distance, ((voxels - distance_origin) / _DISTANCE_SPACING).T, order=1)
        candidates[name] = (voxels @ voxel_to_lps[:3, :3].T + voxel_to_lps[:3, 3], depth.astype(np.float64))
    return _Template(grey=grey, white=white, lps_to_voxel=lps_to_voxel, distance=distance,
                     distance_origin=distance_origin, centroid=centroid, outline=outline, candidates=candidates)


def bias_terms(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> list[np.ndarray]:
    """The monomials of a quadratic bias polynomial (phantom cases and template heads share them)."""
    return [x, y, z, x * y, y * z, z * x, x * x, y * y, z * z]


@dataclass(frozen=True)
class Appearance:
    """Per-scan appearance of each contrast (in `CONTRASTS` order).

    gain: multiplicative jitter per class (`CLASSES` order); bias: coefficients of a quadratic
    polynomial of (world - head centre) / 100 mm whose exponential multiplies the signal;
    scale: overall intensity factor.
    """

    gain: tuple[tuple[float, ...], ...] = tuple((1.0,) * len(CLASSES) for _ in CONTRASTS)
    bias: tuple[tuple[float, ...], ...] = tuple((0.0,) * 9 for _ in CONTRASTS)
    scale: tuple[float, ...] = (1.0,) * len(CONTRASTS)


def random_appearance(
    rng: np.random.Generator, jitter: float = 0.12, bias_amplitude: float = 0.25,
    intensity_scale: tuple[float, float] = (0.5, 2.0),
) -> Appearance:
    """Random per-class gain (1 +- jitter), bias field (|log| <= amplitude in 100 mm) and scale."""
    gain = 1.0 + jitter * rng.uniform(-1.0, 1.0, size=(len(CONTRASTS), len(CLASSES)))
    bias = rng.uniform(-1.0, 1.0, size=(len(CONTRASTS), 9))
    bias *= bias_amplitude / np.abs(bias).sum(axis=1, keepdims=True)
    scale = rng.uniform(*intensity_scale, size=len(CONTRASTS))
    return Appearance(gain=tuple(tuple(float(v) for v in row) for row in gain),
                      bias=tuple(tuple(float(v) for v in row) for row in bias),
                      scale=tuple(float(v) for v in scale))


@dataclass(frozen=True)
class TemplateHead:
    """The MNI152 head mapped to world: p = center + R(rotation) diag(scale) (q - template centroid).

    elastic_mm/elastic_seed: smooth random displacement (max per axis, template mm); mass_effect:
    fraction (0..~0.4) by which tissue near the lesion is pushed outwards; skull_mm/scalp_mm:
    shell thicknesses (template mm).
    """

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    elastic_mm: float = 0.0
    elastic_seed: int = 0
    mass_effect: float = 0.0
    skull_mm: float = 6.0
    scalp_mm: float = 5.0
    lesion: Lesion | None = None
    appearance: Appearance = Appearance()
    _elastic: np.ndarray = field(init=False, repr=False, compare=False)
    _world_to_voxel: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        template = load_template()
        linear = self._linear()
        world_to_lps = np.eye(4)  # world -> template LPS
        world_to_lps[:3, :3] = np.linalg.inv(linear)
        world_to_lps[:3, 3] = template.centroid - world_to_lps[:3, :3] @ np.asarray(self.center)
        object.__setattr__(self, "_world_to_voxel", template.lps_to_voxel @ world_to_lps)
        shape = np.ceil(np.array(template.grey.shape) / _ELASTIC_SPACING).astype(int) + 3
        field_ = np.zeros((3, *shape), dtype=np.float32)
        if self.elastic_mm > 0:
            noise = np.random.default_rng(self.elastic_seed).normal(size=field_.shape)
            smooth = np.stack([ndimage.gaussian_filter(n, 2.0, mode="wrap") for n in noise])
            smooth *= self.elastic_mm / np.abs(smooth).max(axis=(1, 2, 3), keepdims=True)
            field_ = smooth.astype(np.float32)
        object.__setattr__(self, "_elastic", field_)

    def _linear(self) -> np.ndarray:
        rotation = Rotation.from_euler("xyz", self.rotation_deg, degrees=True).as_matrix()
        return rotation @ np.diag(self.scale)

    def to_world(self, template_lps: np.ndarray) -> np.ndarray:
        """World position of template LPS points (..., 3), including the elastic displacement (approx.)."""
        template = load_template()
        q = np.asarray(template_lps, dtype=np.float64)
        voxel = q @ template.lps_to_voxel[:3, :3].T + template.lps_to_voxel[:3, 3]
        displacement = self._displacement(voxel.reshape(-1, 3).T.astype(np.float32)).T.reshape(q.shape)
        voxel_to_lps = np.linalg.inv(template.lps_to_voxel)[:3, :3]
        q = q - displacement @ voxel_to_lps.T
        return (q - template.centroid) @ self._linear().T + np.asarray(self.center)

    def bounds(self) -> np.ndarray:
        """(2, 3) world box (LPS mm) that holds the whole head."""
        template = load_template()
        world = (template.outline - template.centroid) @ self._linear().T + np.asarray(self.center)
        slack = self.elastic_mm * max(self.scale) + _DISTANCE_SPACING
        return np.array([world.min(axis=0) - slack, world.max(axis=0) + slack])

    def _displacement(self, voxel: np.ndarray) -> np.ndarray:
        """Elastic displacement (3, N), template voxels, at template voxel positions (3, N)."""
        if self.elastic_mm <= 0:
            return np.zeros_like(voxel)
        coarse = voxel / np.float32(_ELASTIC_SPACING) + np.float32(1.0)
        return np.stack([ndimage.map_coordinates(f, coarse, order=1, mode="nearest", output=np.float32)
                         for f in self._elastic])

    def _pull_back(self, points: np.ndarray) -> np.ndarray:
        """Template voxel positions (3, N) of world points (N, 3), before the elastic displacement."""
        if self.lesion is not None and self.mass_effect > 0:
            centre = np.asarray(self.lesion.center, dtype=np.float32)
            offset = points - centre
            width = np.float32(1.2 * self.lesion.radius)
            r2 = np.einsum("ij,ij->i", offset, offset) / (width * width)
            points = centre + offset * (1.0 - np.float32(self.mass_effect) * np.exp(-r2))[:, None]
        m = self._world_to_voxel.astype(np.float32)
        return m[:3, :3] @ points.T + m[:3, 3:4]

    def _distance(self, voxel: np.ndarray) -> np.ndarray:
        template = load_template()
        coarse = (voxel - template.distance_origin[:, None].astype(np.float32)) / np.float32(_DISTANCE_SPACING)
        return ndimage.map_coordinates(template.distance, coarse, order=1, mode="nearest", output=np.float32)

    def _fields(self, points64: np.ndarray) -> dict[str, np.ndarray]:
        template = load_template()
        points = points64.astype(np.float32)
        n = len(points)
        result: dict[str, np.ndarray] = {k: np.zeros(n, dtype=np.float32) for k in (*CONTRASTS, "intracranial", "head")}
        result["label"] = np.zeros(n, dtype=np.uint8)
        voxel = self._pull_back(points)
        # Only points that may lie in the head (the displacement is at most elastic_mm) need the rest.
        shell = np.float32(self.skull_mm + self.scalp_mm + self.elastic_mm + 1.0)
        near = np.flatnonzero(self._distance(voxel) < shell)
        points, points64, voxel = points[near], points64[near], voxel[:, near]
        voxel = voxel + self._displacement(voxel)
        distance = self._distance(voxel)

        def outside(d: np.ndarray) -> np.ndarray:
            return np.clip(d + np.float32(0.5), 0.0, 1.0)

        intracranial = 1.0 - outside(distance)
        in_skull = 1.0 - outside(distance - np.float32(self.skull_mm))
        head = 1.0 - outside(distance - np.float32(self.skull_mm + self.scalp_mm))
        grey, white = np.zeros_like(distance), np.zeros_like(distance)
        brain = np.flatnonzero(intracranial > 0)
        for out, probability in ((grey, template.grey), (white, template.white)):
            out[brain] = ndimage.map_coordinates(probability, voxel[:, brain], order=1, output=np.float32)
        grey, white = grey * intracranial, white * intracranial
        fractions = [head - in_skull, in_skull - intracranial, np.maximum(intracranial - grey - white, 0.0),
                     grey, white]
        label = np.zeros(len(points), dtype=np.uint8)
        if self.lesion is not None:
            offset = points - np.asarray(self.lesion.center, dtype=np.float32)
            reach = np.float32(self.lesion.radius * (1.0 + self.lesion.irregularity) + 1.0)
            inside = np.flatnonzero((np.einsum("ij,ij->i", offset, offset) < reach * reach) & (intracranial >= 0.5))
            label[inside] = self.lesion.labels(points64[inside])
        relative = (points - np.asarray(self.center, dtype=np.float32)) / np.float32(_BIAS_RADIUS)
        terms = bias_terms(relative[:, 0], relative[:, 1], relative[:, 2])
        result["label"][near], result["intracranial"][near], result["head"][near] = label, intracranial, head
        for c, contrast in enumerate(CONTRASTS):
            signal_of = _CLASS_SIGNAL[contrast] * np.asarray(self.appearance.gain[c], dtype=np.float32)
            signal = sum(np.float32(s) * f for s, f in zip(signal_of[:5], fractions, strict=True))
            if self.lesion is not None:
                signal = np.where(label > 0, np.concatenate([[0.0], signal_of[5:]]).astype(np.float32)[label], signal)
            log_bias = sum(np.float32(b) * t for b, t in zip(self.appearance.bias[c], terms, strict=True))
            result[contrast][near] = signal * np.exp(log_bias) * np.float32(self.appearance.scale[c])
        return result

    def fields(self, points_lps: np.ndarray) -> dict[str, np.ndarray]:
        """`sample` plus the intracranial and whole-head fractions ('intracranial', 'head', 0..1)."""
        points = np.asarray(points_lps, dtype=np.float64)
        flat = points.reshape(-1, 3)
        parts = [self._fields(flat[start:start + _CHUNK]) for start in range(0, len(flat), _CHUNK)] or [
            self._fields(flat)]
        return {k: np.concatenate([p[k] for p in parts]).reshape(points.shape[:-1]) for k in parts[0]}

    def sample(self, points_lps: np.ndarray) -> dict[str, np.ndarray]:
        """Signal of each contrast (float32) and `label` (uint8 BraTS) at world points (..., 3)."""
        fields = self.fields(points_lps)
        return {k: fields[k] for k in (*CONTRASTS, "label")}

    def render(self, shape: tuple[int, int, int], affine: np.ndarray) -> dict[str, np.ndarray]:
        """`sample` at the voxel centres of a grid (arrays indexed [i, j, k])."""
        return self.sample(grid_points(shape, affine))

    def render_fields(self, shape: tuple[int, int, int], affine: np.ndarray) -> dict[str, np.ndarray]:
        """`fields` at the voxel centres of a grid, built slab by slab (bounded memory)."""
        keys = (*CONTRASTS, "label", "intracranial", "head")
        out = {k: np.empty(shape, dtype=np.uint8 if k == "label" else np.float32) for k in keys}
        slab = max(1, _CHUNK // (shape[1] * shape[2]))
        for start in range(0, shape[0], slab):
            stop = min(shape[0], start + slab)
            sub = np.array(affine, dtype=np.float64)
            sub[:3, 3] = sub[:3, :3] @ [start, 0, 0] + sub[:3, 3]
            part = self.fields(grid_points((stop - start, shape[1], shape[2]), sub))
            for k in keys:
                out[k][start:stop] = part[k]
        return out


def random_template_head(rng: np.random.Generator | int, config: CaseConfig | None = None) -> TemplateHead:
    """A template head with random shape, pose, appearance and (with tumour_probability) a lesion."""
    config = config or CaseConfig()
    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    template = load_template()
    scale = rng.uniform(*config.head_scale, size=3)
    rotation = rng.uniform(-config.rotation_deg, config.rotation_deg, size=3)
    center = rng.uniform(-config.head_shift_mm, config.head_shift_mm, size=3)
    elastic = float(rng.uniform(*config.elastic_mm))
    elastic_seed = int(rng.integers(0, 2**31 - 1))
    skull, scalp = (float(v) for v in rng.uniform((4.5, 3.5), (7.5, 7.0)))
    appearance = random_appearance(rng, config.contrast_jitter, config.bias_amplitude, config.intensity_scale)
    head = TemplateHead(center=_triple(center), scale=_triple(scale), rotation_deg=_triple(rotation),
                        elastic_mm=elastic, elastic_seed=elastic_seed, skull_mm=skull, scalp_mm=scalp,
                        appearance=appearance)
    if rng.random() >= config.tumour_probability:
        return head
    radius = float(rng.uniform(*config.lesion_radius_mm))
    points, depth = template.candidates["white" if rng.random() < 0.85 else "grey"]
    needed = (0.5 * radius + 3.0) / float(scale.min())
    deep = np.flatnonzero(depth >= needed)
    chosen = int(rng.choice(deep)) if len(deep) else int(np.argmax(depth))
    site = points[chosen] + rng.uniform(-1.5, 1.5, size=3)
    lesion = Lesion(
        center=_triple(head.to_world(site)),
        radius=radius,
        core_fraction=float(rng.uniform(0.4, 0.75)),
        necrosis_fraction=float(rng.uniform(0.25, 0.7)),
        irregularity=float(rng.uniform(0.05, 0.3)),
        seed=int(rng.integers(0, 2**31 - 1)),
    )
    mass_effect = float(rng.uniform(*config.mass_effect)) if rng.random() < config.mass_effect_probability else 0.0
    return dataclasses.replace(head, lesion=lesion, mass_effect=mass_effect)


def _triple(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))
