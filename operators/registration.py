"""Rigid (6-DOF) co-registration of a series onto the reference series by mutual information.

SimpleITK (ITK's registration framework) does the work: Mattes mutual information (works across
contrasts, e.g. FLAIR onto T1c), a pyramid (shrink 4/2/1, smoothing 2/1/0 mm; levels finer than 1.5
mm left out, `pyramid_levels`), regular-step gradient descent on an Euler3D transform centred on the
reference series, started from the scanner coordinates (identity: the patient moves little between
series). SimpleITK was chosen over itk-elastix and ANTsPy because it is one self-contained wheel,
already the library the reference recipe reads its data with, exposes the metric value before and
after, and runs deterministically with a fixed sampling seed; ANTsPy (what the BraTS toolkits use)
is a much larger install for the same rigid MI registration.

Direction: ITK samples the metric on the fixed image and interpolates the moving one. Interpolating
a thick-slice 2D series (T2, FLAIR: 4-6 mm) between its slices biases mutual information towards
grid-aligned positions, so the coarser of the two series (larger voxel volume) is sampled and the
finer one interpolated; when that is the series rather than the reference, the transform is
inverted afterwards (``sampled_on``); a run that ends below the start's similarity is done again
sampled on the other series before the registration is refused. On the evaluation's sagittal
studies this took a 2D T2 from a refusal (1.3 mm off, MI worse than the start) to 0.03 mm / 0.06
degrees of the applied motion.

Geometry: ``matrix`` maps a point of the reference (fixed) series to the point of the moving
series that shows the same anatomy, in LPS mm (``x_moving = matrix @ x_fixed``). The registered
series is the moving volume with a corrected affine (`RigidRegistration.corrected`), so the
model-input step resamples it once, straight onto the model grid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from operators.errors import StudyError
from operators.volume import ImageVolume

log = logging.getLogger(__name__)


PYRAMID = ((4, 2.0), (2, 1.0), (1, 0.0))  # (shrink factor, Gaussian sigma in mm), coarse to fine
FINEST_LEVEL_MM = 1.5  # levels whose voxels would be finer than this are left out


def pyramid_levels(fixed: ImageVolume) -> tuple[list[int], list[float]]:
    """Shrink factors and smoothing sigmas (mm) of the pyramid levels used for `fixed`.

    A level finer than FINEST_LEVEL_MM is left out (the coarsest is always kept): on 1 mm heads with a
    4 mm-slice FLAIR the 1 mm level cost most of the time for residuals that stayed <= 0.1 mm /
    0.1 degrees; on 2.5 mm series every level is kept, as the rotation is only seen at full resolution.
    """
    finest = float(np.min(fixed.spacing))
    levels = [level for level in PYRAMID if level[0] * finest >= FINEST_LEVEL_MM] or [PYRAMID[0]]
    return [factor for factor, _ in levels], [sigma for _, sigma in levels]


@dataclass(frozen=True)
class RegistrationLimits:
    """The largest motion accepted between the reference and another series."""

    max_translation_mm: float = 15.0
    max_rotation_deg: float = 15.0


@dataclass(frozen=True)
class RigidRegistration:
    """The rigid transform found, how well it fits and whether it is accepted."""

    matrix: np.ndarray  # 4x4, fixed (reference) LPS point -> moving LPS point
    center_mm: tuple[float, float, float]  # rotation centre: the reference series' centre (LPS)
    translation_mm: tuple[float, float, float]  # displacement of the centre (LPS mm)
    rotation_deg: tuple[float, float, float]  # ITK Euler3D angles about x, y, z (degrees)
    metric_before: float  # Mattes mutual information as ITK reports it (negative; lower is better)
    metric_after: float
    iterations: int
    stop_condition: str
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of this process (all threads): comparable on a shared machine
    success: bool = False
    problems: tuple[str, ...] = field(default_factory=tuple)
    sampled_on: str = "reference"  # which series ITK sampled the metric on: "reference" or "series"

    @property
    def translation_norm_mm(self) -> float:
        return float(np.linalg.norm(self.translation_mm))

    @property
    def rotation_angle_deg(self) -> float:
        """The total rotation angle (axis-angle), degrees."""
        return float(np.degrees(Rotation.from_matrix(self.matrix[:3, :3]).magnitude()))

    def check(self, limits: RegistrationLimits) -> tuple[str, ...]:
        """Why this registration is not acceptable under `limits` (empty when it is)."""
        problems = []
        if not (np.isfinite(self.metric_after) and np.isfinite(self.metric_before)):
            problems.append("the similarity could not be computed")
        elif self.metric_after > self.metric_before:
            problems.append(f"mutual information got worse ({self.metric_before:.4f} -> {self.metric_after:.4f})")
        if self.translation_norm_mm > limits.max_translation_mm:
            problems.append(f"moves {self.translation_norm_mm:.1f} mm (limit {limits.max_translation_mm:g} mm)")
        if self.rotation_angle_deg > limits.max_rotation_deg:
            problems.append(f"rotates {self.rotation_angle_deg:.1f} degrees (limit {limits.max_rotation_deg:g})")
        return tuple(problems)

    def corrected(self, moving: ImageVolume) -> ImageVolume:
        """The moving series placed in the reference's frame (same voxels, corrected affine)."""
        return replace(moving, affine=np.linalg.solve(self.matrix, moving.affine))

    def describe(self) -> str:
        t, r = self.translation_mm, self.rotation_deg
        state = "ok" if self.success else "NOT ACCEPTED: " + "; ".join(self.problems)
        return (f"translation ({t[0]:.2f}, {t[1]:.2f}, {t[2]:.2f}) mm, rotation ({r[0]:.2f}, {r[1]:.2f}, {r[2]:.2f}) "
                f"deg, Mattes MI {self.metric_before:.4f} -> {self.metric_after:.4f}, {self.iterations} iterations, "
                f"sampled on the {self.sampled_on}, {self.seconds:.1f} s ({self.cpu_seconds:.1f} s CPU), {state}")


