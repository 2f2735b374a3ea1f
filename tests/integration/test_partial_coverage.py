"""Series that cover only part of the head: segmented inside the region every series covers, nothing
outside it, the volume right there, and the shortfall reported (report.json and the log)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from app.cli import main
from app.seg_reader import seg_on_grid
from operators.volume import voxel_volume_ml
from tests.support.partial_coverage_cases import CASES, CaseTruth, far_from, measure, write_case
from tests.support.paths import THRESHOLD_MODEL

LABELS = {1: 1, 2: 2, 3: 3}


def segmented(seg_path: Path, truth: CaseTruth) -> np.ndarray:
    """Whole tumour of the SEG, read back by its own headers onto the reference grid."""
    return seg_on_grid(pydicom.dcmread(seg_path), truth.shape, truth.affine, LABELS) > 0


def volumes_ml(predicted: np.ndarray, truth: CaseTruth) -> dict[str, float]:
    """WT inside the covered region (segmented, true), outside it, and far (> 5 mm) from the true lesion."""
    ml = voxel_volume_ml(truth.affine)
    true_wt = truth.labels > 0
    return {
        "segmented": float((predicted & truth.covered).sum()) * ml,
        "true": float((true_wt & truth.covered).sum()) * ml,
        "outside": float((predicted & ~truth.covered).sum()) * ml,
        "far": float((predicted & far_from(true_wt, truth.affine, 5.0)).sum()) * ml,
    }


@pytest.mark.parametrize("case", CASES)
def test_threshold_geometry_inside_the_covered_region_only(
    case: str, tmp_path: Path, phantom: Any, capsys: pytest.CaptureFixture[str],
    dciodvfy_errors: Callable[[Path], list[str]],
) -> None:
    truth = write_case(case, phantom, tmp_path / "in", seed=21)
    code = main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(THRESHOLD_MODEL), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    seg_path = tmp_path / "out" / "segmentation.dcm"
    assert dciodvfy_errors(seg_path) == []
    volumes = volumes_ml(segmented(seg_path, truth), truth)
    assert volumes["true"] > 5.0  # the case cuts through the lesion, it does not miss it
    assert volumes["outside"] < 0.05 * volumes["true"]  # at most the nearest-neighbour rim of the region
    assert volumes["segmented"] == pytest.approx(volumes["true"], rel=0.1)

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    coverage = report["coverage"]
    assert coverage["head_fraction"] < 0.7 and coverage["min_head_coverage"] == 0.9
    assert report["warnings"] == [coverage["warning"]] and "of the head is covered" in coverage["warning"]
    warnings = [line for line in err.splitlines() if "WARNING" in line and "of the head is covered" in line]
    assert len(warnings) == 1 and truth.study.study_instance_uid in warnings[0]


def test_complete_study_reports_full_coverage_without_warning(
    tmp_path: Path, small_study: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    folder = small_study.series[0].files[0].parent
    code = main(["-i", str(folder), "-o", str(tmp_path / "out"), "-m", str(THRESHOLD_MODEL), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["coverage"]["head_fraction"] >= 0.97
    assert report["coverage"]["warning"] is None and report["warnings"] == []
    assert "of the head is covered" not in err


def test_demo_model_on_partial_coverage(tmp_path: Path) -> None:
    """The shipped model on the three cases: WT within 15% of the truth inside the covered region, no
    false tumour outside it nor far from the lesion."""
    rows = measure([5], tmp_path)
    assert [row["case"] for row in rows] == list(CASES)
    for row in rows:
        true, found = float(row["true_ml"]), float(row["segmented_ml"])
        assert true > 10.0, row
        assert abs(found - true) <= 0.15 * true, row
        assert float(row["outside_ml"]) < 0.05 * true, row
        assert float(row["far_ml"]) < 0.5, row
