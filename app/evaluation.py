"""``python -m app evaluate``: held-out synthetic studies through the whole DICOM path, scored.

Each case is a random synthetic head with skull and scalp (seeded; tumour or not), in a random pose in
the scanner, whose patient moves (rigidly, up to 5 mm / 5 degrees by default) before each series after
the T1c; written as a DICOM MR study in one of
four orientations (axial, sagittal, coronal, oblique; cycled over the cases) with per-series
resolution, slice thickness and field of view, plus a localizer and a DWI series. The application
segments it exactly as in production (load, select series, resample, infer, write DICOM-SEG); the
SEG is read back by its own headers onto the reference (T1c) series grid and compared with the
true labels on that grid: Dice and HD95 per BraTS region (BraTS empty-mask convention, see
segmamba.evaluate), and the volumes in mL. The pose, each series' applied motion, the residual of the
registration against it (from report.json) and the brain mask's figures go into cases.csv.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pydicom
from scipy.spatial.transform import Rotation

from app.config import Settings
from app.seg_reader import seg_on_grid
from app.synthetic_study import MovedHead, SeriesSpec, random_motion, rigid_motion, truth_labels, write_study
from operators.errors import StudyError
from operators.volume import voxel_volume_ml
from segmamba.evaluate import EMPTY_HD95_MM, REGIONS, format_summary, region_metrics, summarize, write_csv

log = logging.getLogger("app.evaluation")

ORIENTATIONS = ("axial", "sagittal", "coronal", "oblique")
REFERENCE_DESCRIPTION = "T1 POST GAD 3D"
MOVING_ROLES = ("t1n", "t2w", "t2f")  # the series after the T1c: the patient may have moved
PREPROCESSING_COLUMNS = ("brain_mask_ml", "tumour_fraction_inside_mask", "registration_s", "brain_extraction_s")
FOV_MM = 240.0  # in-plane field of view of every series
SLAB_MM = 220.0  # extent covered across the slices


class Anatomy(Protocol):
    """What the DICOM encoder needs of a synthetic head (Phantom and TemplateHead both fit)."""

    center: tuple[float, float, float]

    def sample(self, points_lps: np.ndarray) -> dict[str, np.ndarray]: ...

    def render(self, shape: tuple[int, int, int], affine: np.ndarray) -> dict[str, np.ndarray]: ...


def random_anatomy(kind: str, seed: int) -> Anatomy:
    """The synthetic head of a case: ``mni152`` (template anatomy) or ``phantom`` (analytic)."""
    from segmamba import synthetic

    rng = np.random.default_rng(seed)
    if kind == "phantom":
        return synthetic.random_phantom(rng)
    if kind == "mni152":
        return synthetic.random_template_head(rng)
    raise ValueError(f"unknown anatomy {kind!r} (mni152 or phantom)")


def _series(contrast: str, description: str, orientation: str, tilt: tuple[float, float, float],
            in_plane_mm: float, thickness_mm: float, gap_mm: float, scale: float) -> SeriesSpec:
    """A series covering FOV_MM in-plane and SLAB_MM across slices (``scale`` coarsens it for tests)."""
    pixel = in_plane_mm * scale
    spacing = (thickness_mm + gap_mm) * scale
    matrix = round(FOV_MM / pixel)
    return SeriesSpec(
        contrast, description, "axial" if orientation == "oblique" else orientation,  # type: ignore[arg-type]
        tilt_deg=tilt, rows=matrix, columns=matrix, slices=round(SLAB_MM / spacing),
        pixel_spacing=(pixel, pixel), slice_thickness=thickness_mm * scale,
        slice_spacing=spacing if gap_mm else None,
    )


def case_protocol(orientation: str, rng: np.random.Generator, scale: float = 1.0,
                  motion: StudyMotion | None = None) -> list[SeriesSpec]:
    """A clinical-like protocol in one orientation: 3D T1c (the reference, ~1 mm), 3D T1, 2D T2 and FLAIR.

    ``oblique`` tilts every series of the case by the same random angles (up to 20 degrees per axis).
    ``motion``: the patient moves by a random rigid motion (drawn after the protocol, from the same
    generator) before each series after the T1c, up to ``motion.max_mm`` / ``motion.max_deg``.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}")
    tilt = tuple(float(v) for v in rng.uniform(-20.0, 20.0, size=3)) if orientation == "oblique" else (0.0, 0.0, 0.0)
    name = orientation.upper()[:3]
    specs = [
        _series("t1c", REFERENCE_DESCRIPTION, orientation, tilt, float(rng.uniform(0.9, 1.0)),
                float(rng.uniform(0.9, 1.0)), 0.0, scale),
        _series("t1n", f"T1 MPRAGE {name}", orientation, tilt, float(rng.uniform(0.9, 1.2)),
                float(rng.uniform(1.0, 1.2)), 0.0, scale),
        _series("t2w", f"T2 TSE {name}", orientation, tilt, float(rng.uniform(0.6, 1.0)),
                float(rng.uniform(3.0, 5.0)), float(rng.uniform(0.0, 1.0)), scale),
        _series("t2f", f"T2 FLAIR {name}", orientation, tilt, float(rng.uniform(0.8, 1.1)),
                float(rng.uniform(3.0, 5.0)), float(rng.uniform(0.0, 1.0)), scale),
        SeriesSpec("t1n", "3-Plane Loc", kind="localizer", rows=128, columns=128, pixel_spacing=(2.0, 2.0),
                   slice_thickness=8.0),
        SeriesSpec("t2w", "Ax DWI", kind="dwi", rows=64, columns=64, slices=20, pixel_spacing=(3.6, 3.6),
                   slice_thickness=5.0, slice_spacing=6.0),
    ]
    if motion is not None and (motion.max_mm > 0 or motion.max_deg > 0):
        specs[1:4] = [dataclasses.replace(spec, motion=random_motion(rng, motion.max_mm, motion.max_deg))
                      for spec in specs[1:4]]
    return specs


