"""Synthetic MR study: headers, IOD validity, geometry, pixel values, determinism, distractors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import MRImageStorage

from app.synthetic_study import SeriesSpec, truth_labels, write_study
from segmamba.synthetic import Lesion, Phantom
from tests.conftest import REFERENCE_DESCRIPTION


def test_one_study_many_series(study: Any, study_series: dict[str, list[pydicom.Dataset]]) -> None:
    assert set(study_series) == {info.spec.description for info in study.series}
    all_instances = [ds for datasets in study_series.values() for ds in datasets]
    assert {ds.StudyInstanceUID for ds in all_instances} == {study.study_instance_uid}
    assert {ds.FrameOfReferenceUID for ds in all_instances} == {study.frame_of_reference_uid}
    assert {ds.PatientID for ds in all_instances} == {study.patient_id}
    assert len({ds.SeriesInstanceUID for ds in all_instances}) == len(study.series)
    assert len({ds.SOPInstanceUID for ds in all_instances}) == len(all_instances)
    for info in study.series:
        datasets = study_series[info.spec.description]
        assert {ds.SeriesInstanceUID for ds in datasets} == {info.series_instance_uid}
        assert sorted(ds.InstanceNumber for ds in datasets) == list(range(1, len(datasets) + 1))


def test_mr_headers(study_series: dict[str, list[pydicom.Dataset]]) -> None:
    for description, datasets in study_series.items():
        ds = datasets[0]
        assert ds.SOPClassUID == MRImageStorage and ds.Modality == "MR"
        assert list(ds.ImageType[:2]) == ["ORIGINAL", "PRIMARY"], description
        assert ds.pixel_array.dtype == np.uint16 and ds.BitsAllocated == 16
        assert float(ds.RescaleSlope) > 0 and float(ds.RescaleIntercept) == 0
        for keyword in ("ScanningSequence", "SequenceVariant", "MRAcquisitionType", "RepetitionTime",
                        "EchoTime", "EchoTrainLength", "FlipAngle", "MagneticFieldStrength", "Manufacturer",
                        "PatientBirthDate", "PositionReferenceIndicator", "SliceThickness", "PixelSpacing",
                        "ImagePositionPatient", "ImageOrientationPatient", "SpacingBetweenSlices"):
            assert keyword in ds, (description, keyword)
    t1c = study_series[REFERENCE_DESCRIPTION][0]
    assert t1c.ContrastBolusAgent
    assert "ContrastBolusAgent" not in study_series["Ax T2 FSE"][0]
    assert "IR" in study_series["T2W_FLAIR"][0].ScanningSequence and study_series["T2W_FLAIR"][0].InversionTime
    assert study_series["t1_mprage_sag_p2_iso"][0].MRAcquisitionType == "3D"
    assert study_series["t1_mprage_sag_p2_iso"][0].InversionTime
    assert "LOCALIZER" in study_series["localizer"][0].ImageType
    localizer_orientations = {tuple(ds.ImageOrientationPatient) for ds in study_series["localizer"]}
    assert len(localizer_orientations) == 3
    b_values = sorted({float(ds.DiffusionBValue) for ds in study_series["ep2d_diff_3scan_trace_p2"]})
    assert b_values == [0.0, 1000.0]


def test_instances_pass_dciodvfy(
    study: Any, dciodvfy_errors: Callable[[Path], list[str]]
) -> None:
    for description in (REFERENCE_DESCRIPTION, "T2W_FLAIR", "t1_mprage_sag_p2_iso", "localizer",
                        "ep2d_diff_3scan_trace_p2"):
        path = study.by_description(description).files[0]
        assert dciodvfy_errors(path) == [], description


def test_slice_geometry_and_pixels_match_the_phantom(
    study: Any, study_series: dict[str, list[pydicom.Dataset]], phantom: Phantom
) -> None:
    for info in study.series:
        if info.spec.kind != "image":
            continue
        row_spacing, column_spacing = info.spec.pixel_spacing
        rendered = phantom.render(info.shape, info.affine)[info.spec.contrast] * 1000.0
        for ds in study_series[info.spec.description][::7]:
            k = ds.InstanceNumber - 1
            np.testing.assert_allclose(
                np.array(ds.ImagePositionPatient, dtype=float), (info.affine @ [0, 0, k, 1])[:3], atol=1e-4
            )
            np.testing.assert_allclose(np.array(ds.PixelSpacing, dtype=float), [row_spacing, column_spacing])
            assert (ds.Rows, ds.Columns) == (info.spec.rows, info.spec.columns)
            truth = rendered[:, :, k].T
            values = ds.pixel_array * float(ds.RescaleSlope)
            assert np.median(np.abs(values - truth)) < 25.0, info.spec.description


def test_truth_labels_on_a_series_grid(study: Any, phantom: Phantom) -> None:
    info = study.by_description(REFERENCE_DESCRIPTION)
    labels = truth_labels(phantom, info)
    assert labels.shape == (info.spec.columns, info.spec.rows, info.spec.slices)
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(labels, phantom.render(info.shape, info.affine)["label"])


def test_deterministic_from_seed_with_opaque_names(tmp_path: Path) -> None:
    phantom = Phantom(lesion=Lesion(center=(20.0, 0.0, 20.0), radius=15.0))
    specs = [SeriesSpec("t1c", "AX T1 POST GAD", rows=32, columns=32, slices=6, pixel_spacing=(6.0, 6.0)),
             SeriesSpec("t2f", "T2W_FLAIR", "coronal", rows=32, columns=32, slices=5, pixel_spacing=(6.0, 6.0))]
    first = write_study(tmp_path / "a", phantom, specs, seed=5, opaque_names=True, shuffle_files=True)
    second = write_study(tmp_path / "b", phantom, specs, seed=5, opaque_names=True, shuffle_files=True)
    other = write_study(tmp_path / "c", phantom, specs, seed=6, opaque_names=True)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert len(names) == 11 and not any("AX" in n or n.startswith("00") for n in names)
    for a, b in zip(first.series, second.series, strict=True):
        for path_a, path_b in zip(a.files, b.files, strict=True):
            assert path_a.read_bytes() == path_b.read_bytes()
    assert other.study_instance_uid != first.study_instance_uid
    assert pydicom.dcmread(other.series[0].files[0]).pixel_array.tobytes() != pydicom.dcmread(
        first.series[0].files[0]
    ).pixel_array.tobytes()


def test_scanner_realism_attributes(tmp_path: Path) -> None:
    """Vendor, ImageType, lossy, bolus, repeats, dropped Type 2 and VR-breaking values, as specified."""
    from app.synthetic_study import GE, SIEMENS

    phantom = Phantom(lesion=Lesion(center=(20.0, 0.0, 20.0), radius=15.0))
    grid = dict(rows=16, columns=16, slices=3, pixel_spacing=(12.0, 12.0))
    specs = [
        SeriesSpec("t1c", "t1_mprage_sag_KM", vendor=SIEMENS, acquisition="t1_3d", contrast_agent="Gadovist",
                   contrast_ingredient="GADOLINIUM", contrast_start_time="093512", images_in_acquisition=True,
                   acquisition_time="094500", acquisition_number=2, **grid),
        SeriesSpec("t1c", "Ax T1 SE +C", vendor=GE, lossy=True, contrast_agent=None, **grid),
        SeriesSpec("t2w", "MPR", image_type=("DERIVED", "SECONDARY", "MPR"), protocol_name="t2_space",
                   sequence_name="*spc", drop_attributes=("PatientBirthDate", "AccessionNumber"),
                   set_attributes=(("InstitutionName", "x" * 80),), **grid),
    ]
    write_study(tmp_path, phantom, specs, seed=3)
    siemens, ge, derived = (pydicom.dcmread(tmp_path / f"00{n}_0001.dcm") for n in (1, 2, 3))
    assert siemens.Manufacturer == "SIEMENS" and list(siemens.ImageType) == ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
    assert siemens.MRAcquisitionType == "3D" and siemens.InversionTime
    assert (siemens.ContrastBolusAgent, siemens.ContrastBolusIngredient, siemens.ContrastBolusStartTime) == (
        "Gadovist", "GADOLINIUM", "093512")
    assert siemens.ImagesInAcquisition == 3 and siemens.AcquisitionTime == "094500" and siemens.AcquisitionNumber == 2
    assert list(ge.ImageType) == ["DERIVED", "PRIMARY", "OTHER"] and ge.LossyImageCompression == "01"
    assert ge.Manufacturer == "GE MEDICAL SYSTEMS" and "ContrastBolusAgent" not in ge
    assert list(derived.ImageType) == ["DERIVED", "SECONDARY", "MPR"]
    assert (derived.ProtocolName, derived.SequenceName) == ("t2_space", "*spc")
    assert "PatientBirthDate" not in derived and "AccessionNumber" not in derived and "PatientBirthDate" in ge
    assert derived.InstitutionName == "x" * 80


def test_foreign_series_and_character_sets(tmp_path: Path) -> None:
    phantom = Phantom(lesion=Lesion(center=(20.0, 0.0, 20.0), radius=15.0))
    grid = dict(rows=16, columns=16, slices=2, pixel_spacing=(12.0, 12.0))
    specs = [SeriesSpec("t1c", "T1 +C", **grid), SeriesSpec("t2f", "FLAIR old", other_study="prior", **grid),
             SeriesSpec("t2w", "T2 other", other_study="patient", **grid)]
    study = write_study(tmp_path, phantom, specs, seed=4, patient_name="Παπαδόπουλος^Ελένη",
                        character_set="ISO_IR 192")
    own, prior, other = (pydicom.dcmread(info.files[0]) for info in study.series)
    assert own.StudyInstanceUID == study.study_instance_uid == study.series[0].study_instance_uid
    assert prior.PatientID == own.PatientID and prior.StudyInstanceUID not in (own.StudyInstanceUID,
                                                                               other.StudyInstanceUID)
    assert other.PatientID != own.PatientID and study.series[2].patient_id == other.PatientID
    assert prior.StudyDate < own.StudyDate
    assert own.SpecificCharacterSet == "ISO_IR 192" and str(own.PatientName) == "Παπαδόπουλος^Ελένη"
    again = write_study(tmp_path / "again", phantom, specs, seed=4, patient_name="Παπαδόπουλος^Ελένη",
                        character_set="ISO_IR 192")
    assert [s.series_instance_uid for s in again.series] == [s.series_instance_uid for s in study.series]
