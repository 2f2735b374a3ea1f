"""The analytic phantom: anatomy, lesion labels, contrasts, determinism, grid independence."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from segmamba.synthetic import CONTRASTS, Lesion, Phantom, Tissue, grid_points

CENTER = np.array([3.0, -12.0, 18.0])


def _ray(direction: tuple[float, float, float], distances: np.ndarray, origin: np.ndarray) -> np.ndarray:
    unit = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    return origin + distances[:, None] * unit


def test_tissue_shells_from_outside_in() -> None:
    phantom = Phantom(center=tuple(CENTER), radii=(75.0, 92.0, 80.0))
    # Along +S from the head centre: white matter, grey matter, CSF, skull, scalp, air.
    tissue = phantom.tissue(_ray((0, 0, 1), np.array([60.0, 64.0, 67.0, 72.0, 78.0, 81.0]), CENTER))
    assert tissue.tolist() == [
        Tissue.WHITE_MATTER, Tissue.GREY_MATTER, Tissue.CSF, Tissue.SKULL, Tissue.SCALP, Tissue.BACKGROUND
    ]
    # Ventricles sit left and right of the midline, not on it.
    lateral = phantom.tissue(CENTER + np.array([[-8.25, -4.6, 9.6], [8.25, -4.6, 9.6], [0.0, -4.6, 9.6]]))
    assert lateral.tolist() == [Tissue.VENTRICLE, Tissue.VENTRICLE, Tissue.WHITE_MATTER]


def test_lesion_labels_are_nested_and_not_spherical() -> None:
    lesion = Lesion(center=(10.0, 0.0, 30.0), radius=25.0, seed=4)
    distances = np.linspace(0.0, 40.0, 401)
    radii_per_direction = []
    for direction in [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (-1, 0, 1), (0, -1, -1)]:
        labels = lesion.labels(_ray(direction, distances, np.array(lesion.center)))
        # From the centre outwards: necrosis, enhancing rim, oedema, nothing, never back.
        changes = [int(labels[0])] + [int(b) for a, b in itertools.pairwise(labels) if a != b]
        assert changes == [1, 3, 2, 0]
        radii_per_direction.append(distances[np.flatnonzero(labels)[-1]])
    radii = np.array(radii_per_direction)
    assert radii.min() > 25.0 * 0.8 and radii.max() < 25.0 * 1.2
    assert radii.max() - radii.min() > 1.0, "outline should be modulated, not a sphere"


def test_lesion_is_clipped_to_the_intracranial_space() -> None:
    phantom = Phantom(lesion=Lesion(center=(0.0, 0.0, 62.0), radius=20.0))
    points = _ray((0, 0, 1), np.linspace(40.0, 90.0, 201), np.zeros(3))
    sampled = phantom.sample(points)
    tissue = phantom.tissue(points)
    assert np.any(Lesion(center=(0.0, 0.0, 62.0), radius=20.0).labels(points)[tissue < Tissue.CSF] > 0)
    assert not np.any(sampled["label"][tissue < Tissue.CSF])
    assert np.any(sampled["label"][tissue >= Tissue.CSF])


def test_contrasts_follow_tissue_and_lesion_appearance() -> None:
    phantom = Phantom(lesion=Lesion(center=(30.0, 0.0, 20.0), radius=20.0, seed=1))
    lesion = phantom.lesion
    assert lesion is not None
    points = _ray((1, 0, 0), np.linspace(-70.0, 70.0, 1401), np.array([0.0, 0.0, 20.0]))
    sampled = phantom.sample(points)
    assert set(sampled) == {*CONTRASTS, "label"}
    label, tissue = sampled["label"], phantom.tissue(points)
    t1n, t1c, t2w, t2f = (sampled[c] for c in CONTRASTS)
    enhancing, necrosis, oedema = label == 3, label == 1, label == 2
    white = (tissue == Tissue.WHITE_MATTER) & (label == 0)
    csf = np.isin(tissue, [Tissue.CSF, Tissue.VENTRICLE]) & (label == 0)
    assert enhancing.any() and necrosis.any() and oedema.any() and white.any() and csf.any()
    assert t1c[enhancing].min() > t1n[enhancing].max()  # enhancement after gadolinium
    assert t1c[enhancing].min() > t1c[white].max()
    assert t1c[necrosis].max() < t1c[white].min()
    assert t2f[label > 0].min() > t2f[label == 0].max()  # FLAIR hyperintensity of the whole tumour
    assert t2w[csf].min() > t2w[white].max() and t2f[csf].max() < t2f[white].min()  # fluid suppression
    assert all(sampled[c].dtype == np.float32 for c in CONTRASTS) and label.dtype == np.uint8


def test_sampling_is_deterministic_and_grid_independent() -> None:
    phantom = Phantom(center=tuple(CENTER), lesion=Lesion(center=(-20.0, 0.0, 30.0), radius=22.0, seed=2))
    coarse = np.diag([2.0, 2.0, 3.0, 1.0])
    coarse[:3, 3] = [-80.0, -100.0, -60.0]
    fine = coarse.copy()
    fine[:3, :3] /= 2.0
    a = phantom.render((80, 100, 50), coarse)
    b = phantom.render((160, 200, 100), fine)
    # Every coarse voxel centre is a fine voxel centre: same anatomy, same labels.
    for key in (*CONTRASTS, "label"):
        np.testing.assert_array_equal(a[key], b[key][::2, ::2, ::2])
    again = Phantom(center=tuple(CENTER), lesion=Lesion(center=(-20.0, 0.0, 30.0), radius=22.0, seed=2))
    np.testing.assert_array_equal(again.render((80, 100, 50), coarse)["label"], a["label"])
    other_seed = Phantom(center=tuple(CENTER), lesion=Lesion(center=(-20.0, 0.0, 30.0), radius=22.0, seed=3))
    assert np.any(other_seed.render((80, 100, 50), coarse)["label"] != a["label"])


def test_grid_points_follow_the_affine_and_sample_keeps_shape() -> None:
    affine = np.array([[0.0, 0.0, -2.0, 10.0], [1.5, 0.0, 0.0, -5.0], [0.0, 1.0, 0.0, 3.0], [0, 0, 0, 1]])
    points = grid_points((4, 5, 6), affine)
    assert points.shape == (4, 5, 6, 3)
    np.testing.assert_allclose(points[3, 2, 1], affine[:3, :3] @ [3, 2, 1] + affine[:3, 3])
    sampled = Phantom().sample(points)
    assert sampled["t1n"].shape == (4, 5, 6)


def test_invalid_lesion_is_refused() -> None:
    with pytest.raises(ValueError):
        Lesion(center=(0.0, 0.0, 0.0), radius=-1.0)