@dataclass(frozen=True)
class StudyMotion:
    """Random head pose in the scanner (whole study) and patient motion between series (seeded per case)."""

    max_mm: float = 5.0  # inter-series motion: translation, in all
    max_deg: float = 5.0  # inter-series motion: rotation angle
    pose_mm: float = 10.0  # head pose: shift, in all
    pose_deg: float = 15.0  # head pose: rotation angle


NO_MOTION = StudyMotion(0.0, 0.0, 0.0, 0.0)


def motion_residual(found: np.ndarray, applied: np.ndarray, centre: np.ndarray) -> tuple[float, float]:
    """(mm at the head centre, degrees) between a recovered and an applied rigid motion (4x4, LPS)."""
    difference = (np.asarray(found) - np.asarray(applied)) @ np.append(np.asarray(centre, dtype=np.float64), 1.0)
    rotation = np.asarray(found)[:3, :3] @ np.asarray(applied)[:3, :3].T
    return float(np.linalg.norm(difference[:3])), float(np.degrees(Rotation.from_matrix(rotation).magnitude()))


@dataclass(frozen=True)
class CaseResult:
    """One scored case (``error`` set when the application rejected the study)."""

    case: str
    seed: int
    orientation: str
    metrics: dict[str, float]
    volumes_ml: dict[str, dict[str, float]]
    seconds: float
    error: str = ""
    pose: tuple[float, ...] = ()  # head pose (tx, ty, tz mm, rx, ry, rz degrees)
    motion: dict[str, tuple[float, ...]] = field(default_factory=dict)  # role -> applied inter-series motion
    residual: dict[str, tuple[float, float]] = field(default_factory=dict)  # role -> (mm, degrees) after registration
    preprocessing: dict[str, Any] = field(default_factory=dict)  # brain mask mL, tumour inside, seconds

    def row(self) -> dict[str, Any]:
        """Flat CSV row: case, orientation, Dice_*/HD95_*, true/segmented mL per region, seconds, error,
        then the head pose, each series' applied motion and registration residual, the brain mask."""
        row: dict[str, Any] = {"case": self.case, "seed": self.seed, "orientation": self.orientation}
        row.update({k: round(v, 4) for k, v in self.metrics.items()})
        for region, volumes in self.volumes_ml.items():
            row[f"true_ml_{region}"] = round(volumes["true"], 2)
            row[f"segmented_ml_{region}"] = round(volumes["segmented"], 2)
        row.update(seconds=round(self.seconds, 1), error=self.error)
        row["pose"] = " ".join(f"{v:g}" for v in self.pose)
        for role in MOVING_ROLES:
            row[f"motion_{role}"] = " ".join(f"{v:g}" for v in self.motion.get(role, ()))
            mm, deg = self.residual.get(role, (float("nan"), float("nan")))
            row[f"residual_mm_{role}"] = "" if np.isnan(mm) else round(mm, 3)
            row[f"residual_deg_{role}"] = "" if np.isnan(deg) else round(deg, 3)
        row.update({key: self.preprocessing.get(key, "") for key in PREPROCESSING_COLUMNS})
        return row


