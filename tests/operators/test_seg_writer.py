"""Label map -> DICOM SEG: geometry round trip through the SEG's own headers, validity, policies."""

from __future__ import annotations

import datetime
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from app.synthetic_study import truth_labels
from operators.seg_header import character_set_for, clean_source_header
from operators.seg_writer import SegmentSpec, write_segmentation
from operators.volume import resample_to_grid, series_to_volume
from segmamba.synthetic import Phantom
from tests.conftest import BRATS_SEGMENTS, FLAIR_BY_ORIENTATION, REFERENCE_DESCRIPTION
from tests.support.seg_geometry import seg_dice, seg_points

WHOLE_TUMOUR = SegmentSpec.from_dict(
    {"label": 1, "name": "Whole tumour", "type": {"scheme": "SCT", "value": "108369006", "meaning": "Neoplasm"},
     "color": [255, 128, 0]}
)


@pytest.mark.parametrize("orientation", sorted(FLAIR_BY_ORIENTATION))
def test_seg_on_each_orientation_lands_on_the_lesion(
    orientation: str,
    tmp_path: Path,
    study: Any,
    study_series: dict[str, list[pydicom.Dataset]],
    phantom: Phantom,
) -> None:
    """Threshold a FLAIR on its own grid, write the SEG against it, and place the SEG in space."""
    description = FLAIR_BY_ORIENTATION[orientation]
    datasets = study_series[description]
    mask = (series_to_volume(datasets).array > 700.0).astype(np.uint8)
    path = write_segmentation(mask, datasets, [WHOLE_TUMOUR], "SegMamba", "0.1", tmp_path / "seg.dcm")
    assert path.stat().st_mode & 0o777 == 0o644, "another uid (the PACS gateway) reads the SEG"
    seg = hd.seg.segread(path)
    truth_count = int((truth_labels(phantom, study.by_description(description)) > 0).sum())
    assert seg_dice(seg, {1}, phantom, {1, 2, 3}, truth_count) >= 0.95


def test_multi_series_study_round_trip(
    tmp_path: Path,
    study: Any,
    study_series: dict[str, list[pydicom.Dataset]],
    phantom: Phantom,
    brats_segments: list[SegmentSpec],
    dciodvfy_errors: Callable[[Path], list[str]],
) -> None:
    """All contrasts onto the T1c grid, labels by thresholds, SEG written, read back, placed."""
    reference_datasets = study_series[REFERENCE_DESCRIPTION]
    reference = series_to_volume(reference_datasets)

    def on_reference(description: str) -> np.ndarray:
        volume = series_to_volume(study_series[description])
        return resample_to_grid(volume, reference.shape, reference.affine, order=1)

    t1c, flair = reference.array, on_reference("T2W_FLAIR")
    assert on_reference("t1_mprage_sag_p2_iso").shape == on_reference("Ax T2 FSE").shape == reference.shape
    whole = flair > 700.0
    labels = np.where(whole, 2, 0).astype(np.uint8)
    labels[whole & (t1c > 900.0)] = 3
    labels[whole & (t1c < 350.0)] = 1

    path = write_segmentation(labels, reference_datasets, brats_segments, "SegMamba", "0.1",
                              tmp_path / "out" / "seg.dcm", series_description="SegMamba BraTS")
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    truth = truth_labels(phantom, study.by_description(REFERENCE_DESCRIPTION))
    assert seg_dice(seg, {1, 2, 3}, phantom, {1, 2, 3}, int((truth > 0).sum())) >= 0.95
    for number, spec in enumerate(brats_segments, start=1):
        count = int((truth == spec.label).sum())
        assert seg_dice(seg, {number}, phantom, {spec.label}, count) >= 0.9, spec.name


