"""Rigid registration recovers a known patient motion between two contrasts of a synthetic head."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from operators.errors import StudyError
from operators.registration import (
    RegistrationLimits,
    RigidRegistration,
    check_registration,
    pyramid_levels,
    register_rigid,
    to_sitk,
)
from operators.volume import ImageVolume, resample_to_grid
from segmamba.synthetic import CaseConfig
from segmamba.synthetic.phantom import grid_points
from segmamba.synthetic.template import TemplateHead, random_template_head

SPACING_MM = 1.5  # keeps the test CPU-cheap; the accuracy asked for (1 mm, 1 degree) is finer than a voxel


def motion_matrix(rotation_deg: tuple, translation_mm: tuple, centre: np.ndarray) -> np.ndarray:
    rotation = Rotation.from_euler("xyz", rotation_deg, degrees=True).as_matrix()
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre + np.asarray(translation_mm) - rotation @ centre
    return matrix


def scan(head: TemplateHead, contrast: str, shape: tuple, affine: np.ndarray, motion: np.ndarray) -> ImageVolume:
    """The head imaged with one contrast after the patient moved by `motion` (head point p -> motion p)."""
    points = grid_points(shape, affine)
    seen = points @ np.linalg.inv(motion)[:3, :3].T + np.linalg.inv(motion)[:3, 3]
    fields = head.fields(seen)
    image = np.where(fields["head"] >= 0.5, fields[contrast], 0.0).astype(np.float32)
    return ImageVolume(array=image, affine=affine)


def box_grid(box: np.ndarray, spacing: float, offset: float) -> tuple[tuple[int, int, int], np.ndarray]:
    shape = tuple(int(n) for n in np.ceil((box[1] - box[0]) / spacing) + 8)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = box[0] - 4 * spacing + offset
    return shape, affine  # type: ignore[return-value]


@pytest.fixture(scope="module")
def case() -> tuple[TemplateHead, np.ndarray, RigidRegistration]:
    head = random_template_head(7, CaseConfig(tumour_probability=1.0))
    box = head.bounds()
    centre = np.asarray(head.center)
    truth = motion_matrix((3.0, -4.0, 4.5), (3.0, -2.5, 2.0), centre)  # 4.4 mm, 6.9 degrees in all
    t1c = scan(head, "t1c", *box_grid(box, SPACING_MM, 0.0), np.eye(4))
    flair = scan(head, "t2f", *box_grid(box, SPACING_MM, 0.7), truth)
    return head, truth, register_rigid(t1c, flair), t1c, flair


def test_recovers_a_known_motion_across_contrasts(case) -> None:
    head, truth, result, _, _ = case
    assert result.success, result.describe()
    rotation_error = np.degrees(Rotation.from_matrix(result.matrix[:3, :3] @ truth[:3, :3].T).magnitude())
    corners = np.array([[x, y, z] for x in head.bounds()[:, 0] for y in head.bounds()[:, 1]
                        for z in head.bounds()[:, 2]])
    points = np.vstack([np.asarray(head.center)[None], corners])
    error = np.linalg.norm(points @ (result.matrix - truth)[:3, :3].T + (result.matrix - truth)[:3, 3], axis=1)
    print(f"\nFLAIR onto T1c, {SPACING_MM} mm: residual {error[0]:.2f} mm at the head centre, "
          f"{error.max():.2f} mm at worst over the head box corners, {rotation_error:.2f} degrees; "
          f"{result.describe()}")
    assert error[0] <= 1.0 and rotation_error <= 1.0
    assert result.metric_after < result.metric_before


def test_reported_similarity_is_itks_mattes_mi_at_the_start_and_at_the_result(case) -> None:
    """The MI before and after is evaluated without ITK's gradient filters (faster): the values must
    be those of ITK's default evaluation, gradient filters on, at the identity and at the result."""
    _, _, result, t1c, flair = case
    fixed, moving = to_sitk(t1c), to_sitk(flair)  # sampled on the reference: both series are 1.5 mm

    def default_mi(transform: sitk.Transform) -> float:
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetInitialTransform(transform, inPlace=False)
        return float(method.MetricEvaluate(fixed, moving))

    start = sitk.Euler3DTransform()
    start.SetCenter(result.center_mm)
    found = sitk.Euler3DTransform(start)
    found.SetRotation(*np.radians(result.rotation_deg))
    found.SetTranslation(result.translation_mm)
    assert result.sampled_on == "reference"
    assert result.metric_before == pytest.approx(default_mi(start), abs=1e-9)
    assert result.metric_after == pytest.approx(default_mi(found), abs=1e-9)


