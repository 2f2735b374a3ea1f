"""Input folders as patient CDs and PACS exports lay them out: what loads, what is skipped, what is unreadable."""

from __future__ import annotations

import copy
import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet

from operators.errors import StudyError
from operators.study_inventory import INVENTORY_ATTRIBUTE, inventory_of
from operators.study_loader import StrictDicomLoader, read_folder
from operators.volume import series_to_volume


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    """Two small series of one study (T1c axial, FLAIR axial)."""
    from app.synthetic_study import SeriesSpec, write_study
    from segmamba.synthetic import Phantom

    small = dict(rows=32, columns=36, slices=6, pixel_spacing=(6.0, 6.0), slice_thickness=8.0)
    folder = tmp_path_factory.mktemp("series")
    write_study(folder, Phantom(), [SeriesSpec("t1c", "AX T1 POST", **small),
                                    SeriesSpec("t2f", "AX FLAIR", **small)], seed=4)
    return [pydicom.dcmread(path) for path in sorted(folder.iterdir())]


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


EXTRAS = {
    "README.TXT": b"This CD contains medical images. Start VIEWER.EXE to view them.\r\n",
    "AUTORUN.INF": b"[autorun]\r\nopen=VIEWER\\VIEWER.EXE\r\n",
    "VIEWER/VIEWER.EXE": b"MZ\x90\x00\x03\x00\x00\x00" + bytes(range(256)) * 8,
    "VIEWER/dcmtk.dll": b"MZ\x90\x00" + b"\x00" * 2000,
    "VIEWER/help/index.html": b"<!DOCTYPE html><html><body>Viewer help</body></html>",
    "REPORT/report.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    "JPEG/IMG0001.JPG": _jpeg(),
    "noise.bin": b"\x08\x00\x05\x00" + bytes((7 * i) % 251 for i in range(600)),  # starts like a data set
    "VIEWER/empty.log": b"",
}


def _patient_cd(series: list[Dataset], root: Path) -> Path:
    """DICOMDIR and PT*/ST*/SE*/IM* files (names without extension, the same names in every series
    folder) as pydicom's File-set writes them, plus a viewer, README, AUTORUN, PDF, HTML and JPEG."""
    fileset = FileSet()
    for ds in series:
        fileset.add(ds)
    fileset.write(root)
    for name, data in EXTRAS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_patient_cd_loads_every_instance_and_lists_the_other_files(series: list[Dataset], tmp_path: Path) -> None:
    root = _patient_cd(series, tmp_path / "cd")
    contents = read_folder(root)
    assert sorted(str(ds.SOPInstanceUID) for ds in contents.instances) == sorted(
        str(ds.SOPInstanceUID) for ds in series)
    paths = {ds.relative_path for ds in contents.instances}
    assert len(paths) == len(series) and all(path.startswith("PT000000/ST000000/SE00000") for path in paths)
    assert {Path(path).name for path in paths} >= {"IM000000", "IM000001"}  # same names in each series folder
    skipped = {f.path: f.reason for f in contents.inventory.skipped}
    assert set(skipped) == {"DICOMDIR", *EXTRAS}
    assert skipped["DICOMDIR"].startswith("DICOMDIR")
    assert all(reason.startswith("not DICOM") for path, reason in skipped.items() if path != "DICOMDIR")
    assert contents.inventory.unreadable == []
    by_series: dict[str, list[Dataset]] = {}
    for ds in contents.instances:
        by_series.setdefault(str(ds.SeriesDescription), []).append(ds)
    assert series_to_volume(by_series["AX T1 POST"]).shape == (36, 32, 6)


def test_loader_operator_attaches_the_inventory_to_each_study(series: list[Dataset], tmp_path: Path) -> None:
    from monai.deploy.core import Fragment

    root = _patient_cd(series, tmp_path / "cd")
    other = copy.deepcopy(series[0])
    other.StudyInstanceUID, other.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    (root / "prior").mkdir()
    other.save_as(root / "prior" / "IM1")
    broken = copy.deepcopy(series[1])
    broken.PixelData = broken.PixelData[:100]
    broken.save_as(root / "broken")
    studies = StrictDicomLoader(Fragment(), input_folder=root).load_data_to_studies(root)
    assert len(studies) == 2
    by_uid = {study.StudyInstanceUID: study for study in studies}
    main = inventory_of(by_uid[str(series[0].StudyInstanceUID)])
    prior = getattr(by_uid[str(other.StudyInstanceUID)], INVENTORY_ATTRIBUTE)
    assert {f.path for f in main.skipped} == {f.path for f in prior.skipped} == {"DICOMDIR", *EXTRAS}
    assert [(f.path, f.series_instance_uid) for f in main.unreadable] == [("broken", str(series[1].SeriesInstanceUID))]
    assert prior.unreadable == []  # the unreadable file names the other study
    assert main.unreadable_in(str(series[1].SeriesInstanceUID)) and not main.unreadable_in("1.2.3")