def test_seg_headers(
    tmp_path: Path,
    study: Any,
    study_series: dict[str, list[pydicom.Dataset]],
    phantom: Phantom,
    brats_segments: list[SegmentSpec],
) -> None:
    reference_datasets = study_series[REFERENCE_DESCRIPTION]
    info = study.by_description(REFERENCE_DESCRIPTION)
    path = write_segmentation(truth_labels(phantom, info), reference_datasets, brats_segments,
                              "SegMamba", "1.2.3", tmp_path / "seg.dcm", series_description="SegMamba tumour")
    seg = hd.seg.segread(path)
    assert seg.StudyInstanceUID == study.study_instance_uid
    assert seg.FrameOfReferenceUID == study.frame_of_reference_uid
    assert seg.SeriesInstanceUID != info.series_instance_uid
    assert seg.SeriesDescription == "SegMamba tumour" and seg.SegmentationType == "FRACTIONAL"
    assert seg.SegmentationFractionalType == "OCCUPANCY" and seg.MaximumFractionalValue == 255
    assert set(np.unique(seg.pixel_array).tolist()) == {0, 255}  # a binary mask, one byte per pixel
    # What PACS worklists and series lists show.
    today = datetime.date.today().strftime("%Y%m%d")
    assert seg.SeriesDate == seg.ContentDate == today and seg.SeriesTime and seg.ContentTime
    assert (seg.Manufacturer, seg.ManufacturerModelName, seg.SoftwareVersions) == ("SegMamba node", "SegMamba", "1.2.3")
    assert (seg.ContentLabel, seg.ContentDescription, str(seg.ContentCreatorName)) == (
        "SEGMAMBA", "SegMamba tumour", "SegMamba^Node")
    assert seg.BodyPartExamined == "HEAD" and seg.Modality == "SEG" and seg.SeriesNumber == 9000
    assert seg.StudyDescription == reference_datasets[0].StudyDescription
    assert seg.AccessionNumber == study.accession_number
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == info.series_instance_uid
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} <= {
        ds.SOPInstanceUID for ds in reference_datasets
    }
    assert seg.NumberOfFrames < 3 * info.spec.slices  # empty frames omitted
    for item, spec in zip(seg.SegmentSequence, brats_segments, strict=True):
        assert item.SegmentLabel == spec.name
        category = item.SegmentedPropertyCategoryCodeSequence[0]
        assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "49755003")
        kind = item.SegmentedPropertyTypeCodeSequence[0]
        assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == spec.property_type
        assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "SegMamba"
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmVersion == "1.2.3"
        expected = hd.color.CIELabColor.from_rgb(*spec.color_rgb).value
        assert tuple(item.RecommendedDisplayCIELabValue) == expected
        assert tuple(hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()) == (
            spec.color_rgb
        )


