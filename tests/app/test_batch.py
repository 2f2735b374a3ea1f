"""The batch application end to end: DICOM study folder in, SEG + report + preview out."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from app.cli import main
from app.synthetic_study import SeriesSpec, StudyInfo, truth_labels, write_study
from operators.precision import resolve_precision
from operators.segmenters import window_count
from segmamba import SegMamba
from segmamba.synthetic import Lesion, Phantom
from tests.support.paths import REPO
from tests.support.seg_geometry import seg_dice

THRESHOLD_MODEL = REPO / "tests" / "models" / "threshold"
REFERENCE_DESCRIPTION = "T1 POST CONTRAST"
REFERENCE_SPECS = {
    "axial": dict(orientation="axial", rows=104, columns=96, slices=44, pixel_spacing=(1.8, 1.6), slice_thickness=3.0),
    "sagittal": dict(orientation="sagittal", rows=100, columns=104, slices=52, pixel_spacing=(2.0, 1.8),
                     slice_thickness=2.6),
    "coronal": dict(orientation="coronal", rows=88, columns=96, slices=56, pixel_spacing=(2.1, 2.0),
                    slice_thickness=2.8, center=(4.0, -6.0, 20.0)),
    "oblique": dict(orientation="axial", tilt_deg=(12.0, -8.0, 6.0), rows=104, columns=104, slices=46,
                    pixel_spacing=(1.9, 1.9), slice_thickness=2.9),
}


def phantom_with_lesion(seed: int) -> Phantom:
    return Phantom(center=(2.0, -8.0, 15.0), lesion=Lesion(center=(-26.0, 2.0, 36.0), radius=22.0, seed=seed))


def protocol(reference: dict[str, Any]) -> list[SeriesSpec]:
    """T1 sagittal 3D, T1c in the orientation under test, T2 coronal, FLAIR oblique axial, a localizer."""
    return [
        SeriesSpec("t1n", "t1_mprage_sag_p2_iso", "sagittal", rows=96, columns=104, slices=64,
                   pixel_spacing=(2.0, 2.0), slice_thickness=2.4),
        SeriesSpec("t1c", REFERENCE_DESCRIPTION, **reference),
        SeriesSpec("t2w", "Ax T2 FSE", "coronal", rows=96, columns=96, slices=48, pixel_spacing=(2.2, 2.2),
                   slice_thickness=3.5, slice_spacing=4.0),
        SeriesSpec("t2f", "T2W_FLAIR", "axial", tilt_deg=(10.0, 0.0, -5.0), rows=100, columns=100, slices=44,
                   pixel_spacing=(2.0, 2.0), slice_thickness=3.0),
        SeriesSpec("t1n", "localizer", kind="localizer", rows=64, columns=64, pixel_spacing=(4.0, 4.0),
                   slice_thickness=8.0),
    ]


def run_app(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_valid_seg(path: Path, dciodvfy_errors: Callable[[Path], list[str]]) -> Any:
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    codes = {int(s.SegmentNumber): (s.SegmentedPropertyTypeCodeSequence[0].CodeValue, s.SegmentAlgorithmType)
             for s in seg.SegmentSequence}
    assert codes == {1: ("6574001", "AUTOMATIC"), 2: ("79654002", "AUTOMATIC"), 3: ("C113842", "AUTOMATIC")}
    assert all("RecommendedDisplayCIELabValue" in s for s in seg.SegmentSequence)
    return seg


@pytest.mark.parametrize("orientation", sorted(REFERENCE_SPECS))
def test_seg_lands_on_the_known_lesion(
    orientation: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    dciodvfy_errors: Callable[[Path], list[str]],
) -> None:
    """Every series in its own orientation/resolution/FOV; the SEG, placed by its own headers, hits the lesion."""
    phantom = phantom_with_lesion(seed=5)
    study = write_study(tmp_path / "in", phantom, protocol(REFERENCE_SPECS[orientation]), seed=3,
                        shuffle_files=True, opaque_names=True)
    code, out, err = run_app(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(THRESHOLD_MODEL),
                              "--no-progress"], capsys)
    assert code == 0, err
    seg = assert_valid_seg(tmp_path / "out" / "segmentation.dcm", dciodvfy_errors)
    reference = study.by_description(REFERENCE_DESCRIPTION)
    assert seg.StudyInstanceUID == study.study_instance_uid
    assert seg.SeriesInstanceUID not in {s.series_instance_uid for s in study.series}
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced <= {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in reference.files}
    truth = truth_labels(phantom, reference)
    assert seg_dice(seg, {1, 2, 3}, phantom, {1, 2, 3}, int((truth > 0).sum())) >= 0.95

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    voxel_ml = abs(np.linalg.det(reference.affine[:3, :3])) / 1000.0
    assert report["regions"]["WT"]["volume_ml"] == pytest.approx((truth > 0).sum() * voxel_ml, rel=0.1)
    assert report["input_series"]["t1c"]["description"] == REFERENCE_DESCRIPTION
    assert (tmp_path / "out" / "preview.png").stat().st_size > 1000
    assert json.loads(out)["segmentation"].endswith("segmentation.dcm")


def write_random_model(folder: Path) -> Path:
    """A small SegMamba with random weights behind a model card (any weights prove the chain)."""
    args = {"in_chans": 4, "out_chans": 4, "feat_size": [8, 16, 32, 64], "hidden_size": 64,
            "nslices": [32, 16, 8, 4]}
    card = json.loads((THRESHOLD_MODEL / "metadata.json").read_text())
    card.update(
        name="segmamba-random-test", version="0.0.1", intended_use="Testing only",
        network={"type": "segmamba", "args": args, "weights": "model.pt"},
        preprocessing={"spacing_mm": 2.0, "crop_foreground": True, "normalize": "zscore_nonzero"},
        inference={"roi_size": [64, 64, 64], "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 2},
    )
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(SegMamba(**args).state_dict(), folder / "model.pt")
    (folder / "metadata.json").write_text(json.dumps(card))
    return folder


def test_real_network_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dciodvfy_errors: Callable[[Path], list[str]]
) -> None:
    write_study(tmp_path / "in", phantom_with_lesion(seed=2), protocol(REFERENCE_SPECS["axial"]), seed=4)
    write_random_model(tmp_path / "models" / "random")
    code, _, err = run_app(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(tmp_path / "models"),
                            "--no-progress", "--device", "cpu"], capsys)
    assert code == 0, err
    assert_valid_seg(tmp_path / "out" / "segmentation.dcm", dciodvfy_errors)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["model"]["name"] == "segmamba-random-test"
    assert set(report["timings_s"]) >= {"load", "select", "volume", "infer"}
    inference = report["inference"]
    assert inference["precision"] == resolve_precision("auto", torch.device("cpu")) and inference["device"] == "cpu"
    assert inference["roi_size"] == [64, 64, 64] and inference["overlap"] == 0.25
    assert inference["windows"] == window_count(inference["input_shape"], (64, 64, 64), 0.25) > 1
    assert inference["windows_run"] == inference["windows"] and inference["mirror_tta"] is False


# --- bad input: one error line naming the study and the reason, non-zero exit, no partial output ---

@pytest.fixture(scope="module")
def base_study(small_study: StudyInfo) -> StudyInfo:
    """A small valid study that each bad-input test copies and breaks."""
    return small_study


def _copy(study: StudyInfo, target: Path) -> Path:
    shutil.copytree(study.series[0].files[0].parent, target)
    return target


def _series_files(folder: Path, description: str) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription == description)


def _no_mr(folder: Path) -> None:
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.Modality = "CT"
        ds.save_as(path)


def _missing_flair(folder: Path) -> None:
    for path in _series_files(folder, "Ax T2 FLAIR"):
        path.unlink()


def _corrupt_file(folder: Path) -> None:
    """Two files cut short: one in its header, one in its pixel data (an interrupted transfer)."""
    first, second = sorted(folder.iterdir())[5:7]
    first.write_bytes(first.read_bytes()[:300])
    second.write_bytes(second.read_bytes()[:-1000])


def _slice_gap(folder: Path) -> None:
    files = sorted(_series_files(folder, "AX T1 POST GAD"), key=lambda p: int(pydicom.dcmread(p).InstanceNumber))
    files[len(files) // 2].unlink()


def _four_d(folder: Path) -> None:
    for path in _series_files(folder, "Ax T2 FLAIR"):
        ds = pydicom.dcmread(path)
        ds.TemporalPositionIdentifier = 1
        ds.save_as(path)
        ds.TemporalPositionIdentifier = 2
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path.with_name(path.name + "_t2"))


def _empty(folder: Path) -> None:
    for path in folder.iterdir():
        path.unlink()


BAD_INPUTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "no MR": (_no_mr, r"MR"),
    "missing sequence": (_missing_flair, r"t2f"),
    # The loader records unreadable files (StudyInventory) instead of failing; the selector fails a study
    # whose selected series has one (naming the file), the volume builder refuses the gap it leaves.
    "corrupt file": (_corrupt_file, r"001_000[67]\.dcm|uneven slice spacing"),
    "inconsistent slice spacing": (_slice_gap, r"spacing|gap"),
    "4D series": (_four_d, r"t2f"),
    "empty folder": (_empty, r"no files"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_with_one_clear_line(
    case: str, base_study: StudyInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    breaker, reason = BAD_INPUTS[case]
    folder = _copy(base_study, tmp_path / "in")
    breaker(folder)
    out_dir = tmp_path / "out"
    code, _out, err = run_app(["-i", str(folder), "-o", str(out_dir), "-m", str(THRESHOLD_MODEL)], capsys)
    assert code != 0
    errors = [line for line in err.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, err
    study_named = base_study.study_instance_uid in errors[0] or str(folder) in errors[0]
    assert study_named, errors[0]
    assert re.search(reason, errors[0]), errors[0]
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_map_environment_contract(base_study: StudyInfo, tmp_path: Path) -> None:
    """`python -m app` with only the MONAI Deploy runtime's HOLOSCAN_* variables, as a MAP runs it."""
    env = dict(os.environ, HOLOSCAN_INPUT_PATH=str(_copy(base_study, tmp_path / "in")),
               HOLOSCAN_OUTPUT_PATH=str(tmp_path / "out"), HOLOSCAN_MODEL_PATH=str(THRESHOLD_MODEL.parent),
               HOLOSCAN_WORKDIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "app", "--no-progress"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "segmentation.dcm").is_file()
    assert "t1c" in result.stderr and "AX T1 POST GAD" in result.stderr  # the log says which series were chosen


