"""`python -m app evaluate`: synthetic studies in four orientations, the SEG read back and scored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from app.config import Settings
from app.evaluation import ORIENTATIONS, REFERENCE_DESCRIPTION, case_protocol, evaluate_case, run_evaluation
from operators.errors import StudyError
from operators.seg_writer import write_segmentation
from segmamba.evaluate import EMPTY_HD95_MM
from tests.support.paths import THRESHOLD_MODEL

LABELS = (1, 2, 3)


def _reference_files(input_dir: Path) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(p) for p in sorted(input_dir.iterdir())]
    return [ds for ds in datasets if ds.SeriesDescription == REFERENCE_DESCRIPTION]


def _writer_of(transform: Any, brats_segments: list[Any], index: int, seed: int) -> Any:
    """A stand-in application: writes `transform(true labels of case (index, seed))` as the reference's SEG."""
    from app.evaluation import random_anatomy
    from app.synthetic_study import series_grid

    def process(input_dir: Path, output_dir: Path) -> Path:
        anatomy = random_anatomy("phantom", seed)
        spec = case_protocol(ORIENTATIONS[index], np.random.default_rng([seed, 1]), scale=4.0)[0]
        shape, affine = series_grid(spec, anatomy)
        labels = transform(anatomy.render(shape, affine)["label"])
        output_dir.mkdir(parents=True, exist_ok=True)
        reference = _reference_files(input_dir)
        return write_segmentation(labels, reference, brats_segments, "truth", "1", output_dir / "seg.dcm")

    return process


@pytest.mark.parametrize("index", range(4))
def test_true_labels_written_as_seg_score_perfectly_in_every_orientation(
    tmp_path: Path, brats_segments: list[Any], index: int
) -> None:
    seed = (35, 36, 38, 39)[index]  # cases with a tumour
    result = evaluate_case(Settings(), _writer_of(lambda labels: labels, brats_segments, index, seed), LABELS, index,
                           seed=seed, anatomy_kind="phantom", work_dir=tmp_path, scale=4.0)
    assert result.orientation == ORIENTATIONS[index]
    assert not result.error
    assert result.volumes_ml["TC"]["true"] > 1.0
    for region in ("WT", "TC", "ET"):
        assert result.metrics[f"Dice_{region}"] == 1.0
        assert result.metrics[f"HD95_{region}"] == 0.0
        assert result.volumes_ml[region]["true"] == result.volumes_ml[region]["segmented"]
    assert not (tmp_path / result.case / "input").exists()  # studies are removed unless kept


def test_a_shifted_segmentation_scores_below_one(tmp_path: Path, brats_segments: list[Any]) -> None:
    process = _writer_of(lambda labels: np.roll(labels, 3, axis=0), brats_segments, 1, 40)
    shifted = evaluate_case(Settings(), process, LABELS, 1, seed=40, anatomy_kind="phantom", work_dir=tmp_path,
                            scale=4.0)
    assert 0.0 < shifted.metrics["Dice_WT"] < 0.8
    assert shifted.metrics["HD95_WT"] > 4.0


def test_a_rejected_study_is_scored_as_missed(tmp_path: Path) -> None:
    def reject(input_dir: Path, output_dir: Path) -> Path:
        raise StudyError("1.2.3", "no FLAIR series")

    result = evaluate_case(Settings(), reject, LABELS, 2, seed=41, anatomy_kind="phantom", work_dir=tmp_path,
                           scale=4.0)
    assert "no FLAIR series" in result.error
    assert result.metrics["Dice_WT"] == 0.0 and result.metrics["HD95_ET"] == EMPTY_HD95_MM


