"""Enhanced MR and Legacy Converted Enhanced MR series are loaded, built and referenced like classic ones."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence

from operators.multiframe import (
    ENHANCED_MR_IMAGE_STORAGE,
    LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE,
    frame_source,
)
from operators.seg_writer import write_segmentation
from operators.study_loader import read_folder, read_instances
from operators.volume import VolumeError, series_to_volume, sort_slices
from tests.support.paths import REPO

THRESHOLD_MODEL = REPO / "tests" / "models" / "threshold"


def legacy_converted(datasets: list[Dataset]) -> Dataset:
    """highdicom's Legacy Converted Enhanced MR Image of one classic series."""
    first = datasets[0]
    image = hd.legacy.LegacyConvertedEnhancedMRImage(
        datasets,
        series_instance_uid=hd.UID(),
        series_number=int(first.SeriesNumber),
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    # highdicom appends " (enhanced conversion)", which reads as "contrast-enhanced" to the selector;
    # scanners and archives keep the protocol's description
    image.SeriesDescription = first.SeriesDescription
    return image


def enhanced_mr(datasets: list[Dataset], agent: str | None = None) -> Dataset:
    """A true Enhanced MR Image from the legacy conversion: SOP class, MR functional groups and the
    Enhanced Contrast/Bolus module instead of the 'unassigned' classic attributes."""
    image = legacy_converted(datasets)
    first = datasets[0]
    image.SOPClassUID = ENHANCED_MR_IMAGE_STORAGE
    image.file_meta.MediaStorageSOPClassUID = ENHANCED_MR_IMAGE_STORAGE
    shared = image.SharedFunctionalGroupsSequence[0]
    del shared.UnassignedSharedConvertedAttributesSequence
    for item in image.PerFrameFunctionalGroupsSequence:
        del item.UnassignedPerFrameConvertedAttributesSequence
    timing = Dataset()
    timing.RepetitionTime = first.RepetitionTime
    timing.FlipAngle = first.FlipAngle
    timing.EchoTrainLength = first.EchoTrainLength
    echo = Dataset()
    echo.EffectiveEchoTime = float(first.EchoTime)
    modifier = Dataset()
    modifier.InversionRecovery = "YES" if "InversionTime" in first else "NO"
    if "InversionTime" in first:
        modifier.InversionTimes = [float(first.InversionTime)]
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    shared.MREchoSequence = Sequence([echo])
    shared.MRModifierSequence = Sequence([modifier])
    image.EchoPulseSequence = "GRADIENT" if "GR" in list(first.ScanningSequence) else "SPIN"
    image.MRAcquisitionType = first.MRAcquisitionType
    image.PulseSequenceName = first.SequenceName
    for keyword in ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume"):
        image.pop(keyword, None)
    if agent:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "C0000", "99LOCAL", agent
        code.ContrastBolusAgentNumber = 1
        image.ContrastBolusAgentSequence = Sequence([code])
        for item in image.PerFrameFunctionalGroupsSequence:
            usage = Dataset()
            usage.ContrastBolusAgentNumber = 1
            usage.ContrastBolusAgentAdministered = "YES"
            item.ContrastBolusUsageSequence = Sequence([usage])
    return image


def _write(dataset: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def classic(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    """A classic T1c series (oblique axial, anisotropic pixels, contrast agent), one file per slice."""
    from app.synthetic_study import SeriesSpec, write_study
    from segmamba.synthetic import Lesion, Phantom

    phantom = Phantom(center=(2.0, -8.0, 15.0), lesion=Lesion(center=(-26.0, 2.0, 36.0), radius=22.0, seed=1))
    folder = tmp_path_factory.mktemp("classic")
    write_study(folder, phantom, [SeriesSpec("t1c", "T1 MPRAGE POST", "axial", tilt_deg=(8.0, 0.0, 4.0), rows=40,
                                             columns=44, slices=12, pixel_spacing=(5.0, 4.5), slice_thickness=6.0)],
                seed=3)
    return read_instances(folder)


def test_legacy_converted_frames_carry_the_classic_attributes(classic: list[Dataset], tmp_path: Path) -> None:
    original = legacy_converted(classic)
    _write(original, tmp_path / "in" / "DICOM" / "MF0001")
    contents = read_folder(tmp_path / "in")
    frames = contents.instances
    assert len(frames) == len(classic) and not contents.inventory.unreadable
    assert len({str(ds.SOPInstanceUID) for ds in frames}) == len(frames)
    assert [int(ds.InstanceNumber) for ds in frames] == list(range(1, len(frames) + 1))
    by_position = {tuple(round(float(v), 3) for v in ds.ImagePositionPatient): ds for ds in classic}
    for frame in frames:
        source, number = frame_source(frame)
        assert str(source.SOPInstanceUID) == str(original.SOPInstanceUID) and number == int(frame.InstanceNumber)
        assert str(frame.SOPClassUID) == LEGACY_CONVERTED_ENHANCED_MR_IMAGE_STORAGE
        assert frame.relative_path == "DICOM/MF0001"
        match = by_position[tuple(round(float(v), 3) for v in frame.ImagePositionPatient)]
        for keyword in ("ImageOrientationPatient", "PixelSpacing", "SliceThickness", "SpacingBetweenSlices",
                        "RescaleSlope", "RescaleIntercept", "EchoTime", "RepetitionTime", "FlipAngle",
                        "ScanningSequence", "MRAcquisitionType", "ContrastBolusAgent", "StudyInstanceUID",
                        "Modality", "SeriesDescription", "ProtocolName"):
            assert _same(frame.get(keyword), match.get(keyword)), keyword
        assert list(frame.ImageType)[:2] == ["ORIGINAL", "PRIMARY"]
        assert str(frame.SeriesInstanceUID) == str(original.SeriesInstanceUID)
        assert frame.SeriesDescription == original.SeriesDescription == "T1 MPRAGE POST"


def _same(value: Any, expected: Any) -> bool:
    """Equal, numbers within 1e-4 (highdicom recomputes SpacingBetweenSlices from the positions)."""
    if isinstance(expected, pydicom.valuerep.DSfloat | pydicom.multival.MultiValue) and expected is not None:
        return np.allclose(np.array(value, dtype=float), np.array(expected, dtype=float), atol=1e-4)
    return value == expected


def test_multiframe_volume_equals_the_classic_volume(classic: list[Dataset], tmp_path: Path) -> None:
    expected = series_to_volume(classic)
    for name, image in (("legacy", legacy_converted(classic)), ("enhanced", enhanced_mr(classic, "Gadobutrol"))):
        _write(image, tmp_path / name / "IM1")
        volume = series_to_volume(read_instances(tmp_path / name))
        np.testing.assert_array_equal(volume.array, expected.array)
        np.testing.assert_allclose(volume.affine, expected.affine, atol=1e-4)
        assert volume.series_instance_uid == str(image.SeriesInstanceUID)


def test_enhanced_mr_functional_groups_become_classic_attributes(classic: list[Dataset], tmp_path: Path) -> None:
    image = enhanced_mr(classic, "Gadobutrol")
    image.SharedFunctionalGroupsSequence[0].MRModifierSequence[0].InversionRecovery = "YES"
    image.SharedFunctionalGroupsSequence[0].MRModifierSequence[0].InversionTimes = [900.0]
    image.SharedFunctionalGroupsSequence[0].MRImageFrameTypeSequence[0].FrameType = [
        "ORIGINAL", "PRIMARY", "T1", "NONE"]
    _write(image, tmp_path / "in" / "IM1")
    frames = read_instances(tmp_path / "in")
    first = classic[0]
    for frame in frames:
        assert str(frame.SOPClassUID) == ENHANCED_MR_IMAGE_STORAGE
        assert float(frame.EchoTime) == float(first.EchoTime)
        assert float(frame.RepetitionTime) == float(first.RepetitionTime)
        assert float(frame.FlipAngle) == float(first.FlipAngle)
        assert float(frame.InversionTime) == 900.0
        assert list(frame.ScanningSequence) == ["IR", "SE"]
        assert frame.MRAcquisitionType == first.MRAcquisitionType
        assert frame.SequenceName == first.SequenceName
        assert frame.ContrastBolusAgent == "Gadobutrol"
        assert list(frame.ImageType) == ["ORIGINAL", "PRIMARY", "T1", "NONE"]
    unenhanced = enhanced_mr(classic, None)
    _write(unenhanced, tmp_path / "pre" / "IM1")
    assert all("ContrastBolusAgent" not in frame for frame in read_instances(tmp_path / "pre"))
    not_given = enhanced_mr(classic, "Gadobutrol")
    for item in not_given.PerFrameFunctionalGroupsSequence:
        item.ContrastBolusUsageSequence[0].ContrastBolusAgentAdministered = "NO"
    _write(not_given, tmp_path / "not-given" / "IM1")
    assert all("ContrastBolusAgent" not in frame for frame in read_instances(tmp_path / "not-given"))


def test_temporal_positions_in_a_multiframe_file_are_4d(classic: list[Dataset], tmp_path: Path) -> None:
    image = enhanced_mr(classic)
    for number, item in enumerate(image.PerFrameFunctionalGroupsSequence):
        item.FrameContentSequence[0].TemporalPositionIndex = 1 + number % 2
    _write(image, tmp_path / "in" / "IM1")
    with pytest.raises(VolumeError, match="2 temporal positions"):
        series_to_volume(read_instances(tmp_path / "in"))


def test_frames_of_two_multiframe_files_in_one_series_are_refused(classic: list[Dataset], tmp_path: Path) -> None:
    """One series must be one multi-frame instance: a SEG can reference only one."""
    ordered = sort_slices(classic)
    first, second = legacy_converted(ordered[:6]), legacy_converted(ordered[6:])
    second.SeriesInstanceUID = first.SeriesInstanceUID
    _write(first, tmp_path / "in" / "IM1")
    _write(second, tmp_path / "in" / "IM2")
    with pytest.raises(VolumeError, match="frames of 2 multi-frame instance"):
        series_to_volume(read_instances(tmp_path / "in"))


def test_functional_groups_that_miss_frames_make_the_file_unreadable(classic: list[Dataset], tmp_path: Path) -> None:
    image = legacy_converted(classic)
    image.PerFrameFunctionalGroupsSequence = Sequence(list(image.PerFrameFunctionalGroupsSequence)[:-1])
    _write(image, tmp_path / "in" / "IM1")
    _write(classic[0], tmp_path / "in" / "other")  # the folder still holds one instance
    unreadable = read_folder(tmp_path / "in").inventory.unreadable
    assert [(f.path, f.series_instance_uid) for f in unreadable] == [("IM1", str(image.SeriesInstanceUID))]
    assert "PerFrameFunctionalGroupsSequence has 11 items" in unreadable[0].reason


def test_compressed_multiframe_decodes_per_frame_and_names_the_damaged_frame(
    classic: list[Dataset], tmp_path: Path
) -> None:
    image = legacy_converted(classic)
    image.compress(pydicom.uid.JPEG2000Lossless)
    _write(image, tmp_path / "ok" / "IM1")
    np.testing.assert_array_equal(series_to_volume(read_instances(tmp_path / "ok")).array,
                                  series_to_volume(classic).array)
    frames = list(generate_frames(image.PixelData, number_of_frames=int(image.NumberOfFrames)))
    frames[4] = frames[4][: len(frames[4]) // 2]
    image.PixelData = encapsulate([frame + b"\x00" * (len(frame) % 2) for frame in frames])
    _write(image, tmp_path / "bad" / "sub" / "IM1")
    with pytest.raises(VolumeError, match="file sub/IM1 frame 5: JPEG 2000 codestream does not end with EOC") as raised:
        series_to_volume(read_instances(tmp_path / "bad"))
    assert raised.value.file == "sub/IM1" and str(image.SeriesInstanceUID) in raised.value.series


def test_seg_on_a_multiframe_reference_references_the_original_instance(
    classic: list[Dataset], tmp_path: Path, brats_segments: list[Any],
    dciodvfy_errors: Callable[[Path], list[str]],
) -> None:
    image = enhanced_mr(classic, "Gadobutrol")
    _write(image, tmp_path / "in" / "IM1")
    frames = read_instances(tmp_path / "in")
    volume = series_to_volume(frames)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[10:25, 12:30, 3:8] = 2
    labels[14:20, 16:24, 4:6] = 1
    random_order = list(reversed(frames))
    path = write_segmentation(labels, random_order, brats_segments, "Test", "1.0", tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == image.SeriesInstanceUID
    assert [item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence] == [image.SOPInstanceUID]
    # the same label map on the classic series gives the same segment voxels at the same places
    classic_path = write_segmentation(labels, classic, brats_segments, "Test", "1.0", tmp_path / "classic.dcm")
    expected = _voxels_by_position(hd.seg.segread(classic_path))
    assert _voxels_by_position(seg) == expected and expected
    frame_numbers = {
        int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        for item in seg.PerFrameFunctionalGroupsSequence
    }
    assert frame_numbers <= set(range(1, int(image.NumberOfFrames) + 1)) and len(frame_numbers) == 5


def _voxels_by_position(seg: Any) -> dict[tuple[int, tuple[float, ...]], int]:
    """(segment, frame position) -> number of set pixels, for every non-empty SEG frame."""
    found = {}
    pixels = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = tuple(round(float(v), 2) for v in item.PlanePositionSequence[0].ImagePositionPatient)
        if frame.any():
            found[(segment, position)] = int((frame > 0).sum())
    return found


def test_study_of_enhanced_mr_series_is_segmented(
    small_study: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    dciodvfy_errors: Callable[[Path], list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through `python -m app`: four Enhanced MR files (one per series) are selected like classic series
    and the SEG, SR, RTSTRUCT and SC overlay reference the T1c's multi-frame instance (and its frames)."""
    from app.cli import main

    monkeypatch.setenv("SEGMAMBA_OUTPUT_RTSTRUCT", "true")
    monkeypatch.setenv("SEGMAMBA_OUTPUT_SC", "true")

    folder = tmp_path / "in"
    originals = {}
    for info in small_study.series:
        datasets = [pydicom.dcmread(path) for path in info.files]
        agent = "Gadobutrol" if info.spec.contrast == "t1c" else None
        originals[info.spec.contrast] = _write(enhanced_mr(sort_slices(datasets), agent),
                                               folder / f"S{info.series_number}" / "IM1")
    (folder / "README.TXT").write_text("Patient CD\n")
    code = main(["-i", str(folder), "-o", str(tmp_path / "out"), "-m", str(THRESHOLD_MODEL)])
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    seg_path = tmp_path / "out" / "segmentation.dcm"
    assert dciodvfy_errors(seg_path) == []
    t1c = pydicom.dcmread(originals["t1c"], stop_before_pixels=True)
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == t1c.SeriesInstanceUID
    assert [item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence] == [t1c.SOPInstanceUID]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    files = {o["kind"]: [tmp_path / "out" / name for name in o["files"]] for o in report["outputs"]}
    assert sorted(files) == ["rtstruct", "sc", "seg", "sr"]
    for path in (*files["sr"], *files["rtstruct"], files["sc"][0]):
        assert dciodvfy_errors(path) == [], path
    structure = pydicom.dcmread(files["rtstruct"][0])
    images = [image for roi in structure.ROIContourSequence for contour in roi.get("ContourSequence", [])
              for image in contour.ContourImageSequence]
    assert images and {i.ReferencedSOPInstanceUID for i in images} == {t1c.SOPInstanceUID}
    assert {int(i.ReferencedFrameNumber) for i in images} <= set(range(1, int(t1c.NumberOfFrames) + 1))
    overlay = pydicom.dcmread(files["sc"][0], stop_before_pixels=True).SourceImageSequence[0]
    assert overlay.ReferencedSOPInstanceUID == t1c.SOPInstanceUID and int(overlay.ReferencedFrameNumber) >= 1
    evidence = pydicom.dcmread(files["sr"][0]).CurrentRequestedProcedureEvidenceSequence[0]
    referenced_uids = {i.ReferencedSOPInstanceUID for series in evidence.ReferencedSeriesSequence
                       for i in series.ReferencedSOPSequence}
    assert {t1c.SOPInstanceUID, seg.SOPInstanceUID} <= referenced_uids


def test_split_frames_share_no_mutable_elements(classic: list[Dataset], tmp_path: Path) -> None:
    """Changing one frame's attribute (as a later stage might) leaves the other frames alone."""
    _write(legacy_converted(classic), tmp_path / "in" / "IM1")
    frames = read_instances(tmp_path / "in")
    frames[0].RescaleSlope = 9.0
    frames[0].SeriesDescription = "changed"
    assert all(float(ds.RescaleSlope) != 9.0 and ds.SeriesDescription != "changed" for ds in frames[1:])
    copied = copy.deepcopy(frames[1])
    assert frame_source(copied)[1] == frame_source(frames[1])[1]
    shutil.rmtree(tmp_path / "in")
