"""JSON report volumes and regions; PNG preview size, slices, colours and orientation."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from operators.report import axial_axis, build_report, write_preview, write_report

NAMES = {1: "NCR", 2: "SNFH", 3: "ET"}
REGIONS = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
COLOURS = {1: (200, 0, 0), 2: (0, 200, 0), 3: (0, 0, 200)}
MODEL = {"name": "SegMamba", "version": "1.0.0"}


def label_map() -> np.ndarray:
    labels = np.zeros((20, 16, 12), dtype=np.uint8)
    labels[2:4, 2:4, 2:4] = 1  # 8 voxels
    labels[10:13, 5:8, 5:8] = 2  # 27 voxels
    labels[15, 10, 3:8] = 3  # 5 voxels
    return labels


def make_report() -> dict:
    return build_report(
        label_map(),
        voxel_volume_ml=0.002,
        label_names=NAMES,
        regions=REGIONS,
        model=MODEL,
        input_series={"t1n": "t1_mprage_sag_p2_iso", "t2f": {"uid": "1.2.3", "description": "T2W_FLAIR"}},
        study_uid="1.2.826.0.1.3680043.8.498.1",
        timings={"inference": 12.34567, "total": np.float64(20.0)},
        created=datetime(2024, 3, 1, 12, 0, tzinfo=UTC),
    )


def test_report_volumes_per_label_and_region() -> None:
    report = make_report()
    assert report["labels"] == {
        "NCR": {"label": 1, "voxels": 8, "volume_ml": 0.016},
        "SNFH": {"label": 2, "voxels": 27, "volume_ml": 0.054},
        "ET": {"label": 3, "voxels": 5, "volume_ml": 0.01},
    }
    assert report["regions"] == {
        "WT": {"labels": [1, 2, 3], "voxels": 40, "volume_ml": 0.08},
        "TC": {"labels": [1, 3], "voxels": 13, "volume_ml": 0.026},
        "ET": {"labels": [3], "voxels": 5, "volume_ml": 0.01},
    }
    assert report["grid"] == {"shape": [20, 16, 12], "voxel_volume_ml": 0.002}
    assert report["timings_s"] == {"inference": 12.346, "total": 20.0}
    assert report["created"] == "2024-03-01T12:00:00+00:00"
    assert report["study_instance_uid"] == "1.2.826.0.1.3680043.8.498.1"
    assert report["model"] == MODEL
    assert report["input_series"]["t2f"]["description"] == "T2W_FLAIR"


def test_report_absent_label_and_bad_inputs() -> None:
    labels = np.zeros((4, 4, 4), dtype=np.int16)
    labels[0, 0, 0] = 2
    report = build_report(labels, 1.0, NAMES, REGIONS, MODEL, {}, "1.2", {})
    assert report["labels"]["NCR"]["voxels"] == 0
    assert report["regions"]["TC"]["volume_ml"] == 0.0
    assert report["regions"]["WT"]["volume_ml"] == 1.0
    labels[1, 1, 1] = 7
    with pytest.raises(ValueError, match=r"\[7\]"):
        build_report(labels, 1.0, NAMES, REGIONS, MODEL, {}, "1.2", {})
    with pytest.raises(ValueError, match="region"):
        build_report(label_map(), 1.0, NAMES, {"XX": [4]}, MODEL, {}, "1.2", {})
    with pytest.raises(ValueError, match="voxel_volume_ml"):
        build_report(label_map(), 0.0, NAMES, REGIONS, MODEL, {}, "1.2", {})
    with pytest.raises(ValueError, match="version"):
        build_report(label_map(), 1.0, NAMES, REGIONS, {"name": "x"}, {}, "1.2", {})


def test_write_report_is_atomic_json(tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.json"
    report = make_report()
    assert write_report(report, target) == target
    assert json.loads(target.read_text(encoding="utf-8")) == report
    before = target.read_bytes()
    broken = {**report, "timings_s": {"total": math.nan}}
    with pytest.raises(ValueError):
        write_report(broken, target)
    with pytest.raises(TypeError):
        write_report({**report, "extra": object()}, target)
    assert target.read_bytes() == before  # a failed write leaves the old report
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]  # no temporary files left


def _panel_pixels(png: Path, panel: int, panel_px: int) -> np.ndarray:
    pixels = np.asarray(Image.open(png).convert("RGB"))
    return pixels[:panel_px, panel * panel_px : (panel + 1) * panel_px]


def test_preview_size_slices_and_lesion_colours(tmp_path: Path) -> None:
    image = np.zeros((40, 40, 64), dtype=np.float32)  # black image: blended colours are exact
    labels = np.zeros_like(image, dtype=np.uint8)
    labels[10:20, 10:20, 30:35] = 2
    labels[12:16, 12:16, 31:34] = 1
    labels[18:20, 18:20, 32] = 3
    info = write_preview(
        image, labels, COLOURS, tmp_path / "preview.png", label_names=NAMES, n_slices=3, panel_px=128, alpha=0.5
    )
    assert info.axis == 2
    assert info.lesion
    assert len(info.slices) == 3 and all(30 <= k < 35 for k in info.slices)
    png = Image.open(info.path)
    assert png.format == "PNG" and png.size == info.size
    assert png.size[0] == 3 * 128 and png.size[1] > 128
    pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
    panels = np.concatenate([_panel_pixels(info.path, n, 128).reshape(-1, 3) for n in range(3)])
    legend = np.asarray(png.convert("RGB"))[128:].reshape(-1, 3)
    for colour in COLOURS.values():
        blended = tuple(c // 2 for c in colour)
        assert np.any(np.all(panels == blended, axis=1)), f"overlay colour {blended} missing"
        assert np.any(np.all(legend == colour, axis=1)), f"legend swatch {colour} missing"
    assert pixels.shape[0] == png.size[0] * png.size[1]


def test_preview_without_lesion_uses_centre(tmp_path: Path) -> None:
    image = np.random.default_rng(0).random((30, 30, 50)).astype(np.float32) + 1.0
    info = write_preview(image, np.zeros(image.shape, np.uint8), COLOURS, tmp_path / "p.png", n_slices=3)
    assert not info.lesion
    assert info.slices == (17, 24, 32)
    assert info.size == (3 * 256, 256 + 24)
    assert np.asarray(Image.open(info.path).convert("L"))[:256].std() > 10  # greyscale content, not blank


def test_preview_is_axial_and_radiological_for_a_sagittal_acquisition(tmp_path: Path) -> None:
    # Array axes: i -> patient posterior (+y), j -> inferior (-z), k -> patient right (-x); 1 x 1 x 2 mm.
    affine = np.array([[0.0, 0.0, -2.0, 100.0], [1.0, 0.0, 0.0, -100.0], [0.0, -1.0, 0.0, 80.0], [0.0, 0.0, 0.0, 1.0]])
    shape = (60, 50, 30)  # 60 mm A-P, 50 mm S-I, 60 mm R-L
    image = np.random.default_rng(1).uniform(50.0, 150.0, shape).astype(np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    # label 1: patient right (x low -> k high) and anterior (y low -> i low)
    labels[5:12, 20:30, 22:28] = 1
    # label 3: patient left (k low) and posterior (i high)
    labels[48:55, 20:30, 2:8] = 3
    assert axial_axis(affine) == 1
    info = write_preview(image, labels, COLOURS, tmp_path / "sag.png", affine=affine, n_slices=1, alpha=1.0)
    assert info.axis == 1 and 20 <= info.slices[0] < 30
    panel = _panel_pixels(info.path, 0, 256)
    rows_1, cols_1 = np.nonzero(np.all(panel == COLOURS[1], axis=2))
    rows_3, cols_3 = np.nonzero(np.all(panel == COLOURS[3], axis=2))
    assert rows_1.size and rows_3.size
    assert rows_1.mean() < 128 and cols_1.mean() < 128  # right-anterior: top left
    assert rows_3.mean() > 128 and cols_3.mean() > 128  # left-posterior: bottom right
    grey = np.nonzero(np.any(panel != 0, axis=2))
    height = grey[0].max() - grey[0].min() + 1
    width = grey[1].max() - grey[1].min() + 1
    assert width == 256 and abs(height - 256) <= 2  # 60 x 60 mm: square despite 2 mm columns


def test_axial_axis_of_an_oblique_grid() -> None:
    angle = np.deg2rad(25.0)
    rotation = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(angle), -np.sin(angle)], [0.0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 0.9, 3.0])
    assert axial_axis(affine) == 2
    affine[:3, :3] = affine[:3, :3][:, [2, 0, 1]]
    assert axial_axis(affine) == 0


def test_preview_rejects_uncoloured_labels(tmp_path: Path) -> None:
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[1, 1, 1] = 4
    with pytest.raises(ValueError, match="colour"):
        write_preview(np.zeros((8, 8, 8)), labels, COLOURS, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_report_lists_every_series_with_its_fate_foreign_series_and_skipped_files(tmp_path: Path) -> None:
    from operators.series_selection import select_from_studies
    from operators.study_inventory import SkippedFile, StudyInventory, UnreadableFile
    from tests.operators.series_selection.test_vendor_studies import (
        T1_SE,
        _restamp,
        _SdkStudy,
        make_series,
        siemens_study,
        tumour_protocol,
    )

    series, uids = tumour_protocol()
    localizer = make_series("AAHead_Scout", T1_SE, number=1, time="080000", image_type=("ORIGINAL", "PRIMARY", "M"))
    series.update([localizer])
    _restamp(series, "1.2.826.0.1.3680043.8.498.1", "P1")
    other, _ = siemens_study(include_flair=False)
    _restamp(other, "1.2.826.0.1.3680043.8.498.5", "P2")
    inventory = StudyInventory(
        "/in/cd",
        skipped=[SkippedFile("README.TXT", "not DICOM")],
        unreadable=[UnreadableFile("DICOM/X/IM1", "truncated header", "1.2.826.0.1.3680043.8.498.5")],
    )
    _, selection = select_from_studies([_SdkStudy(series, inventory), _SdkStudy(other, inventory)])
    report = build_report(
        label_map(), 0.002, NAMES, REGIONS, MODEL, selection.to_dict(), selection.study_instance_uid, {},
        selection=selection,
    )  # fmt: skip
    target = write_report(report, tmp_path / "report.json")
    section = json.loads(target.read_text(encoding="utf-8"))["series_selection"]
    listed = {entry["series_instance_uid"]: entry for entry in section["series"]}
    assert set(listed) == set(series)
    assert listed[localizer[0]]["status"] == "ignored"
    assert listed[localizer[0]]["reason"].startswith("localizer")
    t1c = listed[uids["t1c"]]
    assert (t1c["status"], t1c["role"], t1c["lossy"]) == ("selected", "t1c", False)
    assert {r["series_instance_uid"] for r in t1c["runners_up"]} == {uids["mpr"], uids["t1c_ax"], uids["t1c_cor"]}
    mpr = listed[uids["mpr"]]
    assert (mpr["status"], mpr["role"]) == ("runner-up", "t1c")
    assert mpr["reason"].startswith("prefer=original: reformat (ImageType DERIVED\\SECONDARY\\MPR)")
    assert listed[uids["t2w_nd"]]["reason"].startswith("prefer=distortion_corrected: not distortion-corrected")
    assert {f["series_instance_uid"] for f in section["foreign_series"]} == set(other)
    assert all(f["reason"].startswith("another patient (PatientID 'P2'") for f in section["foreign_series"])
    assert section["skipped_files"] == [{"path": "README.TXT", "reason": "not DICOM"}]
    assert section["unreadable_files"][0]["path"] == "DICOM/X/IM1"
    assert section["policy"]["prefer"][0] == "original"
    assert "MIP" in section["policy"]["never_used_image_types"]
    assert report["input_series"]["t1c"]["runners_up"]
    assert "series_selection" not in make_report()  # without a selection the report keeps its old shape


def test_report_carries_coverage_and_its_warning() -> None:
    coverage = {"head_fraction": 0.33, "by_series": {"t2f": 0.33, "t1c": 1.0}, "min_head_coverage": 0.9,
                "warning": "only 33% of the head is covered by every series"}
    report = build_report(label_map(), 0.002, NAMES, REGIONS, MODEL, {}, "1.2", {}, coverage=coverage)
    assert report["coverage"] == coverage
    assert report["warnings"] == ["only 33% of the head is covered by every series"]
    complete = build_report(label_map(), 0.002, NAMES, REGIONS, MODEL, {}, "1.2", {},
                            coverage={**coverage, "head_fraction": 1.0, "warning": None})
    assert complete["warnings"] == [] and complete["coverage"]["head_fraction"] == 1.0
    assert "coverage" not in make_report() and "warnings" not in make_report()