def test_help_documents_every_setting() -> None:
    from dataclasses import fields

    from app.cli import build_parser
    from app.config import Settings

    text = build_parser().format_help()
    for field in fields(Settings):
        assert "--" + field.name.replace("_", "-") in text, field.name


def test_no_label_where_a_series_has_no_data(
    base_study: StudyInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A segmenter that labels everything still leaves voxels outside any series' FOV unlabelled."""
    card = json.loads((THRESHOLD_MODEL / "metadata.json").read_text())
    card["network"]["rules"] = [{"channel": "t1n", "above": -1e9, "label": 2}]
    (tmp_path / "everything").mkdir()
    (tmp_path / "everything" / "metadata.json").write_text(json.dumps(card))
    specs = [spec for spec in (s.spec for s in base_study.series)]
    narrow = dataclasses.replace(specs[3], rows=24, columns=24)  # the FLAIR covers a quarter of the field
    write_study(tmp_path / "in", phantom_with_lesion(seed=1), [*specs[:3], narrow], seed=9)
    code, _, err = run_app(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m",
                            str(tmp_path / "everything")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    flair_ml = 24 * 24 * 4.0 * 4.0 * 24 * 6.0 / 1000.0  # the FLAIR's own volume, as written
    assert 0 < report["regions"]["WT"]["volume_ml"] <= flair_ml * 1.05
