"""The MNI152 template head: determinism, tissue contrasts, lesion labels vs images, grid independence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from segmamba.synthetic import CONTRASTS, CaseConfig, Lesion, TemplateHead, generate_case, random_template_head
from segmamba.synthetic.template import load_template

# Half-size heads with a 9-12 mm lesion: ~100^3 voxels per case.
SMALL = CaseConfig(head_scale=(0.5, 0.55), lesion_radius_mm=(9.0, 12.0), tumour_probability=1.0, margin_mm=3.0,
                   noise_sigma=(0.0, 0.01), blur_sigma_mm=(0.0, 0.0), skull_strip_probability=0.0)


def _coarse_grid(head: TemplateHead, spacing: float = 2.0) -> tuple[tuple[int, int, int], np.ndarray]:
    box = head.bounds()
    shape = tuple(int(v) for v in np.ceil((box[1] - box[0]) / spacing) + 1)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = box[0]
    return shape, affine  # type: ignore[return-value]


def test_template_is_bundled_and_loaded_once() -> None:
    template = load_template()
    assert template is load_template()
    assert template.grey.shape == (197, 233, 189) and template.grey.dtype == np.float32
    assert template.grey.min() >= 0.0 and template.white.max() <= 1.0
    # The intracranial centroid of MNI space lies near RAS (0, -20, 10) mm, i.e. LPS (0, 20, 10).
    assert np.allclose(template.centroid, (0.0, 20.0, 10.0), atol=6.0)


def test_same_seed_same_head_and_case() -> None:
    assert random_template_head(7, SMALL) == random_template_head(7, SMALL)
    assert random_template_head(7, SMALL) != random_template_head(8, SMALL)
    a, b = generate_case(4, SMALL), generate_case(4, SMALL)
    assert a.anatomy == b.anatomy and np.array_equal(a.label, b.label)
    for contrast in CONTRASTS:
        assert np.array_equal(a.images[contrast], b.images[contrast])


def test_tissue_contrasts_are_ordered() -> None:
    head = TemplateHead()
    fields = head.fields(_pull_template_points())
    template = load_template()
    white, grey = template.white[::4, ::4, ::4].ravel() > 0.9, template.grey[::4, ::4, ::4].ravel() > 0.9
    csf = (fields["intracranial"].ravel() > 0.99) & ~(template.white[::4, ::4, ::4].ravel() > 0.05) & ~(
        template.grey[::4, ::4, ::4].ravel() > 0.05)
    assert white.sum() > 100 and grey.sum() > 100 and csf.sum() > 50
    t1n, t2w, t2f = (fields[c].ravel() for c in ("t1n", "t2w", "t2f"))
    assert t1n[white].mean() > t1n[grey].mean() > t1n[csf].mean()
    assert t2w[csf].mean() > t2w[grey].mean() > t2w[white].mean()
    assert t2f[grey].mean() > t2f[white].mean() > t2f[csf].mean()
    # Skull and scalp surround the brain: signal outside the intracranial space, zero far away.
    shell = (fields["head"].ravel() > 0.99) & (fields["intracranial"].ravel() == 0)
    assert shell.sum() > 100 and fields["t1n"].ravel()[fields["head"].ravel() == 0].max() == 0.0


def _pull_template_points() -> np.ndarray:
    """World points of every 4th template voxel for the undeformed head (centre at the origin)."""
    template = load_template()
    index = np.indices(template.grey.shape)[:, ::4, ::4, ::4].reshape(3, -1).T.astype(np.float64)
    voxel_to_lps = np.linalg.inv(template.lps_to_voxel)
    return index @ voxel_to_lps[:3, :3].T + voxel_to_lps[:3, 3] - template.centroid


def test_lesion_labels_match_the_images() -> None:
    case = generate_case(11, SMALL)
    head = case.anatomy
    assert isinstance(head, TemplateHead) and head.lesion is not None
    label, images = case.label, case.images
    counts = np.bincount(label.ravel(), minlength=4)
    assert counts[1] > 0 and counts[2] > 0 and counts[3] > 0
    assert not np.any(label[~case.brain])
    # The tumour volume is the lesion's analytic volume (clipped to the brain, up to its outline).
    volume = 4.0 / 3.0 * np.pi * head.lesion.radius**3
    assert 0.5 * volume < counts[1:].sum() < 1.4 * volume
    t1c, t2f = images["t1c"], images["t2f"]
    oedema_rim = ndimage.binary_dilation(label == 3, iterations=2) & (label == 2)
    assert t1c[label == 3].mean() > 1.5 * t1c[oedema_rim].mean()
    normal_white = (label == 0) & case.brain & (images["t1n"] > np.percentile(images["t1n"][case.brain], 80))
    assert t2f[label == 2].mean() > 1.5 * t2f[normal_white].mean()
    assert images["t1n"][label == 1].mean() < images["t1n"][normal_white].mean()


def test_oblique_sampling_agrees_with_the_grid_render() -> None:
    head = random_template_head(3, SMALL)
    shape, affine = _coarse_grid(head, 1.0)
    grid = head.render(shape, affine)
    rotation = Rotation.from_euler("xyz", (20.0, -15.0, 30.0), degrees=True).as_matrix()
    oblique = np.eye(4)
    oblique[:3, :3] = rotation * 1.7
    centre = np.asarray(head.center)
    oblique[:3, 3] = centre - oblique[:3, :3] @ np.array([20.0, 20.0, 20.0])
    from segmamba.synthetic import grid_points

    points = grid_points((41, 41, 41), oblique)
    sampled = head.sample(points)
    index = ((points - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).reshape(-1, 3).T
    for contrast in CONTRASTS:
        expected = ndimage.map_coordinates(grid[contrast], index, order=1).reshape(sampled[contrast].shape)
        scale = float(grid[contrast].max())
        assert np.median(np.abs(sampled[contrast] - expected)) < 0.02 * scale
        assert np.mean(np.abs(sampled[contrast] - expected)) < 0.05 * scale
    nearest = ndimage.map_coordinates(grid["label"], index, order=0).reshape(sampled["label"].shape)
    lesion = (nearest > 0) | (sampled["label"] > 0)
    assert lesion.sum() > 50 and np.mean(nearest[lesion] == sampled["label"][lesion]) > 0.85


def test_mass_effect_pushes_tissue_away_from_the_lesion() -> None:
    lesion = Lesion(center=(25.0, 0.0, 20.0), radius=15.0, seed=1)
    points = np.array([25.0, 0.0, 20.0]) + np.linspace(0.0, 40.0, 81)[:, None] * np.array([0.0, 0.0, 1.0])
    plain = TemplateHead(lesion=lesion)._pull_back(points.astype(np.float32))
    pushed = TemplateHead(lesion=lesion, mass_effect=0.3)._pull_back(points.astype(np.float32))
    centre = plain[:, :1]
    # Pulling back: a world point near the lesion shows tissue from closer to its centre.
    assert np.all(np.linalg.norm(pushed - centre, axis=0) <= np.linalg.norm(plain - centre, axis=0) + 1e-4)
    shift = np.linalg.norm(pushed - plain, axis=0)
    assert shift[30] > 2.0 and shift[-1] < 0.2  # 15 mm away: pushed by mm; 40 mm away: barely


def test_no_tumour_and_skull_stripped_cases() -> None:
    config = CaseConfig(head_scale=(0.4, 0.42), tumour_probability=0.0, skull_strip_probability=1.0, margin_mm=3.0)
    case = generate_case(2, config)
    assert case.anatomy.lesion is None and not case.label.any() and case.skull_stripped
    for contrast in CONTRASTS:
        assert case.images[contrast][case.brain].max() > 0
        assert not np.any(case.images[contrast][~case.brain])


@pytest.mark.parametrize("seed", [0, 1])
def test_lesions_sit_inside_the_brain(seed: int) -> None:
    head = random_template_head(seed, CaseConfig(tumour_probability=1.0, head_scale=(0.5, 0.55)))
    assert head.lesion is not None
    fields = head.fields(np.asarray(head.lesion.center)[None])
    assert fields["intracranial"][0] == 1.0