def _failed_metrics() -> dict[str, float]:
    return {key: value for region in REGIONS for key, value in
            ((f"Dice_{region}", 0.0), (f"HD95_{region}", EMPTY_HD95_MM))}


def score_case(seg_path: Path, truth: np.ndarray, shape: tuple[int, int, int], affine: np.ndarray,
               label_values: Sequence[int]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Metrics and volumes of a written SEG against the true labels on the reference grid."""
    seg = pydicom.dcmread(seg_path)
    predicted = seg_on_grid(seg, shape, affine, dict(enumerate(label_values, start=1)))
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    voxel_ml = voxel_volume_ml(affine)
    volumes = {region: {"true": float(np.isin(truth, labels).sum()) * voxel_ml,
                        "segmented": float(np.isin(predicted, labels).sum()) * voxel_ml}
               for region, labels in REGIONS.items()}
    return region_metrics(predicted, truth, tuple(float(s) for s in spacing)), volumes


def case_anatomy(anatomy_kind: str, seed: int, motion: StudyMotion = NO_MOTION) -> tuple[Anatomy, tuple[float, ...]]:
    """The head of case ``seed`` in its random pose in the scanner, and that pose (empty: none)."""
    anatomy = random_anatomy(anatomy_kind, seed)
    if motion.pose_mm <= 0 and motion.pose_deg <= 0:
        return anatomy, ()
    pose = random_motion(np.random.default_rng([seed, 2]), motion.pose_mm, motion.pose_deg)
    return MovedHead(anatomy, rigid_motion(pose, anatomy.center)), pose


def _report_figures(report_path: Path, applied: dict[str, np.ndarray], centre: np.ndarray
                    ) -> tuple[dict[str, tuple[float, float]], dict[str, Any]]:
    """Registration residual per series and the brain-extraction figures from a written report.json."""
    if not report_path.is_file():
        return {}, {}
    section = json.loads(report_path.read_text()).get("preprocessing") or {}
    residual = {}
    for role, entry in (section.get("registration") or {}).items():
        if role in applied and entry.get("matrix") is not None:
            residual[role] = motion_residual(np.asarray(entry["matrix"]), applied[role], centre)
    brain = section.get("brain_extraction") or {}
    seconds = section.get("seconds") or {}
    figures = {"brain_mask_ml": brain.get("mask_volume_ml", ""),
               "tumour_fraction_inside_mask": brain.get("tumour_fraction_inside_mask", ""),
               "registration_s": seconds.get("registration", ""),
               "brain_extraction_s": seconds.get("brain_extraction", "")}
    return residual, figures


def evaluate_case(settings: Settings, process: Callable[[Path, Path], Path], label_values: Sequence[int],
                  index: int, seed: int, anatomy_kind: str, work_dir: Path, scale: float = 1.0,
                  keep: bool = False, motion: StudyMotion = NO_MOTION) -> CaseResult:
    """Write, segment and score case ``index`` (orientation ORIENTATIONS[index % 4]).

    ``process(input_dir, output_dir)`` runs the application and returns the SEG path. ``motion``:
    the head gets a random pose in the scanner and moves between series (seeded from ``seed``, recorded
    in the result with the registration residual read from report.json).
    """
    orientation = ORIENTATIONS[index % len(ORIENTATIONS)]
    name = f"SYN-DICOM-{seed:05d}"
    rng = np.random.default_rng([seed, 1])
    anatomy, pose = case_anatomy(anatomy_kind, seed, motion)
    case_dir = work_dir / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    started = time.perf_counter()
    protocol = case_protocol(orientation, rng, scale, motion)
    study = write_study(case_dir / "input", anatomy, protocol, seed=seed, patient_id=f"SYN{seed:05d}",
                        shuffle_files=True)
    applied = {spec.contrast: spec.motion for spec in protocol[1:4] if spec.motion}
    reference = study.by_description(REFERENCE_DESCRIPTION)
    assert reference.shape is not None and reference.affine is not None
    truth = truth_labels(anatomy, reference)
    extra: dict[str, Any] = {"pose": pose, "motion": applied}
    try:
        seg_path = process(case_dir / "input", case_dir / "output")
    except (StudyError, ValueError, OSError) as error:  # the study was rejected: scored as missed
        log.error("case %s (%s): %s", name, orientation, error)
        return CaseResult(name, seed, orientation, _failed_metrics(), {}, time.perf_counter() - started, str(error),
                          **extra)
    finally:
        if not keep:
            shutil.rmtree(case_dir / "input", ignore_errors=True)
    metrics, volumes = score_case(seg_path, truth, reference.shape, reference.affine, label_values)
    centre = np.asarray(anatomy.center, dtype=np.float64)
    residual, figures = _report_figures(seg_path.parent / "report.json",
                                        {role: rigid_motion(m, centre) for role, m in applied.items()}, centre)
    return CaseResult(name, seed, orientation, metrics, volumes, time.perf_counter() - started, residual=residual,
                      preprocessing=figures, **extra)


def residual_summary(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Mean and largest registration residual (mm, degrees) over every registered series of the cases."""
    pairs = [pair for r in results for pair in r.residual.values()]
    if not pairs:
        return {"registration_residual": None}
    mm, deg = np.array(pairs).T
    return {"registration_residual": {"series": len(pairs), "mean_mm": round(float(mm.mean()), 3),
                                      "max_mm": round(float(mm.max()), 3), "mean_deg": round(float(deg.mean()), 3),
                                      "max_deg": round(float(deg.max()), 3)}}


def dice_by_orientation(results: Sequence[CaseResult]) -> dict[str, tuple[int, dict[str, float]]]:
    """For each orientation present: how many cases, and their mean Dice per region."""
    table: dict[str, tuple[int, dict[str, float]]] = {}
    for orientation in ORIENTATIONS:
        chosen = [r for r in results if r.orientation == orientation]
        if chosen:
            table[orientation] = (len(chosen), {f"Dice_{region}": float(np.mean([r.metrics[f"Dice_{region}"]
                                                                                for r in chosen]))
                                                for region in REGIONS})
    return table


def orientation_table(by_orientation: dict[str, tuple[int, dict[str, float]]]) -> str:
    """Mean Dice per region for each orientation, as text."""
    lines = [f"{'orientation':<12}{'cases':>6}" + "".join(f"{'Dice_' + r:>10}" for r in REGIONS)]
    for orientation, (count, means) in by_orientation.items():
        lines.append(f"{orientation:<12}{count:>6}" + "".join(f"{m:>10.4f}" for m in means.values()))
    return "\n".join(lines)


def run_evaluation(settings: Settings, cases: int, seed: int, out_dir: Path, anatomy_kind: str = "mni152",
                   scale: float = 1.0, keep: bool = False, motion: StudyMotion = StudyMotion()) -> dict[str, Any]:
    """Evaluate ``cases`` studies (seeds seed, seed+1, ...); writes cases.csv and summary.json to out_dir."""
    from app.batch import load_model, process_study

    out_dir.mkdir(parents=True, exist_ok=True)
    card, segmenter = load_model(settings)
    label_values = [entry.label for entry in card.labels]

    def process(input_dir: Path, output_dir: Path) -> Path:
        files, _ = process_study(settings, card, segmenter, input_dir, output_dir)
        return files.segmentation

    results = []
    for index in range(cases):
        result = evaluate_case(settings, process, label_values, index, seed + index, anatomy_kind, out_dir,
                               scale=scale, keep=keep, motion=motion)
        log.info("case %s (%s): %s", result.case, result.orientation,
                 " ".join(f"{k}={v:.3f}" for k, v in result.metrics.items() if k.startswith("Dice")))
        results.append(result)
    write_csv([r.row() for r in results], out_dir / "cases.csv")
    by_orientation = dice_by_orientation(results)
    summary = {
        "model": f"{card.name} {card.version}",
        "anatomy": anatomy_kind,
        "cases": cases,
        "seeds": [seed, seed + cases - 1],
        "failed": [r.case for r in results if r.error],
        "metrics": summarize([r.metrics for r in results]),
        "by_orientation": {orientation: means for orientation, (_count, means) in by_orientation.items()},
        "preprocessing": {"registration": settings.registration, "brain_extraction": settings.brain_extraction,
                          "motion": dataclasses.asdict(motion), **residual_summary(results)},
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    summary["table"] = format_summary(summary["metrics"], cases) + "\n\n" + orientation_table(by_orientation)
    residual = summary["preprocessing"]["registration_residual"]
    if residual:
        summary["table"] += (f"\n\nregistration residual over {residual['series']} series: mean "
                             f"{residual['mean_mm']:.2f} mm / {residual['mean_deg']:.2f} deg, worst "
                             f"{residual['max_mm']:.2f} mm / {residual['max_deg']:.2f} deg")
    return summary
