"""deepbet brain masks on synthetic heads with skull and scalp, with a lesion at the brain's edge."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from operators.brain_extraction import apply_mask, extract_brain, fraction_inside
from operators.volume import ImageVolume
from segmamba.synthetic import CaseConfig
from segmamba.synthetic.phantom import Lesion
from segmamba.synthetic.template import TemplateHead, load_template, random_template_head


def edge_lesion_head(seed: int) -> TemplateHead:
    """A template head whose 14 mm lesion is centred in cortex 4-7 mm under the brain's surface."""
    head = random_template_head(seed, CaseConfig(tumour_probability=1.0))
    points, depth = load_template().candidates["grey"]
    near_surface = np.flatnonzero((depth > 4.0) & (depth < 7.0))
    site = points[int(np.random.default_rng(seed).choice(near_surface))]
    lesion = Lesion(center=tuple(float(v) for v in head.to_world(site)), radius=14.0, core_fraction=0.6,
                    necrosis_fraction=0.5, irregularity=0.1, seed=seed)
    return dataclasses.replace(head, lesion=lesion)


@pytest.fixture(scope="module")
def head_scan() -> tuple[ImageVolume, np.ndarray, np.ndarray]:
    """T1 (skull and scalp kept) on a 1 mm axial grid, the generator's brain mask and labels."""
    head = edge_lesion_head(7)
    box = head.bounds()
    shape = tuple(int(n) for n in np.ceil(box[1] - box[0]) + 12)
    affine = np.eye(4)
    affine[:3, 3] = box[0] - 6.0
    fields = head.render_fields(shape, affine)  # type: ignore[arg-type]
    brain = fields["intracranial"] >= 0.5
    labels = np.where(brain, fields["label"], 0)
    t1 = np.where(fields["head"] >= 0.5, fields["t1n"], 0.0).astype(np.float32)
    return ImageVolume(array=t1, affine=affine), brain, labels


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_brain_mask_matches_the_generator_and_keeps_an_edge_lesion(head_scan) -> None:
    t1, brain, labels = head_scan
    result = extract_brain(t1)
    inside = fraction_inside(result.mask, labels)
    score = dice(result.mask, brain)
    beyond_ml = (result.mask & (ndimage.distance_transform_edt(~brain) > 3.0)).sum() / 1000
    print(f"\n{beyond_ml:.1f} mL of the mask > 3 mm outside the brain")
    print(f"\ndeepbet on a 1 mm T1 with skull: Dice {score:.4f}, tumour inside {inside:.4f} "
          f"({int((labels > 0).sum())} voxels), {result.seconds:.1f} s, {result.volume_ml:.0f} mL "
          f"(truth {brain.sum() / 1000:.0f} mL)")
    assert result.mask.shape == t1.shape and result.mask.dtype == bool
    assert score >= 0.95
    assert inside >= 0.99
    # Skull and scalp left out: hardly any of the mask lies more than 3 mm outside the brain.
    beyond = ndimage.distance_transform_edt(~brain) > 3.0
    assert (result.mask & beyond).sum() <= 0.002 * brain.sum()
    stripped = apply_mask(t1.array, result.mask)
    assert stripped[~result.mask].max() == 0 and np.array_equal(stripped[result.mask], t1.array[result.mask])


def test_thick_slice_series_gets_its_mask_on_its_own_grid(head_scan) -> None:
    t1, brain, _ = head_scan
    # Every third slice: a 1 x 1 x 3 mm series, sent to the network on a 1 mm grid and mapped back.
    thick = ImageVolume(array=np.ascontiguousarray(t1.array[:, :, ::3]), affine=t1.affine @ np.diag([1, 1, 3, 1]))
    result = extract_brain(thick, dilate_mm=2.0)
    assert result.mask.shape == thick.shape
    assert dice(result.mask, brain[:, :, ::3]) >= 0.9
    assert result.mask.sum() > brain[:, :, ::3].sum()  # the 2 mm margin reaches past the brain


def test_fraction_inside_counts_tumour_voxels() -> None:
    mask = np.zeros((4, 4, 4), bool)
    mask[:2] = True
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1:3, 0, 0] = (1, 3)
    assert fraction_inside(mask, labels) == 0.5
    assert fraction_inside(mask, np.zeros_like(labels)) == 1.0