def test_dicom_without_preamble_is_loaded(series: list[Dataset], tmp_path: Path) -> None:
    """Old exports write bare data sets (no 128-byte preamble, no file meta, implicit VR)."""
    folder = tmp_path / "in"
    folder.mkdir()
    for number, ds in enumerate(series[:6], start=1):
        bare = Dataset()
        bare.update(ds)
        pydicom.dcmwrite(folder / f"{number:08d}", bare, implicit_vr=True, little_endian=True)
    contents = read_folder(folder)
    assert len(contents.instances) == 6 and not contents.inventory.skipped and not contents.inventory.unreadable
    assert {str(ds.file_meta.TransferSyntaxUID) for ds in contents.instances} == {"1.2.840.10008.1.2"}
    volume = series_to_volume(contents.instances)
    np.testing.assert_array_equal(volume.array, series_to_volume(series[:6]).array)


def test_unreadable_dicom_is_recorded_with_what_its_header_still_tells(series: list[Dataset], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    shutil.copytree(Path(series[0].filename).parent, folder)
    names = sorted(path.name for path in folder.iterdir())
    header_cut, pixels_cut, no_uid = names[1], names[2], names[8]
    (folder / header_cut).write_bytes((folder / header_cut).read_bytes()[:300])
    (folder / pixels_cut).write_bytes((folder / pixels_cut).read_bytes()[:-1000])
    ds = pydicom.dcmread(folder / no_uid)
    del ds.SOPInstanceUID
    ds.save_as(folder / no_uid, enforce_file_format=False)
    (folder / "DICOM").mkdir()
    shutil.move(folder / no_uid, folder / "DICOM" / no_uid)
    contents = read_folder(folder)
    assert len(contents.instances) == len(series) - 3
    unreadable = {f.path: f for f in contents.inventory.unreadable}
    assert set(unreadable) == {header_cut, pixels_cut, f"DICOM/{no_uid}"}
    assert unreadable[header_cut].reason.startswith("lacks StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID")
    assert unreadable[pixels_cut].reason.startswith("PixelData truncated")
    assert unreadable[pixels_cut].series_instance_uid == str(series[2].SeriesInstanceUID)
    assert unreadable[pixels_cut].study_instance_uid == str(series[2].StudyInstanceUID)
    assert unreadable[f"DICOM/{no_uid}"].reason == "lacks SOPInstanceUID"
    assert unreadable[f"DICOM/{no_uid}"].series_instance_uid == str(series[8].SeriesInstanceUID)
    assert contents.inventory.skipped == []


def test_folder_without_dicom_instances_fails_naming_the_folder(series: list[Dataset], tmp_path: Path) -> None:
    folder = tmp_path / "export"
    for name in ("README.TXT", "REPORT/report.pdf", "JPEG/IMG0001.JPG"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(EXTRAS[name])
    shutil.copy(series[0].filename, folder / "IM1")
    (folder / "IM1").write_bytes((folder / "IM1").read_bytes()[:-500])
    with pytest.raises(StudyError) as raised:
        read_folder(folder)
    assert str(raised.value) == (
        f"study {folder}: no DICOM instances in the input folder (3 file(s) not DICOM or DICOMDIR; "
        f"1 unreadable DICOM file(s), e.g. IM1: PixelData truncated ({len(series[0].PixelData) - 500} of "
        f"{len(series[0].PixelData)} bytes))"
    )


@pytest.mark.parametrize(("make", "reason"), [
    (lambda folder: None, "input folder does not exist"),
    (lambda folder: folder.mkdir(), "input folder holds no files"),
])
def test_missing_or_empty_folder_fails(make: Any, reason: str, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    make(folder)
    with pytest.raises(StudyError, match=reason) as raised:
        read_folder(folder)
    assert str(folder) in str(raised.value)