def test_corrected_series_lands_on_the_reference_anatomy(case) -> None:
    head, _, result, t1c, flair = case
    still = scan(head, "t2f", t1c.shape, t1c.affine, np.eye(4))  # FLAIR had the patient not moved
    inside = still.array > 0
    moved = resample_to_grid(flair, t1c.shape, t1c.affine)
    fixed = resample_to_grid(result.corrected(flair), t1c.shape, t1c.affine)
    before = np.abs(moved - still.array)[inside].mean()
    after = np.abs(fixed - still.array)[inside].mean()
    assert after < 0.35 * before, (before, after)


def test_motion_beyond_the_limits_is_refused_or_warned(case, caplog) -> None:
    result = case[2]
    strict = RegistrationLimits(max_translation_mm=1.0, max_rotation_deg=2.0)
    problems = result.check(strict)
    assert len(problems) == 2 and "limit 1 mm" in problems[0] and "limit 2" in problems[1]
    refused = RigidRegistration(**{**result.__dict__, "success": False, "problems": problems})
    with pytest.raises(StudyError, match=r"registration of #4 'FLAIR'.*moves 4\.\d mm \(limit 1 mm\)"):
        check_registration(refused, "1.2.3", "#4 'FLAIR'")
    with caplog.at_level(logging.WARNING):
        check_registration(refused, "1.2.3", "#4 'FLAIR'", on_failure="warn")
    assert "not accepted" in caplog.text


def test_registration_that_cannot_run_reports_failure() -> None:
    rng = np.random.default_rng(0)
    fixed = ImageVolume(array=rng.random((24, 24, 24), dtype=np.float32), affine=np.eye(4))
    empty = ImageVolume(array=np.zeros((24, 24, 24), np.float32), affine=np.eye(4))
    result = register_rigid(fixed, empty)
    assert not result.success and result.problems


def test_thick_slice_series_is_sampled_and_the_motion_still_recovered() -> None:
    """A 2D FLAIR of 5 mm slices: the metric is sampled on it (interpolating between its slices biases
    mutual information), and the transform reported still maps the reference onto the series."""
    import SimpleITK as sitk

    head = random_template_head(8, CaseConfig(tumour_probability=1.0))
    box = head.bounds()
    centre = np.asarray(head.center)
    truth = motion_matrix((-2.0, 3.0, 1.5), (1.5, 2.5, -2.0), centre)
    t1c = scan(head, "t1c", *box_grid(box, SPACING_MM, 0.0), np.eye(4))
    thick = np.diag([1.2, 1.2, 5.0, 1.0])
    thick[:3, 3] = box[0] - 4.0
    shape = tuple(int(n) for n in np.ceil((box[1] - box[0] + 8.0) / np.array([1.2, 1.2, 5.0])))
    flair = scan(head, "t2f", shape, thick, truth)
    result = register_rigid(t1c, flair)
    assert result.success and result.sampled_on == "series", result.describe()
    error_mm = np.linalg.norm((result.matrix - truth) @ np.append(centre, 1.0))
    error_deg = np.degrees(Rotation.from_matrix(result.matrix[:3, :3] @ truth[:3, :3].T).magnitude())
    print(f"\n5 mm FLAIR onto 1.5 mm T1c: {error_mm:.2f} mm at the head centre, {error_deg:.2f} degrees; "
          f"{result.describe()}")
    assert error_mm <= 1.0 and error_deg <= 1.0
    euler = sitk.Euler3DTransform()  # the reported parameters are the matrix's own
    euler.SetCenter(result.center_mm)
    euler.SetRotation(*np.radians(result.rotation_deg))
    euler.SetTranslation(result.translation_mm)
    rebuilt = np.eye(4)
    rebuilt[:3, :3] = np.array(euler.GetMatrix()).reshape(3, 3)
    rebuilt[:3, 3] = np.array(euler.TransformPoint((0.0, 0.0, 0.0)))
    np.testing.assert_allclose(rebuilt, result.matrix, atol=1e-6)


@pytest.mark.parametrize(("spacing", "shrinks", "sigmas"), [
    ((1.0, 1.0, 1.0), [4, 2], [2.0, 1.0]),          # 1 mm: the 4 and 2 mm levels
    ((0.9, 0.9, 4.0), [4, 2], [2.0, 1.0]),          # a 2D series: by its finest (in-plane) spacing
    ((1.5, 1.5, 1.5), [4, 2, 1], [2.0, 1.0, 0.0]),  # 1.5 mm and coarser: every level
    ((2.5, 2.5, 2.5), [4, 2, 1], [2.0, 1.0, 0.0]),
    ((0.3, 0.3, 0.3), [4], [2.0]),                  # finer than every level: the coarsest still runs
])
def test_pyramid_leaves_out_levels_finer_than_1_5_mm(spacing: tuple, shrinks: list, sigmas: list) -> None:
    volume = ImageVolume(array=np.zeros((8, 8, 8), np.float32), affine=np.diag([*spacing, 1.0]))
    assert pyramid_levels(volume) == (shrinks, sigmas)