def test_protocol_covers_the_head_in_each_orientation() -> None:
    for orientation in ORIENTATIONS:
        specs = case_protocol(orientation, np.random.default_rng(0))
        assert specs[0].contrast == "t1c" and specs[0].description == REFERENCE_DESCRIPTION
        assert {s.contrast for s in specs[:4]} == {"t1n", "t1c", "t2w", "t2f"}
        for spec in specs[:4]:
            assert spec.rows * spec.pixel_spacing[0] == pytest.approx(240.0, abs=2.0)
            assert spec.slices * spec.spacing_between_slices == pytest.approx(220.0, abs=6.0)
        tilted = any(specs[0].tilt_deg)
        assert tilted == (orientation == "oblique")


def test_evaluate_command_writes_the_table_and_files(tmp_path: Path) -> None:
    settings = Settings(models=THRESHOLD_MODEL, progress=False)
    summary = run_evaluation(settings, cases=2, seed=11, out_dir=tmp_path, anatomy_kind="phantom", scale=4.0)
    assert summary["cases"] == 2 and not summary["failed"]
    assert set(summary["by_orientation"]) == {"axial", "sagittal"}
    assert summary["metrics"]["Dice_WT"]["mean"] > 0.4  # deterministic rules on coarse 4x voxels
    assert "Dice_ET" in summary["table"] and "sagittal" in summary["table"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["metrics"] == summary["metrics"]
    rows = (tmp_path / "cases.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("case,seed,orientation,Dice_WT")


def test_pose_and_inter_series_motion_are_seeded_recorded_and_the_truth_follows_the_pose(
    tmp_path: Path, brats_segments: list[Any]
) -> None:
    from scipy.spatial.transform import Rotation

    from app.evaluation import MOVING_ROLES, StudyMotion, case_anatomy
    from app.synthetic_study import series_grid

    motion, seed, index = StudyMotion(), 36, 1  # a case with a tumour
    anatomy, pose = case_anatomy("phantom", seed, motion)

    def process(input_dir: Path, output_dir: Path) -> Path:  # writes the posed head's true labels
        spec = case_protocol(ORIENTATIONS[index], np.random.default_rng([seed, 1]), 4.0, motion)[0]
        labels = anatomy.render(*series_grid(spec, anatomy))["label"]
        output_dir.mkdir(parents=True, exist_ok=True)
        return write_segmentation(labels, _reference_files(input_dir), brats_segments, "truth", "1",
                                  output_dir / "seg.dcm")

    result = evaluate_case(Settings(), process, LABELS, index, seed=seed, anatomy_kind="phantom", work_dir=tmp_path,
                           scale=4.0, motion=motion)
    assert result.metrics["Dice_WT"] == 1.0 and result.volumes_ml["WT"]["true"] > 1.0
    assert result.pose == pose and len(pose) == 6
    assert set(result.motion) == set(MOVING_ROLES)
    again = case_protocol(ORIENTATIONS[index], np.random.default_rng([seed, 1]), 4.0, motion)
    assert {spec.contrast: spec.motion for spec in again[1:4]} == result.motion  # seeded
    for values in result.motion.values():
        assert 0.0 < np.linalg.norm(values[:3]) <= 5.0 + 1e-6
        assert np.degrees(Rotation.from_euler("xyz", values[3:], degrees=True).magnitude()) <= 5.0 + 1e-3
    row = result.row()
    assert row["motion_t2f"] and row["residual_mm_t2f"] == ""  # no registration ran in this stand-in
    unposed, none = case_anatomy("phantom", seed)
    assert none == () and unposed.center != anatomy.center


def test_motion_residual_measures_mm_at_the_centre_and_degrees() -> None:
    from app.evaluation import motion_residual
    from app.synthetic_study import rigid_motion

    centre = np.array([10.0, -5.0, 20.0])
    applied = rigid_motion((3.0, 0.0, -4.0, 0.0, 0.0, 10.0), centre)
    assert motion_residual(applied, applied, centre) == pytest.approx((0.0, 0.0), abs=1e-9)
    mm, deg = motion_residual(np.eye(4), applied, centre)
    assert mm == pytest.approx(5.0) and deg == pytest.approx(10.0)