@pytest.mark.parametrize(("rows", "columns"), [(125, 150), (117, 131), (64, 256)])
def test_any_matrix_is_whole_bytes_per_frame_and_reads_back_exactly(
    rows: int, columns: int, tmp_path: Path, dciodvfy_errors: Callable[[Path], list[str]]
) -> None:
    """Rows x Columns not a multiple of 8 (and odd, so the pixel data is padded): one byte per pixel, valid,
    and the reader gives back exactly the label map (operators.seg_writer's encoding decision)."""
    from app.seg_reader import seg_on_grid
    from app.synthetic_study import SeriesSpec, write_study
    from segmamba.synthetic import Lesion

    phantom = Phantom(center=(2.0, -8.0, 15.0), lesion=Lesion(center=(-26.0, 2.0, 36.0), radius=22.0, seed=1))
    spec = SeriesSpec("t1c", "AX T1 POST GAD", "axial", tilt_deg=(9.0, 0.0, -5.0), rows=rows, columns=columns,
                      slices=9, pixel_spacing=(1.9, 1.8), slice_thickness=5.0, center=(2.0, -8.0, 36.0))
    info = write_study(tmp_path / "study", phantom, [spec], seed=5).series[0]
    labels = truth_labels(phantom, info)
    segments = [SegmentSpec.from_dict(entry) for entry in BRATS_SEGMENTS]
    path = write_segmentation(labels, [pydicom.dcmread(p) for p in info.files], segments, "SegMamba", "0.1",
                              tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    assert (seg.SegmentationType, seg.BitsAllocated, seg.BitsStored) == ("FRACTIONAL", 8, 8)
    assert len(seg.PixelData) == rows * columns * seg.NumberOfFrames + (rows * columns * seg.NumberOfFrames) % 2
    assert np.array_equal(seg_on_grid(seg, labels.shape, info.affine), labels)


def test_reader_takes_half_occupancy_as_inside() -> None:
    """A FRACTIONAL SEG written elsewhere (probabilities): the reader's mask is fraction >= 0.5."""
    from app.seg_reader import segment_mask

    seg = pydicom.Dataset()
    seg.SegmentationType, seg.MaximumFractionalValue = "FRACTIONAL", 200
    assert segment_mask(seg, np.array([0, 99, 100, 200], dtype=np.uint8)).tolist() == [0, 0, 1, 1]
    seg.SegmentationType = "BINARY"
    assert segment_mask(seg, np.array([0, 1], dtype=np.uint8)).tolist() == [0, 1]
    seg.SegmentationType = "LABELMAP"
    with pytest.raises(ValueError, match="LABELMAP"):
        segment_mask(seg, np.zeros(2, dtype=np.uint8))


def test_study_without_tumour_gives_a_valid_empty_seg(
    tmp_path: Path,
    study_series: dict[str, list[pydicom.Dataset]],
    brats_segments: list[SegmentSpec],
    dciodvfy_errors: Callable[[Path], list[str]],
) -> None:
    datasets = study_series["T2W_FLAIR_COR"]
    shape = series_to_volume(datasets).shape
    path = write_segmentation(np.zeros(shape, dtype=np.uint8), datasets, brats_segments, "SegMamba", "0.1",
                              tmp_path / "empty.dcm")
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    assert len(seg.SegmentSequence) == 3
    assert seg.NumberOfFrames == 3 * shape[2]
    assert not np.any(seg.pixel_array)


def test_absent_segment_and_non_contiguous_label_values(
    tmp_path: Path,
    study_series: dict[str, list[pydicom.Dataset]],
    dciodvfy_errors: Callable[[Path], list[str]],
) -> None:
    datasets = study_series["T2W_FLAIR_AX"]
    volume = series_to_volume(datasets)
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[40:50, 30:45, 10:14] = 4
    entries = [dict(entry) for entry in BRATS_SEGMENTS]
    entries[2]["label"] = 4  # BraTS 2018-2021 numbering of the enhancing tumour
    segments = [SegmentSpec.from_dict(entry) for entry in entries]
    path = write_segmentation(labels, datasets, segments, "SegMamba", "0.1", tmp_path / "seg.dcm")
    assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(path)
    assert len(seg.SegmentSequence) == 3
    points, segment_numbers, pixels = seg_points(seg)
    assert set(segment_numbers.tolist()) == {3} and len(segment_numbers) == 4
    assert int(pixels.sum()) == 10 * 15 * 4
    # The marked block lies where the volume's affine puts it.
    world = points[pixels > 0]
    index = np.rint((np.linalg.inv(volume.affine)[:3, :3] @ world.T).T + np.linalg.inv(volume.affine)[:3, 3])
    assert {tuple(v) for v in index.astype(int).tolist()} == {
        (i, j, k) for i in range(40, 50) for j in range(30, 45) for k in range(10, 14)
    }


def test_bad_label_maps_are_refused_and_leave_no_file(
    tmp_path: Path, study_series: dict[str, list[pydicom.Dataset]], brats_segments: list[SegmentSpec]
) -> None:
    datasets = study_series["T2W_FLAIR_AX"]
    shape = series_to_volume(datasets).shape
    output = tmp_path / "seg.dcm"
    with pytest.raises(ValueError, match="shape"):
        write_segmentation(np.zeros(shape[::-1], np.uint8), datasets, brats_segments, "S", "1", output)
    labels = np.zeros(shape, np.uint8)
    labels[0, 0, 0] = 5
    with pytest.raises(ValueError, match=r"\[5\]"):
        write_segmentation(labels, datasets, brats_segments, "S", "1", output)
    assert list(tmp_path.iterdir()) == []


def test_write_is_atomic(
    tmp_path: Path,
    study_series: dict[str, list[pydicom.Dataset]],
    brats_segments: list[SegmentSpec],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    datasets = study_series["T2W_FLAIR_AX"]
    labels = np.zeros(series_to_volume(datasets).shape, np.uint8)
    labels[10:20, 10:20, 5] = 2
    output = tmp_path / "seg.dcm"
    output.write_bytes(b"previous result")

    def broken_save(self: pydicom.Dataset, handle: Any, **kwargs: Any) -> None:
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(hd.seg.Segmentation, "save_as", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_segmentation(labels, datasets, brats_segments, "S", "1", output)
    assert output.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]
    monkeypatch.undo()
    write_segmentation(labels, datasets, brats_segments, "S", "1", output)
    assert hd.seg.segread(output).NumberOfFrames == 1


def test_segment_spec_from_dict() -> None:
    spec = SegmentSpec.from_dict(BRATS_SEGMENTS[2])
    assert spec == SegmentSpec(3, "Enhancing tumour", ("NCIt", "C113842", "Enhancing Lesion"), (250, 220, 60))
    custom = SegmentSpec.from_dict({**BRATS_SEGMENTS[0], "category": {"scheme": "SCT", "value": "91723000",
                                                                        "meaning": "Anatomical structure"}})
    assert custom.property_category == ("SCT", "91723000", "Anatomical structure")
    with pytest.raises(ValueError, match="color"):
        SegmentSpec.from_dict({**BRATS_SEGMENTS[0], "color": [0, 300, 0]})
    with pytest.raises(KeyError):
        SegmentSpec.from_dict({"label": 1, "name": "x", "color": [0, 0, 0]})


# ---------------------------------------------------------------------------------------------
# Headers as hospitals send them: gaps, values that break their VR, national character sets.
# ---------------------------------------------------------------------------------------------

TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
         "StudyDate", "StudyTime", "ReferringPhysicianName")


def reread(dataset: pydicom.Dataset) -> pydicom.Dataset:
    """The dataset as a receiver reads it from a file (values encoded in its own character set)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def reference_with(small_study: Any, change: Callable[[pydicom.Dataset], None]) -> list[pydicom.Dataset]:
    """The small study's T1c instances, each changed by ``change`` and written/read back."""
    sources = []
    for path in small_study.by_description("AX T1 POST GAD").files:
        dataset = pydicom.dcmread(path)
        change(dataset)
        sources.append(reread(dataset))
    return sources


def lesion_labels(datasets: list[pydicom.Dataset]) -> np.ndarray:
    labels = np.zeros(series_to_volume(datasets).shape, np.uint8)
    labels[20:30, 18:28, 8:12] = 2
    return labels


def test_missing_type2_attributes_give_a_valid_seg_with_them_empty(
    tmp_path: Path, small_study: Any, brats_segments: list[SegmentSpec],
    dciodvfy_errors: Callable[[Path], list[str]],
) -> None:
    def strip(dataset: pydicom.Dataset) -> None:
        for keyword in TYPE2:
            delattr(dataset, keyword)

    sources = reference_with(small_study, strip)
    path = write_segmentation(lesion_labels(sources), sources, brats_segments, "SegMamba", "0.1", tmp_path / "s.dcm")
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    for keyword in TYPE2:
        assert keyword in seg and not seg[keyword].value, keyword
    assert all("PatientBirthDate" not in ds for ds in sources)  # the sources were not filled in
    assert seg.StudyInstanceUID == small_study.study_instance_uid


def test_values_that_break_their_vr_are_cleaned_on_copies(
    tmp_path: Path, small_study: Any, brats_segments: list[SegmentSpec],
    dciodvfy_errors: Callable[[Path], list[str]],
) -> None:
    def spoil(dataset: pydicom.Dataset) -> None:
        dataset.AccessionNumber = "RAD2024000123456789"  # 19 characters in an SH (16)
        dataset.StudyID = "12\x0134"  # a control character
        dataset.StudyDate = "2024-01-05"
        dataset.StudyTime = "08:15:30"
        dataset.PatientBirthDate = "1970-13-45"  # no such date: emptied, not guessed
        dataset.PatientSex = "female"
        dataset.PatientAge = "45Y"
        dataset.PatientID = "ID\t0042"
        dataset.StudyDescription = "MRT Schädel\x07 " + "x" * 80
        dataset.ReferringPhysicianName = "Dr^Who\\Second^Doctor"

    sources = reference_with(small_study, spoil)
    path = write_segmentation(lesion_labels(sources), sources, brats_segments, "SegMamba", "0.1", tmp_path / "s.dcm")
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    assert seg.AccessionNumber == "RAD2024000123456"
    assert seg.StudyID == "12 34"
    assert (seg.StudyDate, seg.StudyTime) == ("20240105", "081530")
    assert seg.PatientBirthDate == "" and seg.PatientSex == "F" and seg.PatientAge == "045Y"
    assert seg.PatientID == "ID 0042"
    assert seg.StudyDescription.startswith("MRT Schädel") and len(seg.StudyDescription) == 64
    assert "\\" not in str(seg.ReferringPhysicianName)
    assert sources[0].AccessionNumber == "RAD2024000123456789"  # the source keeps its own values
    assert sources[0].StudyDate == "2024-01-05"
    for keyword in ("SeriesDate", "SeriesTime", "ContentDate", "ContentTime"):
        assert seg[keyword].value, keyword
    assert seg.SeriesDate == seg.ContentDate


@pytest.mark.parametrize(("charset", "name", "expected"), [
    ("ISO_IR 100", "Müller^Jürgen", "ISO_IR 100"),
    ("ISO_IR 126", "Ωmega^Αλφα", "ISO_IR 126"),
    (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", ["", "ISO 2022 IR 87"]),
    ("ISO_IR 192", "山田^太郎", "ISO_IR 192"),
    ("ISO_IR 100", "Ωmega^Müller", "ISO_IR 192"),  # the declared set cannot hold it: UTF-8
])
def test_non_ascii_names_survive_in_the_right_character_set(
    tmp_path: Path, small_study: Any, brats_segments: list[SegmentSpec],
    dciodvfy_errors: Callable[[Path], list[str]], charset: Any, name: str, expected: Any,
) -> None:
    def rename(dataset: pydicom.Dataset) -> None:
        dataset.SpecificCharacterSet = charset
        dataset.PatientName = name

    if expected != charset:  # a source that mislabels its names cannot be written as itself: build it in memory
        sources = [pydicom.dcmread(path) for path in small_study.by_description("AX T1 POST GAD").files]
        for dataset in sources:
            rename(dataset)
    else:
        sources = reference_with(small_study, rename)
    path = write_segmentation(lesion_labels(sources), sources, brats_segments, "SegMamba", "0.1", tmp_path / "s.dcm")
    assert dciodvfy_errors(path) == []
    seg = pydicom.dcmread(path)
    assert seg.SpecificCharacterSet == expected
    assert str(seg.PatientName) == name


def test_header_cleaning_rules_per_vr() -> None:
    source = pydicom.Dataset()
    source.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    source.StudyInstanceUID = "1.2.3"
    source.PatientBirthDate = "05.01.1971"
    source.AcquisitionDate = "2024/02/30"  # no such day
    source.StudyTime = "7:15"
    source.PatientAge = "7 M"
    source[0x00101030] = RawDataElement(Tag(0x00101030), "DS", 4, b"72,5", 0, False, True)  # as read from a file
    source.SeriesNumber = "12.0"
    source.BodyPartExamined = "head-neck"
    source.ImageType = ["ORIGINAL", "PRIMARY", "", "M"]
    source.PatientSex = "w"
    before = {element.keyword: str(element.value) for element in source}
    clean = clean_source_header(source)
    assert {element.keyword: str(element.value) for element in source} == before  # the source is untouched
    assert clean.PatientBirthDate == "19710105" and clean.AcquisitionDate == ""
    assert clean.StudyTime == "" and clean.PatientAge == "007M"
    assert clean.PatientWeight == "72.5" and clean.SeriesNumber == 12
    assert clean.BodyPartExamined == "HEAD_NECK" and list(clean.ImageType) == ["ORIGINAL", "PRIMARY", "", "M"]
    assert clean.PatientSex == ""  # not M, F or O: unknown, not guessed
    assert list(clean.SpecificCharacterSet) == ["", "ISO 2022 IR 87"] and clean.StudyInstanceUID == "1.2.3"
    for keyword in TYPE2:
        assert keyword in clean
    assert character_set_for(None, ["plain"]) is None
    assert character_set_for(None, ["Müller"]) == "ISO_IR 192"
    assert character_set_for("ISO_IR 100", ["Müller"]) == "ISO_IR 100"
    assert character_set_for(["", "ISO 2022 IR 87"], ["山田"]) == ["", "ISO 2022 IR 87"]
