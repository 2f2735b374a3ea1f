"""The corpus of hospital-shaped studies: each study through `python -m app` does what issue 11 asks.

Every threshold-model case is its own test (tests/models/threshold, geometry independent of model
quality); two cases run with the demo model. Cases the application does not handle yet fail here on
purpose: the test names say which. The first tests check the corpus itself (that each study really
is what its case says: transfer syntax, multi-frame object, CD layout, damage).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    EnhancedMRImageStorage,
    JPEGLosslessSV1,
    LegacyConvertedEnhancedMRImageStorage,
)

from app.corpus.cases import BY_NAME, CASES, ROLES, Case
from app.corpus.checks import DEMO_MODEL, THRESHOLD_MODEL, Written, covered, true_volume_ml
from app.corpus.encodings import SYNTAXES
from app.corpus.runner import run_case, table, write_case

THRESHOLD_CASES = [case.name for case in CASES if case.model == "threshold"]
DEMO_CASES = [case.name for case in CASES if case.model == "demo"]


def _written(name: str, tmp_path: Path) -> Written:
    return write_case(BY_NAME[name], tmp_path / name)


def _instances(folder: Path) -> list[pydicom.Dataset]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            found.append(pydicom.dcmread(path))
        except pydicom.errors.InvalidDicomError:
            continue
    return found


# --- the corpus is what it says ---------------------------------------------------------------


def test_corpus_covers_the_issue() -> None:
    assert len(THRESHOLD_CASES) >= 40 and len(DEMO_CASES) == 2
    topics = {case.topic for case in CASES}
    assert topics >= {"naming", "selection", "encoding", "geometry", "coverage", "layout", "attributes", "foreign",
                      "corruption", "demo model"}
    languages = {name.split("-")[2] for name in THRESHOLD_CASES if name.startswith("names-")}
    vendors = {name.split("-")[1] for name in THRESHOLD_CASES if name.startswith("names-")}
    assert languages == {"en", "de", "fr", "es", "it", "nl"} and vendors == {"siemens", "ge", "philips"}
    assert {f"encoding-{syntax}" for syntax in SYNTAXES} <= set(BY_NAME)


def test_vendor_headers_and_words(tmp_path: Path) -> None:
    written = _written("names-siemens-de", tmp_path)
    by_role = {role: pydicom.dcmread(written.series(index).files[0]) for role, index in ROLES.items()}
    assert by_role["t1c"].SeriesDescription == "t1_se_tra_nach_KM" and by_role["t1n"].SeriesDescription == \
        "t1_se_tra_nativ"
    assert by_role["t1c"].Manufacturer == "SIEMENS" and list(by_role["t1c"].ImageType) == [
        "ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
    assert by_role["t1c"].ContrastBolusAgent and "ContrastBolusAgent" not in by_role["t1n"]


@pytest.mark.parametrize("syntax", sorted(SYNTAXES))
def test_encoded_studies_carry_their_transfer_syntax(syntax: str, tmp_path: Path) -> None:
    written = _written(f"encoding-{syntax}", tmp_path)
    reference = pydicom.dcmread(written.series(1).files[0])
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for info in written.study.series for f in info.files}
    assert len(uids) == 1
    values = reference.pixel_array * float(reference.RescaleSlope)
    assert values.shape == (48, 48) and values.max() > 500  # decodes to the image, intensities kept


@pytest.mark.parametrize(("name", "sop_class"), [("multiframe-legacy-converted", LegacyConvertedEnhancedMRImageStorage),
                                                 ("multiframe-enhanced-mr", EnhancedMRImageStorage)])
def test_multiframe_series_are_one_object_each(
    name: str, sop_class: str, tmp_path: Path, dciodvfy_errors: Callable[[Path], list[str]]
) -> None:
    written = _written(name, tmp_path)
    instances = _instances(written.folder)
    assert len(instances) == 4 and {ds.SOPClassUID for ds in instances} == {sop_class}
    assert {ds.SeriesInstanceUID for ds in instances} == {s.series_instance_uid for s in written.study.series}
    assert {int(ds.NumberOfFrames) for ds in instances} == {24}
    assert all(dciodvfy_errors(Path(ds.filename)) == [] for ds in instances)
    if sop_class == EnhancedMRImageStorage:  # acquisition attributes only in the functional groups
        shared = instances[1].SharedFunctionalGroupsSequence[0]
        assert "RepetitionTime" not in instances[1] and "EchoTime" not in instances[1]
        assert float(shared.MRTimingAndRelatedParametersSequence[0].RepetitionTime) == 500.0
        assert float(shared.MREchoSequence[0].EffectiveEchoTime) == 10.0


def test_cd_layouts(tmp_path: Path) -> None:
    cd = _written("cd-dicomdir", tmp_path)
    assert (cd.folder / "DICOMDIR").is_file() and "README.TXT" in cd.marked["skipped"]
    images = [p for p in cd.folder.rglob("*") if p.is_file() and p.suffix == "" and p.parent != cd.folder]
    assert len(images) >= 96
    nested = _written("cd-nested-same-names", tmp_path)
    folders = {p.parent for p in nested.folder.rglob("IM0001")}
    assert len(folders) == 5  # the same file name in every series folder


def test_damaged_files_are_damaged_as_stated(tmp_path: Path) -> None:
    truncated = _written("corrupt-truncated-jpeg-frame", tmp_path)
    dataset = pydicom.dcmread(truncated.folder / truncated.marked["file"])
    assert dataset.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    with pytest.raises(Exception):  # noqa: B017 - whichever decoder plugin answers, it must not decode
        _ = dataset.pixel_array
    short = _written("corrupt-native-pixel-length", tmp_path)
    dataset = pydicom.dcmread(short.folder / short.marked["file"])
    assert len(dataset.PixelData) == dataset.Rows * dataset.Columns * 2 - 96


def test_true_volume_inside_coverage(tmp_path: Path) -> None:
    written = _written("partial-flair-slab", tmp_path)
    grids = [written.series(i) for i in ROLES.values()]
    whole = true_volume_ml(written.anatomy, grids[:3])
    slab = true_volume_ml(written.anatomy, grids)
    assert 40.0 < whole < 50.0 and 0.3 * whole < slab < 0.95 * whole
    centre = np.array([[-26.0, 2.0, 36.0]])
    assert covered(centre + np.array([0.0, 0.0, 10.0]), grids).all()
    assert not covered(centre - np.array([0.0, 0.0, 15.0]), grids).any()


# --- the application on the corpus ------------------------------------------------------------


def _run(case: Case, tmp_path: Path, dciodvfy_errors: Callable[[Path], list[str]]) -> None:
    outcome = run_case(case, tmp_path, dciodvfy=dciodvfy_errors)
    assert outcome.passed, table([outcome], width=400)


@pytest.mark.parametrize("name", THRESHOLD_CASES)
def test_corpus_case(name: str, tmp_path: Path, dciodvfy_errors: Callable[[Path], list[str]]) -> None:
    assert THRESHOLD_MODEL.is_dir()
    _run(BY_NAME[name], tmp_path, dciodvfy_errors)


@pytest.mark.parametrize("name", DEMO_CASES)
def test_corpus_case_with_the_demo_model(name: str, tmp_path: Path,
                                         dciodvfy_errors: Callable[[Path], list[str]]) -> None:
    assert DEMO_MODEL.is_dir()
    _run(BY_NAME[name], tmp_path, dciodvfy_errors)
