"""The DICOM outputs besides the SEG (SR, RTSTRUCT, SC overlay), written by the batch application:
valid objects (dciodvfy, dsrdump), listed in report.json, and the same findings as the SEG and report."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as MplPath

from app.cli import main
from app.config import load_settings
from app.synthetic_study import SeriesSpec, write_study
from segmamba.synthetic import Lesion, Phantom
from tests.support.paths import REPO

THRESHOLD_MODEL = REPO / "tests" / "models" / "threshold"
CARD_COLOURS = {entry["name"]: entry["color"] for entry in
                json.loads((THRESHOLD_MODEL / "metadata.json").read_text())["labels"]}
ALL_OUTPUTS = {"SEGMAMBA_OUTPUT_SR": "true", "SEGMAMBA_OUTPUT_RTSTRUCT": "true", "SEGMAMBA_OUTPUT_SC": "yes"}
# T1c references with non-square pixels and a matrix whose width is not a multiple of 8: axial, and oblique sagittal.
REFERENCES = {
    "axial": dict(orientation="axial", rows=100, columns=90, slices=40, pixel_spacing=(2.0, 1.7),
                  slice_thickness=3.0),
    "oblique": dict(orientation="sagittal", tilt_deg=(11.0, -7.0, 5.0), rows=96, columns=102, slices=44,
                    pixel_spacing=(1.9, 2.2), slice_thickness=2.8),
}


def run_batch(study_dir: Path, out: Path, environment: dict[str, str], options: tuple[str, ...] = ()) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        code = main(["-i", str(study_dir), "-o", str(out), "-m", str(THRESHOLD_MODEL), "--no-progress", *options])
    assert code == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module", params=sorted(REFERENCES))
def result(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A study segmented with every output switched on: its input datasets, output folder and report."""
    folder = tmp_path_factory.mktemp(f"outputs-{request.param}")
    specs = [
        SeriesSpec("t1n", "t1_mprage_sag_p2_iso", "sagittal", rows=80, columns=88, slices=56,
                   pixel_spacing=(2.4, 2.4), slice_thickness=2.8),
        SeriesSpec("t1c", "AX T1 POST GAD", **REFERENCES[request.param]),
        SeriesSpec("t2w", "Ax T2 FSE", "axial", rows=80, columns=80, slices=36, pixel_spacing=(2.6, 2.6),
                   slice_thickness=4.0),
        SeriesSpec("t2f", "Ax T2 FLAIR", "axial", rows=80, columns=80, slices=36, pixel_spacing=(2.6, 2.6),
                   slice_thickness=4.0),
    ]
    phantom = Phantom(center=(2.0, -8.0, 15.0), lesion=Lesion(center=(-26.0, 2.0, 36.0), radius=22.0, seed=4))
    study = write_study(folder / "in", phantom, specs, seed=6)
    report = run_batch(folder / "in", folder / "out", ALL_OUTPUTS)
    t1c = study.by_description("AX T1 POST GAD")
    sources = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(f) for f in t1c.files)}
    yield {"out": folder / "out", "report": report, "t1c": sources, "study": study}
    shutil.rmtree(folder, ignore_errors=True)