def to_sitk(volume: ImageVolume) -> sitk.Image:
    """The volume as a SimpleITK image with the same physical (LPS) geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume.array, dtype=np.float32).transpose(2, 1, 0)))
    spacing = volume.spacing
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in volume.affine[:3, 3]])
    image.SetDirection([float(v) for v in (volume.affine[:3, :3] / spacing).ravel()])
    return image


def _centre(volume: ImageVolume) -> np.ndarray:
    return (volume.affine @ np.append((np.array(volume.shape) - 1) / 2.0, 1.0))[:3]


def _matrix(transform: sitk.Euler3DTransform) -> np.ndarray:
    rotation = np.array(transform.GetMatrix()).reshape(3, 3)
    centre, translation = np.array(transform.GetCenter()), np.array(transform.GetTranslation())
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre + translation - rotation @ centre
    return matrix


NEAR_START_MM = 1.0  # a found transform this close to the start that lowers the similarity keeps the start
NEAR_START_DEG = 1.0


def _near_start(euler: sitk.Euler3DTransform, fixed: ImageVolume) -> bool:
    """Whether the transform moves the fixed series' voxels by at most NEAR_START_MM and rotates at most
    NEAR_START_DEG (the start is the identity)."""
    matrix = _matrix(euler)
    corners = np.array([[a, b, c, 1.0] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    corners[:, :3] *= np.array(fixed.shape) - 1
    world = corners @ fixed.affine.T
    moved = np.linalg.norm((world @ (matrix - np.eye(4)).T)[:, :3], axis=1).max()
    angle = np.degrees(Rotation.from_matrix(matrix[:3, :3]).magnitude())
    return bool(moved <= NEAR_START_MM and angle <= NEAR_START_DEG)


def _failed(error: RuntimeError, fixed: ImageVolume, started: float, cpu_started: float) -> RigidRegistration:
    reason = str(error).strip().splitlines()[-1]
    log.warning("rigid registration failed: %s", reason)
    return RigidRegistration(
        matrix=np.eye(4), center_mm=tuple(_centre(fixed)), translation_mm=(0.0, 0.0, 0.0),  # type: ignore[arg-type]
        rotation_deg=(0.0, 0.0, 0.0), metric_before=float("nan"), metric_after=float("nan"), iterations=0,
        stop_condition=reason, seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started,
        problems=(f"registration could not run: {reason}",),
    )


def _similarity(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image) -> float:
    """Mattes MI at the method's initial transform, on the full-resolution images.

    The value needs no metric gradient: ITK's gradient-image filters (on for the optimisation) are
    switched off while it is evaluated, which gives the same value in about a third of the time.
    """
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    try:
        return float(method.MetricEvaluate(fixed, moving))
    finally:
        method.MetricUseFixedImageGradientFilterOn()
        method.MetricUseMovingImageGradientFilterOn()


def _optimise(fixed: ImageVolume, moving: ImageVolume, sampling_fraction: float, max_samples: int, seed: int,
              iterations: int) -> tuple[sitk.Euler3DTransform, float, float, int, str]:
    """ITK's registration of `moving` onto `fixed`: (transform, MI before, MI after, iterations, stop).
    Raises RuntimeError when ITK cannot run it (no overlap, empty image)."""
    fixed_image, moving_image = to_sitk(fixed), to_sitk(moving)
    initial = sitk.Euler3DTransform()
    initial.SetCenter([float(v) for v in _centre(fixed)])
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # At most `max_samples` metric samples per pyramid level: a 1 mm head has ~13 M voxels, and 10 %
    # of them cost minutes per series on a loaded CPU for no gain in accuracy.
    voxels = float(np.prod(fixed.shape))
    shrinks, sigmas = pyramid_levels(fixed)
    method.SetMetricSamplingPercentagePerLevel(
        [min(sampling_fraction, max_samples / max(voxels / shrink**3, 1.0)) for shrink in shrinks], seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=iterations,
                                                    gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrinks)
    method.SetSmoothingSigmasPerLevel(sigmas)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    before = _similarity(method, fixed_image, moving_image)
    found = method.Execute(fixed_image, moving_image)
    if isinstance(found, sitk.CompositeTransform) or found.GetName() == "CompositeTransform":
        found = sitk.CompositeTransform(found).GetNthTransform(0)
    euler = sitk.Euler3DTransform(found)
    method.SetInitialTransform(euler, inPlace=False)
    after = _similarity(method, fixed_image, moving_image)
    stop, count = method.GetOptimizerStopConditionDescription(), int(method.GetOptimizerIteration())
    if after > before and _near_start(euler, fixed):
        # Series on one voxel grid (a 3D T1 and T1c of one geometry) peak at the start: linear
        # interpolation blurs every sub-voxel shift. A result this close to the start that lowers the
        # similarity is that artefact, not a failure: the start is kept.
        euler, after = sitk.Euler3DTransform(initial), before
        stop += "; kept the start (higher similarity there, found transform within "
        stop += f"{NEAR_START_MM:g} mm / {NEAR_START_DEG:g} deg of it)"
    return euler, before, after, count, stop


def _euler_about(matrix: np.ndarray, centre: np.ndarray) -> sitk.Euler3DTransform:
    """The Euler3D transform (rotation about `centre`, then translation) equal to a 4x4 matrix."""
    euler = sitk.Euler3DTransform()
    euler.SetCenter([float(v) for v in centre])
    euler.SetMatrix([float(v) for v in matrix[:3, :3].ravel()], 1e-6)
    euler.SetTranslation([float(v) for v in matrix[:3, 3] + matrix[:3, :3] @ centre - centre])
    return euler


def _voxel_volume(volume: ImageVolume) -> float:
    return float(np.prod(volume.spacing))


def register_rigid(
    fixed: ImageVolume,
    moving: ImageVolume,
    limits: RegistrationLimits = RegistrationLimits(),
    *,
    sampling_fraction: float = 0.1,
    max_samples: int = 100_000,
    seed: int = 20261201,
    iterations: int = 200,
) -> RigidRegistration:
    """Register `moving` onto `fixed` (the reference series); never raises for images that do not match.

    The metric is sampled on the coarser series (see the module's docstring); the result always maps
    the reference (`fixed`) onto `moving`. A registration that ITK cannot run (no overlap, empty image)
    comes back with ``success`` False and the reason in ``problems``, as does one outside `limits` or
    one that lowers the similarity.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    swap = _voxel_volume(moving) > _voxel_volume(fixed) * 1.05
    try:
        euler, before, after, count, stop = _optimise(*((moving, fixed) if swap else (fixed, moving)),
                                                      sampling_fraction, max_samples, seed, iterations)
        if after > before:  # no better than the start: sample on the other series before giving up
            other = _optimise(*((fixed, moving) if swap else (moving, fixed)), sampling_fraction, max_samples, seed,
                              iterations)
            if other[2] <= other[1]:
                swap = not swap
                euler, before, after, count = other[:4]
                stop = f"{other[4]}; sampled on the other series (the first run lowered the similarity)"
    except RuntimeError as error:
        return _failed(error, fixed, started, cpu_started)
    matrix = _matrix(euler)
    if swap:  # found: series point -> reference point; wanted: reference point -> series point
        matrix = np.linalg.inv(matrix)
        euler = _euler_about(matrix, _centre(fixed))
    result = RigidRegistration(
        matrix=matrix,
        center_mm=tuple(float(v) for v in euler.GetCenter()),  # type: ignore[arg-type]
        translation_mm=tuple(float(v) for v in euler.GetTranslation()),  # type: ignore[arg-type]
        rotation_deg=tuple(float(np.degrees(a)) for a in (euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ())),  # type: ignore[arg-type]
        metric_before=before, metric_after=after, iterations=count, stop_condition=stop,
        seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu_started,
        sampled_on="series" if swap else "reference",
    )
    problems = result.check(limits)
    return replace(result, success=not problems, problems=problems)


def check_registration(
    result: RigidRegistration,
    study_uid: str,
    series: str,
    on_failure: str = "refuse",
    accession: str = "",
) -> None:
    """Refuse the study (StudyError) or log a warning when a registration was not accepted."""
    if result.success:
        log.info("registered %s onto the reference: %s", series, result.describe())
        return
    reason = f"registration of {series} onto the reference series not accepted: {'; '.join(result.problems)}"
    if on_failure == "warn":
        log.warning("study %s: %s (series used as aligned by scanner coordinates)", study_uid, reason)
        return
    if on_failure != "refuse":
        raise ValueError(f"on_failure must be 'refuse' or 'warn', got {on_failure!r}")
    raise StudyError(study_uid, reason, accession=accession, series=series, details=result.describe())
