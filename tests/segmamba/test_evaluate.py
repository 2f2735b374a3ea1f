"""Dice / HD95 per BraTS region against hand-computed cases, empty-mask convention, folder CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segmamba.evaluate import EMPTY_HD95_MM, dice, hd95, main, region_metrics, summarize


def _mask(shape: tuple[int, int, int], *box: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[box] = True
    return mask


def test_dice_hand_computed() -> None:
    a = _mask((8, 8, 8), slice(0, 2), slice(0, 2), slice(0, 2))  # 8 voxels
    b = _mask((8, 8, 8), slice(1, 3), slice(0, 2), slice(0, 2))  # 8 voxels, 4 shared
    assert dice(a, b) == pytest.approx(2 * 4 / 16)
    assert dice(a, a) == 1.0
    assert dice(a, _mask((8, 8, 8), slice(5, 6), slice(5, 6), slice(5, 6))) == 0.0


def test_empty_mask_convention() -> None:
    empty = np.zeros((6, 6, 6), dtype=bool)
    some = _mask((6, 6, 6), slice(2, 3), slice(2, 3), slice(2, 3))
    assert dice(empty, empty) == 1.0 and hd95(empty, empty) == 0.0
    assert dice(some, empty) == 0.0 and hd95(some, empty) == EMPTY_HD95_MM
    assert dice(empty, some) == 0.0 and hd95(empty, some) == EMPTY_HD95_MM


def test_hd95_hand_computed_with_spacing() -> None:
    a = _mask((12, 12, 12), slice(2, 3), slice(5, 6), slice(5, 6))
    b = _mask((12, 12, 12), slice(7, 8), slice(5, 6), slice(5, 6))
    assert hd95(a, b) == pytest.approx(5.0)  # two single voxels 5 voxels apart
    assert hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(10.0)
    # Two parallel one-voxel-thick planes 4 voxels apart along k: every surface point is 4 mm from the other.
    p = _mask((10, 10, 12), slice(None), slice(None), slice(3, 4))
    q = _mask((10, 10, 12), slice(None), slice(None), slice(7, 8))
    assert hd95(p, q) == pytest.approx(4.0)
    assert hd95(p, q, spacing=(1.0, 1.0, 0.5)) == pytest.approx(2.0)
    assert hd95(p, p) == 0.0


def test_region_metrics_follow_brats_regions() -> None:
    truth = np.zeros((10, 10, 10), dtype=np.uint8)
    truth[2:4, 2:4, 2:4] = 1  # necrosis
    truth[5:7, 5:7, 5:7] = 3  # enhancing
    pred = np.where(truth > 0, 2, 0).astype(np.uint8)  # the whole tumour, but called oedema
    metrics = region_metrics(pred, truth)
    assert metrics["Dice_WT"] == 1.0 and metrics["HD95_WT"] == 0.0
    assert metrics["Dice_TC"] == 0.0 and metrics["HD95_TC"] == EMPTY_HD95_MM
    assert metrics["Dice_ET"] == 0.0 and metrics["HD95_ET"] == EMPTY_HD95_MM
    no_et = np.where(truth == 3, 1, truth).astype(np.uint8)
    metrics = region_metrics(no_et, no_et)
    assert metrics["Dice_ET"] == 1.0 and metrics["HD95_ET"] == 0.0  # both empty
    half = truth.copy()
    half[5:6, 5:7, 5:7] = 0  # half of the enhancing cube missed
    metrics = region_metrics(half, truth)
    assert metrics["Dice_ET"] == pytest.approx(2 * 4 / (4 + 8))
    assert metrics["Dice_WT"] == pytest.approx(2 * 12 / (12 + 16))


def test_summary_statistics() -> None:
    rows = [{"case": "a", "Dice_WT": 1.0}, {"case": "b", "Dice_WT": 0.5}, {"case": "c", "Dice_WT": 0.0}]
    summary = summarize(rows)
    assert summary["Dice_WT"]["mean"] == pytest.approx(0.5)
    assert summary["Dice_WT"]["median"] == pytest.approx(0.5)
    assert summary["Dice_WT"]["min"] == 0.0 and summary["Dice_WT"]["max"] == 1.0


def test_cli_on_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import nibabel as nib

    truth = np.zeros((10, 10, 10), dtype=np.uint8)
    truth[2:6, 2:6, 2:6] = 2
    truth[3:5, 3:5, 3:5] = 3
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    for name, pred in (("case-a", truth), ("case-b", np.zeros_like(truth))):
        folder = tmp_path / "truth" / name
        folder.mkdir(parents=True)
        for suffix in ("t1n", "t1c", "t2w", "t2f"):
            nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.int16), affine), folder / f"{name}-{suffix}.nii.gz")
        nib.save(nib.Nifti1Image(truth, affine), folder / f"{name}-seg.nii.gz")
        (tmp_path / "pred").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(pred, affine), tmp_path / "pred" / f"{name}.nii.gz")
    summary_path = tmp_path / "summary.json"
    code = main(["--pred", str(tmp_path / "pred"), "--truth", str(tmp_path / "truth"),
                 "--csv", str(tmp_path / "cases.csv"), "--json", str(summary_path)])
    assert code == 0
    summary = json.loads(summary_path.read_text())["summary"]
    assert summary["Dice_WT"]["mean"] == pytest.approx(0.5)  # perfect case + empty prediction
    assert summary["HD95_ET"]["mean"] == pytest.approx(EMPTY_HD95_MM / 2)
    assert "Dice_TC" in capsys.readouterr().out
    assert (tmp_path / "cases.csv").read_text().count("\n") == 3