def dsrdump(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("dsrdump")
    assert binary, "dcmtk's dsrdump is not installed; run tools/setup --dev"
    return subprocess.run([binary, "-Ee", str(path)], capture_output=True, text=True, timeout=60)


def test_every_dicom_output_is_listed_in_the_report(result: dict[str, Any]) -> None:
    out, report = result["out"], result["report"]
    outputs = report["outputs"]
    assert [o["kind"] for o in outputs] == ["seg", "sr", "rtstruct", "sc"]
    assert outputs[0]["files"] == ["segmentation.dcm"]
    listed = {name for o in outputs for name in o["files"]}
    assert listed == {p.relative_to(out).as_posix() for p in out.rglob("*.dcm")}  # nothing unlisted, nothing missing
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left behind
    for path in out.rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    series = set()
    for output in outputs:
        headers = [pydicom.dcmread(out / name, stop_before_pixels=True) for name in output["files"]]
        assert [str(h.SOPInstanceUID) for h in headers] == output["sop_instance_uids"]
        assert {str(h.SOPClassUID) for h in headers} == {output["sop_class_uid"]}
        assert {str(h.SeriesInstanceUID) for h in headers} == {output["series_instance_uid"]}
        assert {str(h.StudyInstanceUID) for h in headers} == {result["study"].study_instance_uid}
        assert all(h.get("SeriesDate") and h.get("SeriesTime") for h in headers)
        series.add(output["series_instance_uid"])
    assert len(series) == 4 and not series & {s.series_instance_uid for s in result["study"].series}
    assert outputs[1]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert outputs[2]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.481.3"  # RT Structure Set
    assert outputs[3]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture


def test_sr_is_valid_and_holds_the_report_volumes(
    result: dict[str, Any], dciodvfy_errors: Callable[[Path], list[str]]
) -> None:
    path, report = result["out"] / "measurement-report.dcm", result["report"]
    assert dciodvfy_errors(path) == []
    dump = dsrdump(path)
    assert dump.returncode == 0 and "E:" not in dump.stderr and "W:" not in dump.stderr, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout and '(121007,DCM,"Device")' in dump.stdout
    seg = pydicom.dcmread(result["out"] / "segmentation.dcm", stop_before_pixels=True)
    segment_numbers = {str(s.SegmentLabel): int(s.SegmentNumber) for s in seg.SegmentSequence}
    sr = pydicom.dcmread(path)
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    groups = {}
    for group in measurements.ContentSequence:  # (DCM 126010 Imaging Measurements)
        items = {str(i.ConceptNameCodeSequence[0].CodeMeaning): i for i in group.ContentSequence}
        assert items["Algorithm Name"].TextValue == report["model"]["name"]
        volume = items["Volume"]
        assert volume.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mL"
        groups[str(items["Tracking Identifier"].TextValue)] = (float(volume.MeasuredValueSequence[0].NumericValue),
                                                                group.ContentSequence)
    assert len(groups) == len(report["labels"]) + len(report["regions"])
    for name, entry in report["labels"].items():
        value, content = groups[f"{name} (label {entry['label']})"]
        assert value == entry["volume_ml"]  # the same number, not a recomputation
        by_name = {str(i.ConceptNameCodeSequence[0].CodeMeaning): i for i in content}
        segment = by_name["Referenced Segment"].ReferencedSOPSequence[0]
        assert segment.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert int(segment.ReferencedSegmentNumber) == segment_numbers[name]
        sources = {str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in content
                   if i.ConceptNameCodeSequence[0].CodeMeaning == "Source Image for Segmentation"}
        assert sources and sources <= set(result["t1c"])  # the segment's slices of the source series
    for region, entry in report["regions"].items():
        matches = [value for key, (value, _items) in groups.items() if key.startswith(f"{region} ")]
        assert matches == [entry["volume_ml"]]
    evidence = {str(i.ReferencedSOPInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
    assert {str(seg.SOPInstanceUID), *result["t1c"]} <= evidence


def rasterise(
    structure: pydicom.Dataset, roi_number: int, sources: dict[str, pydicom.Dataset], rule: str
) -> dict[str, Any]:
    """Contours of one ROI filled on their slices by the even-odd rule: SOP UID -> [row, column] mask.

    ``rule``: "centres" takes the voxels whose centres lie inside a polygon (matplotlib), "rounded"
    rounds the vertices and includes the boundary (OpenCV fillPoly, as rt-utils reads contours back).

    Points are placed on each slice by its own header (PS3.3 C.7.6.2: column along the row direction times
    PixelSpacing[1], row along the column direction times PixelSpacing[0]); each must lie in the slice's plane.
    """
    roi = next(r for r in structure.ROIContourSequence if int(r.ReferencedROINumber) == roi_number)
    masks: dict[str, Any] = {}
    for contour in roi.get("ContourSequence", []):
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        uid = str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID)
        ds = sources[uid]
        origin = np.array(ds.ImagePositionPatient, dtype=float)
        cosines = np.array(ds.ImageOrientationPatient, dtype=float)
        row_dir, col_dir = cosines[:3], cosines[3:]
        points = np.array(contour.ContourData, dtype=float).reshape(-1, 3) - origin
        assert int(contour.NumberOfContourPoints) == len(points)
        assert np.abs(points @ np.cross(row_dir, col_dir)).max() < 0.01  # on the slice plane
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        pixels = np.stack([points @ row_dir / column_spacing, points @ col_dir / row_spacing], axis=1)
        filled = np.zeros((int(ds.Rows), int(ds.Columns)), np.uint8)
        if rule == "rounded":
            cv2.fillPoly(filled, [np.round(pixels).astype(np.int32)], 1)
        else:
            rows, columns = np.mgrid[0:filled.shape[0], 0:filled.shape[1]]
            centres = np.stack([columns.ravel(), rows.ravel()], axis=1)
            filled[:] = MplPath(pixels).contains_points(centres).reshape(filled.shape)
        masks[uid] = masks.get(uid, np.zeros_like(filled)) ^ filled
    return masks


@pytest.mark.parametrize("rule", ["centres", "rounded"])
def test_rtstruct_is_valid_and_its_contours_give_back_the_seg(
    result: dict[str, Any], rule: str, dciodvfy_errors: Callable[[Path], list[str]]
) -> None:
    path = result["out"] / "rtstruct.dcm"
    assert dciodvfy_errors(path) == []
    structure = pydicom.dcmread(path)
    seg = hd.seg.segread(result["out"] / "segmentation.dcm")
    t1c = result["t1c"]
    assert structure.StudyInstanceUID == seg.StudyInstanceUID
    frame_of_reference = structure.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    assert frame_of_reference == next(iter(t1c.values())).FrameOfReferenceUID
    rois = {str(r.ROIName): int(r.ROINumber) for r in structure.StructureSetROISequence}
    assert set(rois) == {str(s.SegmentLabel) for s in seg.SegmentSequence}
    uids = sorted(t1c)
    for segment in seg.SegmentSequence:
        name, number = str(segment.SegmentLabel), int(segment.SegmentNumber)
        truth = seg.get_pixels_by_source_instance(uids, segment_numbers=[number])[..., 0] > 0
        masks = rasterise(structure, rois[name], t1c, rule)
        back = np.stack([masks.get(uid, np.zeros(truth.shape[1:], np.uint8)) > 0 for uid in uids])
        dice = 2.0 * (truth & back).sum() / max(truth.sum() + back.sum(), 1)
        print(f"RTSTRUCT Dice ({rule}) {name}: {dice:.4f}")
        assert truth.sum() > 0 and dice >= 0.95, (name, dice)
        roi = next(r for r in structure.ROIContourSequence if int(r.ReferencedROINumber) == rois[name])
        assert [int(c) for c in roi.ROIDisplayColor] == CARD_COLOURS[name]


def test_sc_overlay_is_valid_labelled_derived_and_draws_the_seg(
    result: dict[str, Any], dciodvfy_errors: Callable[[Path], list[str]]
) -> None:
    out, report = result["out"], result["report"]
    files = next(o for o in report["outputs"] if o["kind"] == "sc")["files"]
    seg = hd.seg.segread(out / "segmentation.dcm")
    colours = {int(s.SegmentNumber): CARD_COLOURS[str(s.SegmentLabel)] for s in seg.SegmentSequence}
    drawn = 0
    for name in files:
        path = out / name
        image = pydicom.dcmread(path)
        assert "NOT FOR DIAGNOSIS" in image.SeriesDescription and "DERIVED" in image.SeriesDescription
        assert list(image.ImageType)[:2] == ["DERIVED", "SECONDARY"] and image.BurnedInAnnotation == "YES"
        assert "not for diagnosis" in image.DerivationDescription
        source_uid = str(image.SourceImageSequence[0].ReferencedSOPInstanceUID)
        source = result["t1c"][source_uid]
        assert (image.Rows, image.Columns) == (source.Rows, source.Columns)
        pixels = image.pixel_array
        for number, colour in colours.items():
            mask = seg.get_pixels_by_source_instance([source_uid], segment_numbers=[number])[0, ..., 0] > 0
            coloured = np.all(pixels == np.array(colour, dtype=np.uint8), axis=-1)
            assert not (coloured & ~mask).any(), name  # contours only on the label's voxels
            drawn += int(coloured.sum())
    assert drawn > 0
    for name in files[:: max(1, len(files) // 3)]:
        assert dciodvfy_errors(out / name) == []


def test_outputs_follow_their_switches(small_study: Any, tmp_path: Path) -> None:
    assert load_settings(environ={}).output_sr is True
    defaults = load_settings(environ={})
    assert (defaults.output_rtstruct, defaults.output_sc) == (False, False)
    chosen = load_settings(environ={"SEGMAMBA_OUTPUT_SR": "off", "SEGMAMBA_OUTPUT_SC": "1"})
    assert (chosen.output_sr, chosen.output_rtstruct, chosen.output_sc) == (False, False, True)
    study_dir = small_study.series[0].files[0].parent
    report = run_batch(study_dir, tmp_path / "out", {"SEGMAMBA_OUTPUT_SR": "false"})
    assert [o["kind"] for o in report["outputs"]] == ["seg"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["preview.png", "report.json", "segmentation.dcm"]
    report = run_batch(study_dir, tmp_path / "cli", {"SEGMAMBA_OUTPUT_SR": "false"}, ("--output-rtstruct",))
    assert [o["kind"] for o in report["outputs"]] == ["seg", "rtstruct"]  # the command line over the environment


def test_a_study_without_tumour_gets_valid_empty_outputs(
    tmp_path: Path, dciodvfy_errors: Callable[[Path], list[str]]
) -> None:
    """Zero volumes in the SR, ROIs declared without contours, one overlay image (the middle slice)."""
    small = dict(rows=48, columns=44, slices=24, pixel_spacing=(4.0, 4.4), slice_thickness=6.0)
    specs = [SeriesSpec("t1n", "t1_mprage_sag_p2_iso", "sagittal", **small),
             SeriesSpec("t1c", "AX T1 POST GAD", "axial", **small),
             SeriesSpec("t2w", "Ax T2 FSE", "axial", **small),
             SeriesSpec("t2f", "Ax T2 FLAIR", "axial", **small)]
    write_study(tmp_path / "in", Phantom(center=(2.0, -8.0, 15.0), lesion=None), specs, seed=3)
    report = run_batch(tmp_path / "in", tmp_path / "out", ALL_OUTPUTS)
    out = tmp_path / "out"
    assert report["regions"]["WT"]["volume_ml"] == 0.0
    assert [o["kind"] for o in report["outputs"]] == ["seg", "sr", "rtstruct", "sc"]
    for name in ("measurement-report.dcm", "rtstruct.dcm", *next(o for o in report["outputs"]
                                                                 if o["kind"] == "sc")["files"]):
        assert dciodvfy_errors(out / name) == [], name
    dump = dsrdump(out / "measurement-report.dcm")
    assert dump.returncode == 0 and dump.stdout.count('="0.0" (mL,UCUM,"milliliter")') == 6, dump.stdout
    structure = pydicom.dcmread(out / "rtstruct.dcm")
    assert len(structure.StructureSetROISequence) == 3
    assert not any("ContourSequence" in roi for roi in structure.ROIContourSequence)
    assert len(next(o for o in report["outputs"] if o["kind"] == "sc")["files"]) == 1


def test_sr_references_a_label_without_voxels_by_its_segment_and_source_series(
    small_study: Any, brats_segments: list[Any], tmp_path: Path, dciodvfy_errors: Callable[[Path], list[str]]
) -> None:
    """A SEG omits the frames of an empty segment: the SR still names that segment, with the source series."""
    from operators.seg_writer import write_segmentation
    from operators.sr_writer import write_measurement_report
    from operators.volume import sort_slices

    t1c = sort_slices([pydicom.dcmread(f) for f in small_study.by_description("AX T1 POST GAD").files])
    labels = np.zeros((int(t1c[0].Columns), int(t1c[0].Rows), len(t1c)), np.uint8)
    labels[10:20, 12:22, 5:9] = 2  # oedema only
    write_segmentation(labels, t1c, brats_segments, "test-model", "1.0", tmp_path / "seg.dcm")
    seg = pydicom.dcmread(tmp_path / "seg.dcm")
    report = {"labels": {s.name: {"label": s.label, "volume_ml": 6.4 if s.label == 2 else 0.0} for s in brats_segments},
              "regions": {"WT": {"labels": [1, 2, 3], "volume_ml": 6.4}}}
    write_measurement_report(seg, report, t1c, "test-model", "1.0", tmp_path / "sr.dcm")
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    dump = dsrdump(tmp_path / "sr.dcm")
    assert dump.returncode == 0 and not dump.stderr, dump.stderr
    assert dump.stdout.count('"Referenced Segment"') == 3
    assert f'"Source Series for Segmentation")="{t1c[0].SeriesInstanceUID}"' in dump.stdout  # the empty segments


def test_a_superseding_revision_moves_the_srs_segment_references_with_the_seg(result: dict[str, Any],
                                                                                tmp_path: Path) -> None:
    """The node files a revised result into the first result's SEG series (worker.mark_superseding): the SR
    must then reference the SEG in that series, and report.json's outputs must name it."""
    from app.node.worker import mark_superseding

    out = tmp_path / "out"
    shutil.copytree(result["out"], out)
    written = str(pydicom.dcmread(out / "segmentation.dcm").SeriesInstanceUID)
    first_result_series = pydicom.uid.generate_uid()
    files = {"segmentation": str(out / "segmentation.dcm"), "report": str(out / "report.json")}

    mark_superseding(files, first_result_series, 1, "1.2.3.4")

    def uids(dataset: pydicom.Dataset) -> set[str]:
        found: set[str] = set()
        dataset.walk(lambda ds, element: found.add(str(element.value)) if element.VR == "UI" else None)
        return found

    sr = pydicom.dcmread(out / "measurement-report.dcm")
    assert first_result_series in uids(sr) and written not in uids(sr)
    assert pydicom.dcmread(out / "segmentation.dcm").SeriesInstanceUID == first_result_series
    report = json.loads((out / "report.json").read_text())
    assert {o["kind"]: o["series_instance_uid"] for o in report["outputs"]}["seg"] == first_result_series
    assert report["revision"] == 2
    assert dsrdump(out / "measurement-report.dcm").returncode == 0
