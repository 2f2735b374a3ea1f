"""Series selection: vendor studies, attribute evidence, ignored series, failures, SDK parity."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from operators.errors import StudyError
from operators.series_selection import (
    DEFAULT_RULES_PATH,
    ROLES,
    SeriesSelectionError,
    classify_series,
    load_rules,
    match_conditions,
    select_from_studies,
    select_series,
)
from operators.study_inventory import SkippedFile, StudyInventory, UnreadableFile

_AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
_SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
_COUNTER = itertools.count(1)

# Typical acquisition parameters: ScanningSequence, SequenceVariant, TR, TE, TI, MRAcquisitionType.
MPRAGE = {"seq": ["GR", "IR"], "var": ["SK", "SP", "MP"], "tr": 2300.0, "te": 2.32, "ti": 900.0, "acq": "3D"}
FSPGR = {"seq": ["GR"], "var": ["SS", "SK"], "tr": 8.2, "te": 3.2, "ti": 450.0, "acq": "3D"}
TFE = {"seq": ["GR"], "var": ["MP", "SK"], "tr": 8.1, "te": 3.7, "acq": "3D"}
T1_SE = {"seq": ["SE"], "var": ["SK", "SP"], "tr": 550.0, "te": 11.0, "acq": "2D"}
TSE = {"seq": ["SE"], "var": ["SK", "SP", "OSP"], "tr": 6000.0, "te": 96.0, "acq": "2D"}
FLAIR = {"seq": ["SE", "IR"], "var": ["SK", "SP", "MP"], "tr": 9000.0, "te": 81.0, "ti": 2500.0, "acq": "2D"}
EPI = {"seq": ["EP"], "var": ["SK", "SP"], "tr": 5200.0, "te": 89.0, "acq": "2D"}


def make_series(
    description: str,
    params: dict[str, Any],
    *,
    number: int,
    time: str,
    slices: int = 12,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    accession: str = "ACC001",
    modality: str = "MR",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    agent: str | None = None,
    bolus_start: str | None = None,
    b_values: tuple[float, ...] = (),
    repeats: int = 1,
    temporal: bool = False,
    orientation: list[float] = _AXIAL,
    thickness: float = 2.5,
    pixel: float = 0.9,
    extra: dict[str, Any] | None = None,
) -> tuple[str, list[pydicom.Dataset]]:
    """One series of header-only instances; `repeats` > 1 stacks several volumes (4D / DWI).

    `extra` sets further attributes by keyword on every instance (None deletes one).
    """
    uid = generate_uid(entropy_srcs=[description, str(number), str(next(_COUNTER))])
    datasets = []
    for index, (repeat, k) in enumerate(itertools.product(range(repeats), range(slices)), start=1):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study_uid
        ds.AccessionNumber = accession
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20240301"
        ds.SeriesInstanceUID = uid
        ds.SeriesNumber = number
        ds.SeriesDescription = description
        ds.Modality = modality
        ds.PatientPosition = "HFS"
        ds.SeriesTime = time
        ds.AcquisitionTime = time
        ds.AcquisitionNumber = repeat + 1
        ds.InstanceNumber = index
        ds.ImageType = list(image_type)
        ds.ImageOrientationPatient = orientation
        normal = [float(v) for v in np.cross(orientation[:3], orientation[3:])]
        ds.ImagePositionPatient = [-120.0 + thickness * k * n for n in normal]
        ds.SliceThickness = thickness
        ds.PixelSpacing = [pixel, pixel]
        if modality == "MR":
            ds.ScanningSequence = params["seq"]
            ds.SequenceVariant = params["var"]
            ds.RepetitionTime = params["tr"]
            ds.EchoTime = params["te"]
            if params.get("ti"):
                ds.InversionTime = params["ti"]
            ds.MRAcquisitionType = params["acq"]
        if agent is not None:
            ds.ContrastBolusAgent = agent
        if bolus_start is not None:
            ds.ContrastBolusStartTime = bolus_start
        if b_values:
            ds.DiffusionBValue = b_values[repeat % len(b_values)]
        if temporal:
            ds.TemporalPositionIdentifier = repeat + 1
            ds.NumberOfTemporalPositions = repeats
        for keyword, value in (extra or {}).items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        datasets.append(ds)
    return uid, datasets


def study(*series: tuple[str, list[pydicom.Dataset]]) -> dict[str, list[pydicom.Dataset]]:
    return dict(series)


def siemens_study(include_flair: bool = True) -> tuple[dict[str, list[pydicom.Dataset]], dict[str, str]]:
    """Siemens: localizer, native and post MPRAGE (same description, agent on the post), MPR, TSE, TIRM, DWI."""
    loc = make_series("localizer", T1_SE, number=1, time="080100", slices=9, image_type=("ORIGINAL", "PRIMARY", "M"))
    pre = make_series("t1_mprage_sag_p2_iso", MPRAGE, number=2, time="080500", slices=16, orientation=_SAGITTAL)
    t2w = make_series("t2_tse_tra", TSE, number=3, time="081200")
    t2f = make_series("t2_tirm_tra_dark-fluid", FLAIR, number=4, time="081600")
    dwi = make_series("ep2d_diff_mddw_20_p2_TRACEW", EPI, number=5, time="082000", b_values=(0.0, 1000.0), repeats=2)
    adc = make_series(
        "ep2d_diff_mddw_20_p2_ADC", EPI, number=6, time="082000", image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC")
    )
    post = make_series(
        "t1_mprage_sag_p2_iso", MPRAGE, number=7, time="083000", slices=16, agent="Gadovist", orientation=_SAGITTAL
    )
    mpr = make_series(
        "t1_mprage_sag_p2_iso_MPR_tra", MPRAGE, number=8, time="083000", slices=30,
        image_type=("DERIVED", "SECONDARY", "MPR"), agent="Gadovist",
    )  # fmt: skip
    parts = [loc, pre, t2w, dwi, adc, post, mpr] + ([t2f] if include_flair else [])
    uids = {"t1n": pre[0], "t1c": post[0], "t2w": t2w[0], "t2f": t2f[0], "loc": loc[0], "mpr": mpr[0], "adc": adc[0]}
    return study(*parts), uids


def ge_study() -> tuple[dict[str, list[pydicom.Dataset]], dict[str, str]]:
    """GE: 3-plane localizer, ASSET calibration, FSPGR pre/+C (no ContrastBolusAgent), FSE, FLAIR, DWI."""
    parts = {
        "loc": make_series("3-Plane Loc", T1_SE, number=1, time="090000", slices=12,
                           image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        "cal": make_series("ASSET Cal", T1_SE, number=2, time="090100", slices=20),
        "t1n": make_series("Sag 3D T1 FSPGR", FSPGR, number=3, time="090300", slices=16, orientation=_SAGITTAL),
        "t2w": make_series("Ax T2 FSE", TSE, number=4, time="090900"),
        "t2f": make_series("Ax T2 FLAIR", {**FLAIR, "te": 140.0, "ti": 2250.0}, number=5, time="091400"),
        "dwi": make_series("Ax DWI", EPI, number=6, time="091800", repeats=2),  # b-values in GE private tags
        "t1c": make_series("Sag 3D T1 FSPGR +C", FSPGR, number=7, time="092500", slices=16, orientation=_SAGITTAL),
    }  # fmt: skip
    return study(*parts.values()), {k: v[0] for k, v in parts.items()}


def philips_study() -> tuple[dict[str, list[pydicom.Dataset]], dict[str, str]]:
    """Philips: Survey, T1W_3D_TFE pre/+C, T2W_TSE, T2W_FLAIR, DWI with b-values."""
    parts = {
        "survey": make_series("Survey", TFE, number=101, time="100000", slices=3),
        "t1n": make_series("T1W_3D_TFE", TFE, number=301, time="100400", slices=16),
        "t2w": make_series("T2W_TSE", {**TSE, "te": 100.0}, number=401, time="101000"),
        "t2f": make_series("T2W_FLAIR", {**FLAIR, "tr": 11000.0, "te": 125.0, "ti": 2800.0}, number=501, time="101500"),
        "dwi": make_series("DWI", EPI, number=601, time="102000", b_values=(0.0, 1000.0), repeats=2),
        "t1c": make_series("T1W_3D_TFE +C", TFE, number=701, time="103000", slices=16),
    }
    return study(*parts.values()), {k: v[0] for k, v in parts.items()}


def unhelpful_study() -> tuple[dict[str, list[pydicom.Dataset]], dict[str, str]]:
    """Descriptions say nothing: the roles must come from DICOM attributes."""
    parts = {
        "loc": make_series("Series 1", T1_SE, number=1, time="110000", slices=15,
                           image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        "t1n": make_series("Series 2", MPRAGE, number=2, time="110300", slices=16),
        "t2w": make_series("", TSE, number=3, time="110900"),
        "t2f": make_series("Series 4", FLAIR, number=4, time="111400"),
        "dwi": make_series("Series 5", EPI, number=5, time="111800", b_values=(0.0, 1000.0), repeats=2),
        "t1c": make_series("Series 6", T1_SE, number=6, time="112500", agent="Dotarem"),
    }  # fmt: skip
    return study(*parts.values()), {k: v[0] for k, v in parts.items()}


@pytest.mark.parametrize("factory", [siemens_study, ge_study, philips_study, unhelpful_study])
def test_vendor_studies_select_the_four_series(factory: Any) -> None:
    series, uids = factory()
    selection = select_series(series)
    assert selection.series_uids == {role: uids[role] for role in ("t1n", "t1c", "t2w", "t2f")}
    assert selection.study_instance_uid == "1.2.826.0.1.3680043.8.498.1"
    assert set(selection.reasons) == {"t1n", "t1c", "t2w", "t2f"}
    assert all(reason for reason in selection.reasons.values())
    reformats = {uids.get("mpr")}  # usable at the lowest preference: a runner-up, not ignored
    assert set(selection.ignored) == set(series) - set(selection.series_uids.values()) - reformats
    assert {e.series_instance_uid for e in selection.series} == set(series)


def test_siemens_post_contrast_told_apart_by_contrast_agent_and_ignored_series_have_reasons() -> None:
    series, uids = siemens_study()
    selection = select_series(series)
    assert "ContrastBolusAgent 'Gadovist'" in selection.reasons["t1c"]
    assert "t1_mprage_sag_p2_iso" in selection.reasons["t1n"]
    assert "localizer" in selection.ignored[uids["loc"]]
    assert uids["mpr"] not in selection.ignored
    (runner,) = selection.choices["t1c"].runners_up
    assert runner.series_instance_uid == uids["mpr"]
    assert "prefer=original: reformat (ImageType DERIVED\\SECONDARY\\MPR)" in runner.reason
    assert "diffusion" in selection.ignored[uids["adc"]]


def test_unhelpful_descriptions_resolved_by_attributes() -> None:
    series, uids = unhelpful_study()
    selection = select_series(series)
    reasons = selection.reasons
    assert "matches no rule" in reasons["t2f"] and "FLAIR" in reasons["t2f"]
    assert "T2-weighted" in reasons["t2w"]
    assert "Dotarem" in reasons["t1c"]
    assert "TI 900 ms" in reasons["t1n"]
    assert "localizer (ImageType LOCALIZER)" in selection.ignored[uids["loc"]]
    assert "4D" in selection.ignored[uids["dwi"]] and "DiffusionBValue" in selection.ignored[uids["dwi"]]
    rules = load_rules()
    rules["attributes"]["use"] = False
    with pytest.raises(SeriesSelectionError) as failure:
        select_series(series, rules)
    assert set(failure.value.missing) == {"t1n", "t1c", "t2w", "t2f"}
    assert "attribute evidence disabled" in failure.value.details


def test_two_t1_without_contrast_evidence_ordered_by_acquisition_time() -> None:
    late = make_series("Series 9", MPRAGE, number=3, time="120500", slices=16)  # lower number, later time
    early = make_series("Series 2", MPRAGE, number=9, time="120100", slices=16)
    series = study(
        early,
        late,
        make_series("Series 4", TSE, number=4, time="120200"),
        make_series("x", FLAIR, number=5, time="1203"),
    )
    selection = select_series(series)
    assert selection.series_uids["t1n"] == early[0]
    assert selection.series_uids["t1c"] == late[0]
    assert "order fallback" in selection.reasons["t1c"]
    with pytest.raises(SeriesSelectionError) as failure:
        select_series(series, {**load_rules(), "order_fallback": False})
    assert failure.value.missing == ("t1c",)
    assert "no ContrastBolusAgent" in failure.value.details


def test_missing_flair_lists_every_series_and_why_each_candidate_was_rejected() -> None:
    series, _ = siemens_study(include_flair=False)
    with pytest.raises(SeriesSelectionError) as failure:
        select_series(series)
    message = failure.value.details
    lines = message.splitlines()
    assert lines[0].startswith("Series selection failed for study 1.2.826.0.1.3680043.8.498.1 (accession ACC001)")
    assert "no t2f series" in lines[0]
    assert failure.value.missing == ("t2f",)
    assert "Series found (7):" in lines
    for uid, instances in series.items():
        description = instances[0].SeriesDescription
        assert any(f"{description!r} MR, {len(instances)} instances, uid {uid}" in line for line in lines)
    assert any("'localizer'" in line and "ignored: localizer" in line for line in lines)
    assert any("_ADC'" in line and "ignored: diffusion" in line for line in lines)
    t2f_block = lines[lines.index("t2f: no candidate among 4 usable series") :]
    assert any("'t2_tse_tra': chosen for t2w" in line for line in t2f_block)
    assert sum("'t1_mprage_sag_p2_iso': chosen for t1" in line for line in t2f_block) == 2


def test_2d_and_3d_t1c_resolved_by_default_and_prefer_policies_configurable() -> None:
    series, uids = ge_study()
    ax_post = make_series("AX T1 POST GAD", T1_SE, number=8, time="093000")
    series.update([ax_post])
    chosen = select_series(series).choices["t1c"]  # behaviour change: the shipped defaults prefer 3D
    assert chosen.series_instance_uid == uids["t1c"]
    assert "by prefer=3d" in chosen.reason
    assert [(r.series_instance_uid, r.reason) for r in chosen.runners_up] == [
        (ax_post[0], "prefer=3d: 2D acquisition; #7 'Sag 3D T1 FSPGR +C' is 3D")
    ]
    rules = load_rules()
    with pytest.raises(SeriesSelectionError) as failure:
        select_series(series, {**rules, "prefer": []})
    message = failure.value.details
    assert "2 series tie for t1c" in message.splitlines()[0]
    assert set(failure.value.ambiguous["t1c"]) == {uids["t1c"], ax_post[0]}
    assert "'AX T1 POST GAD': 12 instances, 2D" in message
    assert "'Sag 3D T1 FSPGR +C': 16 instances, 3D" in message
    assert 'set "prefer"' in message
    assert select_series(series, {**rules, "prefer": ["3d"]}).series_uids["t1c"] == uids["t1c"]
    assert select_series(series, {**rules, "prefer": "most_slices"}).series_uids["t1c"] == uids["t1c"]
    assert select_series(series, {**rules, "prefer": ["latest"]}).series_uids["t1c"] == ax_post[0]
    chosen = select_series(series, {**rules, "prefer": ["earliest"]})
    assert chosen.series_uids["t1c"] == uids["t1c"]
    assert "by prefer=earliest" in chosen.reasons["t1c"]


def test_repeated_t2_takes_the_later_repeat_by_default() -> None:
    series, uids = philips_study()
    repeat = make_series("T2W_TSE", {**TSE, "te": 100.0}, number=402, time="101200")
    series.update([repeat])
    chosen = select_series(series).choices["t2w"]  # behaviour change: was a tie; the default prefers the later
    assert chosen.series_instance_uid == repeat[0]
    assert chosen.runners_up[0].series_instance_uid == uids["t2w"]
    assert "prefer=latest: an earlier acquisition (series 401, 10:10:00)" in chosen.runners_up[0].reason
    with pytest.raises(SeriesSelectionError) as failure:
        select_series(series, {**load_rules(), "prefer": []})
    assert set(failure.value.ambiguous) == {"t2w"}
    assert select_series(series, {**load_rules(), "prefer": ["latest"]}).series_uids["t2w"] == repeat[0]
    assert select_series(series, {**load_rules(), "prefer": ["earliest"]}).series_uids["t2w"] == uids["t2w"]


def test_attribute_disagreement_breaks_a_description_tie() -> None:
    series, uids = philips_study()
    odd = make_series("T2W_FLAIR", TSE, number=502, time="101700")  # no inversion: not a FLAIR
    series.update([odd])
    selection = select_series(series)
    assert selection.series_uids["t2f"] == uids["t2f"]
    assert "whose attributes do not say FLAIR" in selection.reasons["t2f"]


def test_derived_4d_and_non_mr_series_are_ignored() -> None:
    series, uids = philips_study()
    derived = make_series(
        "T1W_3D_TFE +C", TFE, number=702, time="103000", slices=16, image_type=("DERIVED", "SECONDARY")
    )
    dynamic = make_series("T1W_3D_TFE +C dyn", TFE, number=703, time="103100", slices=20, repeats=3)
    uid, both = make_series("T2W_FLAIR", FLAIR, number=704, time="103200", slices=20, repeats=2, temporal=True)
    temporal = (uid, both[20:])  # what the SDK's loader keeps: one instance per position, the last repeat
    fused = make_series("T1W_3D_TFE +C", TFE, number=705, time="103300", slices=16, modality="OT")
    thin = make_series("T2W_TSE", TSE, number=706, time="103400", slices=6)
    series.update([derived, dynamic, temporal, fused, thin])
    selection = select_series(series)
    assert selection.series_uids == {role: uids[role] for role in ("t1n", "t1c", "t2w", "t2f")}
    assert "derived image (ImageType DERIVED\\SECONDARY)" in selection.ignored[derived[0]]
    assert "4D: 60 instances at 20 positions" in selection.ignored[dynamic[0]]
    assert "4D: 2 temporal positions" in selection.ignored[temporal[0]]
    assert "modality OT, not MR" in selection.ignored[fused[0]]
    runner = next(r for r in selection.choices["t2w"].runners_up if r.series_instance_uid == thin[0])
    assert runner.reason.startswith("prefer=full_coverage: covers")  # a 6-slice partial repeat loses to the full T2


def test_t1_flair_is_t1_and_a_later_bolus_start_makes_a_pre_contrast_series() -> None:
    parts = [
        make_series("Ax T1 FLAIR pre", {**FLAIR, "tr": 2200.0, "te": 10.0, "ti": 800.0}, number=1, time="1300",
                    agent="Gadavist", bolus_start="132000"),
        make_series("Ax T1 FLAIR +C", {**FLAIR, "tr": 2200.0, "te": 10.0, "ti": 800.0}, number=5, time="1330"),
        make_series("Ax T2 FSE", TSE, number=2, time="1305"),
        make_series("Ax T2 FLAIR", FLAIR, number=3, time="1310"),
    ]  # fmt: skip
    selection = select_series(study(*parts))
    assert selection.series_uids["t1n"] == parts[0][0]
    assert selection.series_uids["t1c"] == parts[1][0]
    assert selection.series_uids["t2f"] == parts[3][0]


@pytest.mark.parametrize(
    ("description", "role"),
    [
        ("t1_mprage_sag_p2_iso", "t1n"),
        ("AX T1 POST GAD", "t1c"),
        ("Sag 3D T1 FSPGR +C", "t1c"),
        ("T1 SE AX", "t1n"),
        ("T1W_3D_TFE", "t1n"),
        ("T1W_3D_TFE +C", "t1c"),
        ("T1 pre contrast", "t1n"),
        ("T1 w/o contrast", "t1n"),
        ("T1CE", "t1c"),
        ("t1_se_tra_KM", "t1c"),
        ("MPRAGE post Gd", "t1c"),
        ("T2W_FLAIR", "t2f"),
        ("Ax T2 FLAIR", "t2f"),
        ("t2_tirm_tra_dark-fluid", "t2f"),
        ("t2_spc_da-fl_sag_p2_iso", "t2f"),
        ("Ax T2 FSE", "t2w"),
        ("t2_tse_tra", "t2w"),
        ("T2W_TSE", "t2w"),
        ("t2_blade_tra", "t2w"),
        ("Ax T1 FLAIR", "t1n"),
        ("T2*", None),
        ("T2W_FFE", None),
        ("t2_fl2d_tra_hemo", None),
        ("T1 map", None),
        ("Series 3", None),
        ("", None),
    ],
)
def test_shipped_description_rules_are_anchored(description: str, role: str | None) -> None:
    header = pydicom.Dataset()
    header.Modality = "MR"
    header.SeriesDescription = description
    rules = load_rules()
    matched = [s["name"] for s in rules["selections"] if match_conditions(s["conditions"], header)]
    assert matched == ([role] if role else [])


@pytest.mark.parametrize(
    ("description", "reason"),
    [
        ("AAHead_Scout_32ch-head-coil", "localizer"),
        ("3-Plane Loc", "localizer"),
        ("SmartBrain_Survey", "localizer"),
        ("ep2d_diff_mddw_20_p2_TRACEW", "diffusion"),
        ("Apparent Diffusion Coefficient (mm2/s)", "diffusion"),
        ("SWI_Images", "other sequence"),
        ("T2*", "other sequence"),
        ("ep2d_perf", "other sequence"),
        ("t1_mprage_sag_p2_iso", None),
        ("T1 FLASH FA 15", None),
        ("Ax T2 FLAIR", None),
        ("Sag 3D T1 FSPGR +C", None),
        ("Series 3", None),
    ],
)
def test_shipped_ignore_rules(description: str, reason: str | None) -> None:
    header = pydicom.Dataset()
    header.SeriesDescription = description
    matched = [e["name"] for e in load_rules()["ignore"] if match_conditions(e["conditions"], header)]
    assert matched == ([reason] if reason else [])


def test_native_t1_acquired_after_the_t1c_is_not_taken_for_t1n() -> None:
    parts = [
        make_series("T1 SE AX", T1_SE, number=2, time="0900"),
        make_series("AX T1 POST GAD", T1_SE, number=6, time="0930"),
        make_series("T1 SE AX", T1_SE, number=7, time="0940"),
        make_series("Ax T2 FSE", TSE, number=3, time="0905"),
        make_series("Ax T2 FLAIR", FLAIR, number=4, time="0910"),
    ]
    selection = select_series(study(*parts))
    assert selection.series_uids["t1n"] == parts[0][0]
    assert "acquired after the chosen t1c" in selection.reasons["t1n"]


def test_match_conditions_semantics() -> None:
    _, instances = make_series("Ax T2 FLAIR", FLAIR, number=3, time="1000")
    ds = instances[0]
    assert match_conditions({"SeriesDescription": "ax t2 flair"}, ds)  # case-insensitive equality
    assert match_conditions({"SeriesDescription": "(?i)flair$"}, ds)  # regex search
    assert not match_conditions({"SeriesDescription": "^flair"}, ds)
    assert match_conditions({"RepetitionTime": [5000, ">"], "InversionTime": [2000, 3000]}, ds)
    assert not match_conditions({"RepetitionTime": [9000, "<"]}, ds)
    assert match_conditions({"EchoTime": "81(\\.0)?"}, ds)
    assert match_conditions({"ImageType": ["original", "!derived"]}, ds)
    assert not match_conditions({"ImageType": ["PRIMARY", "!ND"]}, ds)
    assert match_conditions({"ImageOrientationPatient": "Axial"}, ds)
    assert not match_conditions({"ImageOrientationPatient": "Sagittal"}, ds)
    assert not match_conditions({"ContrastBolusAgent": ".*"}, ds)  # missing attribute never matches
    assert match_conditions({"ContrastBolusAgent": ""}, ds)  # empty condition is skipped
    with pytest.raises(ValueError, match="relation"):
        match_conditions({"RepetitionTime": [1, "~"]}, ds)


def test_rules_validation() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        load_rules({"selections": [], "prefered": "latest"})
    with pytest.raises(ValueError, match="not one of"):
        load_rules({"selections": [{"name": "dwi", "conditions": {"Modality": "MR"}}]})
    with pytest.raises(ValueError, match="prefer"):
        load_rules({"selections": [], "prefer": ["biggest"]})
    text = DEFAULT_RULES_PATH.read_text()
    assert load_rules(text) == load_rules(DEFAULT_RULES_PATH) == load_rules(None)


def test_several_studies_in_one_call_are_refused() -> None:
    a = make_series("T2W_TSE", TSE, number=1, time="1000")
    b = make_series("T2W_FLAIR", FLAIR, number=2, time="1000", study_uid="1.2.3.4")
    with pytest.raises(ValueError, match="2 studies"):
        select_series(study(a, b))


# ------------------------------------------------------------------------------------------
# MONAI Deploy SDK: parity with DICOMSeriesSelectorOperator and the operator in a real app


def _write(series: dict[str, list[pydicom.Dataset]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for instances in series.values():
        for ds in instances:
            ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)


@pytest.fixture(scope="module")
def sdk() -> Any:
    from monai.deploy.core import Application, Fragment, Operator
    from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
    from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator

    return Application, Fragment, Operator, DICOMDataLoaderOperator, DICOMSeriesSelectorOperator


def test_shipped_rules_match_like_the_sdk_selector(sdk: Any, tmp_path: Path) -> None:
    _, fragment_cls, _, loader_cls, selector_cls = sdk
    everything: dict[str, list[pydicom.Dataset]] = {}
    for factory in (siemens_study, ge_study, philips_study, unhelpful_study):
        everything.update(factory()[0])
    _write(everything, tmp_path)
    fragment = fragment_cls()
    studies = loader_cls(fragment, name="loader").load_data_to_studies(tmp_path)
    selector = selector_cls(fragment, name="sdk_selector")
    extra = [
        {"name": "long TR", "conditions": {"RepetitionTime": [5000, ">"], "Modality": "MR"}},
        {"name": "TE range", "conditions": {"EchoTime": [2, 12]}},
        {"name": "original", "conditions": {"ImageType": ["ORIGINAL", "!DERIVED"]}},
        {"name": "sagittal", "conditions": {"ImageOrientationPatient": "Sagittal"}},
        {"name": "agent", "conditions": {"ContrastBolusAgent": "(?i)gad"}},
        {"name": "number", "conditions": {"SeriesNumber": [300, ">="]}},
    ]
    rules = load_rules()
    checks = rules["selections"] + rules["ignore"] + extra
    headers = {uid: instances[0] for uid, instances in everything.items()}
    for check in checks:
        found = selector.filter({"selections": [check]}, studies, all_matched=True)
        sdk_uids = {s.series.SeriesInstanceUID for f in found for s in f.selected_series}
        ours = {uid for uid, ds in headers.items() if match_conditions(check["conditions"], ds)}
        assert ours == sdk_uids, check["name"]
        assert ours or check["name"] in {"other sequence"}, f"{check['name']} matched nothing: a weak check"


def test_operator_in_an_sdk_application(sdk: Any, tmp_path: Path) -> None:
    application_cls, _, operator_cls, loader_cls, _ = sdk
    from holoscan.conditions import CountCondition

    from operators.series_selection.operator import DicomSeriesSelector

    series, uids = siemens_study()
    _write(series, tmp_path / "in")
    received: list[Any] = []

    class Sink(operator_cls):  # type: ignore[misc,valid-type]
        def setup(self, spec: Any) -> None:
            spec.input("series")
            spec.input("selection")

        def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
            received.append((op_input.receive("series"), op_input.receive("selection")))

    class App(application_cls):  # type: ignore[misc,valid-type]
        def compose(self) -> None:
            loader = loader_cls(self, CountCondition(self, 1), input_folder=tmp_path / "in", name="loader")
            selector = DicomSeriesSelector(self, rules=DEFAULT_RULES_PATH, name="selector")
            sink = Sink(self, name="sink")
            self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(selector, sink, {("selected_series", "series"), ("series_selection", "selection")})

    App().run()
    assert len(received) == 1
    by_role, selection = received[0]
    assert {role: s.SeriesInstanceUID for role, s in by_role.items()} == {
        role: uids[role] for role in ("t1n", "t1c", "t2w", "t2f")
    }
    assert selection.series_uids == {role: s.SeriesInstanceUID for role, s in by_role.items()}
    assert len(by_role["t1c"].get_sop_instances()) == 16


def test_operator_failure_surfaces_from_application_run(sdk: Any, tmp_path: Path) -> None:
    application_cls, _, _, loader_cls, _ = sdk
    from holoscan.conditions import CountCondition

    from operators.series_selection.operator import DicomSeriesSelector

    series, _ = siemens_study(include_flair=False)
    _write(series, tmp_path)

    class App(application_cls):  # type: ignore[misc,valid-type]
        def compose(self) -> None:
            loader = loader_cls(self, CountCondition(self, 1), input_folder=tmp_path, name="loader")
            selector = DicomSeriesSelector(self, name="selector")
            self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})

    with pytest.raises(SeriesSelectionError, match="no t2f series"):
        App().run()


def test_select_from_studies_with_sdk_objects(sdk: Any, tmp_path: Path) -> None:
    _, fragment_cls, _, loader_cls, _ = sdk
    first, first_uids = ge_study()
    second, _ = philips_study()
    for instances in second.values():
        for ds in instances:
            ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    incomplete, _ = siemens_study(include_flair=False)
    for instances in incomplete.values():
        for ds in instances:
            ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    _write(first, tmp_path / "a")
    _write(incomplete, tmp_path / "a")
    _write(second, tmp_path / "b")
    loader = loader_cls(fragment_cls(), name="loader")
    by_role, selection = select_from_studies(loader.load_data_to_studies(tmp_path / "a"))
    assert selection.series_uids["t2f"] == first_uids["t2f"]
    assert by_role["t2f"].SeriesInstanceUID == first_uids["t2f"]
    with pytest.raises(SeriesSelectionError, match="2 studies in the input each have all four"):
        select_from_studies(loader.load_data_to_studies(tmp_path))
    with pytest.raises(SeriesSelectionError, match="no t2f series"):
        only_incomplete = [s for s in loader.load_data_to_studies(tmp_path / "a") if s.StudyInstanceUID.endswith("3")]
        select_from_studies(only_incomplete)


def test_default_rules_file_is_valid_json_in_sdk_format() -> None:
    raw = json.loads(DEFAULT_RULES_PATH.read_text())
    assert {s["name"] for s in raw["selections"]} == {"t1n", "t1c", "t2w", "t2f"}
    assert all(set(s) == {"name", "conditions"} for s in raw["selections"])


# ------------------------------------------------------------------------------------------
# Real-world descriptions, vendor ImageTypes and contrast attributes -> role

FL3D = {"seq": ["GR"], "var": ["SP"], "tr": 11.0, "te": 4.9, "acq": "3D"}
BRAVO = {**FSPGR, "ti": 450.0}
FLAIR_3D = {**FLAIR, "tr": 5000.0, "te": 390.0, "ti": 1800.0, "acq": "3D"}
T1_FLAIR = {**FLAIR, "tr": 2200.0, "te": 10.0, "ti": 800.0}
SIE = ("ORIGINAL", "PRIMARY", "M", "ND")
SIE_DIS = ("ORIGINAL", "PRIMARY", "M", "DIS2D")
GE = ("ORIGINAL", "PRIMARY", "OTHER")
PH_SE = ("ORIGINAL", "PRIMARY", "M_SE", "M", "SE")
PH_FFE = ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE")
PH_IR = ("ORIGINAL", "PRIMARY", "M_IR", "M", "IR")
GADOBUTROL = [pydicom.Dataset()]
GADOBUTROL[0].CodeValue = "C81600"
GADOBUTROL[0].CodingSchemeDesignator = "NCIt"
GADOBUTROL[0].CodeMeaning = "Gadobutrol"
NO_IMAGE_TYPE = {"ImageType": None}

# (description, acquisition parameters, ImageType, extra attributes, expected role or None, text in the reason)
ROLE_TABLE: list[tuple[str, dict[str, Any], tuple[str, ...], dict[str, Any], str | None, str]] = [
    # Siemens
    ("t1_mprage_sag_p2_iso", MPRAGE, SIE, {}, "t1n", "t1n rule"),
    ("t1_mprage_sag_p2_iso", MPRAGE, SIE, {"ContrastBolusAgent": "Gadovist"}, "t1c", "attributes win"),
    ("t1_mpr_sag_p2_iso", MPRAGE, SIE, {}, "t1n", "t1n rule"),
    ("T1_MPR_TRA", MPRAGE, SIE, {}, "t1n", "t1n rule"),
    ("t1_mpr_tra_iso_KM", MPRAGE, SIE, {}, "t1c", "t1c rule"),
    ("t1_mprage_tra_KM", MPRAGE, SIE, {"ContrastBolusAgent": "Dotarem"}, "t1c", "t1c rule"),
    ("t1_se_tra_KM", T1_SE, SIE, {}, "t1c", "t1c rule"),
    ("t1_se_tra", T1_SE, SIE, {}, "t1n", "t1n rule"),
    ("t1_fl3d_tra_p3_iso", FL3D, SIE, {}, "t1n", "t1n rule"),
    ("t1_fl3d_tra_KM", FL3D, SIE, {}, "t1c", "t1c rule"),
    ("t1_vibe_fs_tra_KM", FL3D, SIE, {}, "t1c", "t1c rule"),
    ("t2_tse_tra", TSE, SIE, {}, "t2w", "t2w rule"),
    ("t2_tse_tra_512", TSE, SIE_DIS, {}, "t2w", "t2w rule"),
    ("t2_blade_tra", TSE, SIE, {}, "t2w", "t2w rule"),
    ("t2_tirm_tra_dark-fluid", FLAIR, SIE, {}, "t2f", "t2f rule"),
    ("t2_spc_da-fl_sag_p2_iso", FLAIR_3D, SIE, {}, "t2f", "t2f rule"),
    ("t1_mprage_sag_p2_iso_MPR_tra", MPRAGE, ("DERIVED", "SECONDARY", "MPR", "CSA MPR"),
     {"ContrastBolusAgent": "Gadovist"}, "t1c", "attributes win"),
    ("t1_mprage_sag_p2_iso_MIP_tra", MPRAGE, ("DERIVED", "SECONDARY", "MIP"), {}, None, "MIP is never used"),
    ("t1_fl3d_tra_SUB", FL3D, ("DERIVED", "SECONDARY", "SUBTRACTION"), {}, None, "SUBTRACTION is never used"),
    ("t1_fl3d_tra_P", FL3D, ("ORIGINAL", "PRIMARY", "P", "ND"), {}, None, "P is never used"),
    ("t1_fl3d_tra_KM", FL3D, ("DERIVED", "PRIMARY", "MIP_SAG", "ND"), {}, None, "MIP is never used"),
    ("ep2d_diff_mddw_20_p2_ADC", EPI, ("DERIVED", "PRIMARY", "DIFFUSION", "ADC"), {}, None, "diffusion"),
    ("T1 SE tra nach KM", T1_SE, SIE, {}, "t1c", "t1c rule"),
    ("T1 SE tra mit KM", T1_SE, SIE, {}, "t1c", "t1c rule"),
    ("T1 SE tra vor KM", T1_SE, SIE, {}, "t1n", "t1n rule"),
    ("T1 tra ohne KM", T1_SE, SIE, {}, "t1n", "t1n rule"),
    ("T1 MPRAGE nativ", MPRAGE, SIE, {}, "t1n", "t1n rule"),
    ("T1 MPRAGE Kontrast", MPRAGE, SIE, {}, "t1c", "t1c rule"),
    ("t2_tse_tra nativ", TSE, SIE, {}, "t2w", "t2w rule"),
    # GE
    ("Ax T1 BRAVO +C", BRAVO, GE, {}, "t1c", "t1c rule"),
    ("Ax T1 BRAVO", BRAVO, GE, {}, "t1n", "t1n rule"),
    ("Sag CUBE FLAIR", FLAIR_3D, GE, {}, "t2f", "t2f rule"),
    ("Sag CUBE T2", {**TSE, "acq": "3D"}, GE, {}, "t2w", "t2w rule"),
    ("AX T2 FRFSE", TSE, GE, {}, "t2w", "t2w rule"),
    ("Ax T2 FLAIR", FLAIR, GE, {}, "t2f", "t2f rule"),
    ("3D T1 FSPGR", FSPGR, GE, {}, "t1n", "t1n rule"),
    ("Sag 3D T1 FSPGR +C", FSPGR, GE, {}, "t1c", "t1c rule"),
    ("AX T1 SE C+", T1_SE, GE, {}, "t1c", "t1c rule"),
    ("AX T1 POST GAD", T1_SE, GE, {}, "t1c", "t1c rule"),
    ("AX T1 PRE GAD", T1_SE, GE, {}, "t1n", "t1n rule"),
    ("Ax T1 FLAIR", T1_FLAIR, GE, {}, "t1n", "t1n rule"),
    ("COR T1 +C", T1_SE, GE, {}, "t1c", "t1c rule"),
    ("Ax T1 BRAVO +C REFORMAT", BRAVO, ("DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE"), {}, "t1c", "t1c rule"),
    ("Ax T1 +C MIP", BRAVO, ("DERIVED", "SECONDARY", "PROJECTION IMAGE"), {}, None, "PROJECTION IMAGE"),
    ("3-Plane Loc", T1_SE, ("ORIGINAL", "PRIMARY", "LOCALIZER"), {}, None, "localizer"),
    # Philips
    ("T1W_3D_TFE", TFE, PH_FFE, {}, "t1n", "t1n rule"),
    ("sT1W_3D_TFE", TFE, PH_FFE, {}, "t1n", "t1n rule"),
    # highdicom's legacy converter appends "(enhanced conversion)": not contrast enhancement
    ("T1W_3D_TFE (enhanced conversion)", TFE, PH_FFE, {}, "t1n", "t1n rule"),
    ("T1W_3D_TFE +C (enhanced conversion)", TFE, PH_FFE, {}, "t1c", "t1c rule"),
    ("WIP sT1W_3D_TFE", TFE, PH_FFE, {}, "t1n", "t1n rule"),
    ("T1W_3D_TFE +C", TFE, PH_FFE, {}, "t1c", "t1c rule"),
    ("WIP sT1W_3D_TFE GD", TFE, PH_FFE, {}, "t1c", "t1c rule"),
    ("701 T1W_3D_TFE_GD", TFE, PH_FFE, {}, "t1c", "t1c rule"),
    ("T1W_SE_GD", T1_SE, PH_SE, {}, "t1c", "t1c rule"),
    ("T1W_SE", T1_SE, PH_SE, {}, "t1n", "t1n rule"),
    ("T1W_SE", T1_SE, ("ORIGINAL", "PRIMARY", "P_SE", "P", "SE"), {}, None, "P is never used"),
    ("T2W_TSE", TSE, PH_SE, {}, "t2w", "t2w rule"),
    ("WIP T2W_TSE", TSE, PH_SE, {}, "t2w", "t2w rule"),
    ("T2W_FLAIR", FLAIR, PH_IR, {}, "t2f", "t2f rule"),
    ("3D_FLAIR", FLAIR_3D, PH_IR, {}, "t2f", "t2f rule"),
    ("VISTA", FLAIR_3D, PH_IR, {}, "t2f", "long-TI inversion recovery"),
    ("T1W_3D_TFE", TFE, ("DERIVED", "PRIMARY", "M_FFE", "M", "FFE"), {"LossyImageCompression": "01"}, "t1n",
     "t1n rule"),
    # French, Spanish, Italian, Dutch, English words
    ("T1 SE sans injection", T1_SE, SIE, {}, "t1n", "t1n rule"),
    ("T1 SE avec injection", T1_SE, SIE, {}, "t1c", "t1c rule"),
    ("T1 3D gado", MPRAGE, SIE, {}, "t1c", "t1c rule"),
    ("3D T1 post-gado", MPRAGE, SIE, {}, "t1c", "t1c rule"),
    ("T1 SE sans gado", T1_SE, SIE, {}, "t1n", "t1n rule"),
    ("T1 injecté", T1_SE, SIE, {}, "t1c", "t1c rule"),
    ("T1 sin contraste", T1_SE, GE, {}, "t1n", "t1n rule"),
    ("T1 con contraste", T1_SE, GE, {}, "t1c", "t1c rule"),
    ("T1 SE axial basal", T1_SE, GE, {}, "t1n", "t1n rule"),
    ("T1 senza mdc", T1_SE, PH_SE, {}, "t1n", "t1n rule"),
    ("T1 con mdc", T1_SE, PH_SE, {}, "t1c", "t1c rule"),
    ("T1 pre contrasto", T1_SE, PH_SE, {}, "t1n", "t1n rule"),
    ("T1 post contrasto", T1_SE, PH_SE, {}, "t1c", "t1c rule"),
    ("T1 zonder contrast", T1_SE, PH_SE, {}, "t1n", "t1n rule"),
    ("T1 met contrast", T1_SE, PH_SE, {}, "t1c", "t1c rule"),
    ("T1 na contrast", T1_SE, PH_SE, {}, "t1c", "t1c rule"),
    ("T1 voor contrast", T1_SE, PH_SE, {}, "t1n", "t1n rule"),
    ("T1 pre Gd", T1_SE, GE, {}, "t1n", "t1n rule"),
    ("T1 post Gd", T1_SE, GE, {}, "t1c", "t1c rule"),
    ("T1+C", T1_SE, GE, {}, "t1c", "t1c rule"),
    ("AX T1 GAD", T1_SE, GE, {}, "t1c", "t1c rule"),
    ("T1 enhanced", T1_SE, GE, {}, "t1c", "t1c rule"),
    # Attributes against (or instead of) words
    ("T1 pre Gd", T1_SE, GE, {"ContrastBolusAgent": "Gadovist"}, "t1c",
     "description says pre-contrast, but ContrastBolusAgent 'Gadovist' says post-contrast: attributes win"),
    ("T1 post Gd", T1_SE, GE, {"ContrastBolusAgent": "Gadovist", "ContrastBolusStartTime": "101500"}, "t1n",
     "ContrastBolusStartTime 10:15:00 is after this series (10:00:00): attributes win"),
    ("T1W_SE", T1_SE, PH_SE, {"ContrastBolusAgent": "NONE"}, "t1n", "t1n rule"),
    ("Series 7", MPRAGE, SIE, {"ContrastBolusIngredient": "GADOLINIUM"}, "t1c", "ContrastBolusIngredient"),
    ("Series 8", T1_SE, GE, {"ContrastBolusVolume": 15.0}, "t1c", "ContrastBolusVolume 15 ml"),
    ("Series 9", T1_SE, PH_SE, {"ContrastBolusAgentSequence": GADOBUTROL}, "t1c", "'Gadobutrol'"),
    ("Series 10", MPRAGE, SIE, {}, "t1n", "T1-weighted"),
    ("Series 11", FLAIR, SIE, {}, "t2f", "FLAIR"),
    # No ImageType: description words are the only hint
    ("Ax T1 MPR", T1_SE, (), NO_IMAGE_TYPE, "t1n", "t1n rule"),
    ("MIP Ax T1 +C", T1_SE, (), NO_IMAGE_TYPE, None, "'MIP' in the description"),
]  # fmt: skip


@pytest.mark.parametrize(("description", "params", "image_type", "extra", "role", "why"), ROLE_TABLE)
def test_real_world_descriptions_and_attributes_give_the_role(
    description: str, params: dict[str, Any], image_type: tuple[str, ...], extra: dict[str, Any], role: str | None,
    why: str,
) -> None:  # fmt: skip
    _, instances = make_series(description, params, number=5, time="100000", image_type=image_type, extra=extra)
    got, reason = classify_series(instances)
    assert got == role, reason
    assert why in reason


def test_role_table_is_large_and_covers_the_vendors_and_languages() -> None:
    assert len(ROLE_TABLE) >= 60
    descriptions = " ".join(row[0] for row in ROLE_TABLE)
    for word in ("nach KM", "ohne KM", "sans injection", "sin contraste", "senza mdc", "zonder contrast", "+C", "C+"):
        assert word in descriptions


# ------------------------------------------------------------------------------------------
# Several candidates per role: the shipped preferences, the runners-up, true ambiguity

_CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def tumour_protocol() -> tuple[dict[str, list[pydicom.Dataset]], dict[str, str]]:
    """Siemens tumour protocol: 2D and 3D T1 pre and post, T1c in two planes, a reformat,
    a distortion-corrected T2 beside its uncorrected copy, and a FLAIR repeated after motion."""
    agent = {"ContrastBolusAgent": "Gadovist"}
    parts = {
        "t1n": make_series("t1_mprage_sag_p2_iso", MPRAGE, number=2, time="080500", slices=16, thickness=1.0,
                           orientation=_SAGITTAL),
        "t1n_2d": make_series("t1_se_tra", T1_SE, number=3, time="080800", thickness=5.0),
        "t2w_nd": make_series("t2_tse_tra", TSE, number=4, time="081200", image_type=SIE),
        "t2w": make_series("t2_tse_tra", TSE, number=5, time="081200", image_type=SIE_DIS),
        "t2f_first": make_series("t2_tirm_tra_dark-fluid", FLAIR, number=6, time="081600"),
        "t2f": make_series("t2_tirm_tra_dark-fluid", FLAIR, number=7, time="082000"),
        "t1c_ax": make_series("t1_se_tra_KM", T1_SE, number=8, time="083000", thickness=5.0, extra=agent),
        "t1c_cor": make_series("t1_se_cor_KM", T1_SE, number=9, time="083400", thickness=5.0,
                               orientation=_CORONAL, extra=agent),
        "t1c": make_series("t1_mprage_sag_p2_iso", MPRAGE, number=10, time="083800", slices=16, thickness=1.0,
                           orientation=_SAGITTAL, extra=agent),
        "mpr": make_series("t1_mprage_sag_p2_iso_MPR_tra", MPRAGE, number=11, time="083800", slices=30,
                           thickness=1.0, image_type=("DERIVED", "SECONDARY", "MPR"), extra=agent),
    }  # fmt: skip
    return study(*parts.values()), {k: v[0] for k, v in parts.items()}


def test_tumour_protocol_chosen_as_a_neuroradiologist_would_with_runners_up_explained() -> None:
    series, uids = tumour_protocol()
    selection = select_series(series)
    assert selection.series_uids == {role: uids[role] for role in ROLES}
    runners = {role: {r.series_instance_uid: r.reason for r in c.runners_up} for role, c in selection.choices.items()}
    assert runners["t1n"] == {uids["t1n_2d"]: "prefer=3d: 2D acquisition; #2 't1_mprage_sag_p2_iso' is 3D"}
    assert runners["t2w"] == {
        uids["t2w_nd"]: "prefer=distortion_corrected: not distortion-corrected (ImageType ORIGINAL\\PRIMARY\\M\\ND); "
        "#5 't2_tse_tra' is (DIS2D)"
    }
    assert runners["t2f"] == {
        uids["t2f_first"]: "prefer=latest: an earlier acquisition (series 6, 08:16:00) than the repeat "
        "#7 't2_tirm_tra_dark-fluid' (08:20:00)"
    }
    assert set(runners["t1c"]) == {uids["mpr"], uids["t1c_ax"], uids["t1c_cor"]}
    assert runners["t1c"][uids["mpr"]].startswith("prefer=original: reformat (ImageType DERIVED\\SECONDARY\\MPR)")
    assert runners["t1c"][uids["t1c_ax"]] == "prefer=3d: 2D acquisition; #10 't1_mprage_sag_p2_iso' is 3D"
    assert "by prefer=original" in selection.reasons["t1c"] and "by prefer=3d" in selection.reasons["t1c"]
    entries = {e.series_instance_uid: e for e in selection.series}
    assert len(entries) == len(series)
    assert {e.status for e in entries.values()} == {"selected", "runner-up"}
    assert entries[uids["mpr"]].role == "t1c" and entries[uids["mpr"]].status == "runner-up"
    assert entries[uids["t1c"]].slice_mm == 1.0 and entries[uids["t1c"]].acquisition == "3D"
    assert selection.policy["prefer"][:2] == ["original", "3d"]


def test_t1c_in_two_planes_thin_over_thick_and_finer_in_plane() -> None:
    base = [
        make_series("t1_mprage_sag_p2_iso", MPRAGE, number=2, time="0805", thickness=1.0, orientation=_SAGITTAL),
        make_series("t2_tse_tra", TSE, number=4, time="0812", thickness=5.0, pixel=0.9),
        make_series("t2_tirm_tra_dark-fluid", FLAIR, number=6, time="0816", thickness=5.0),
    ]
    cor = make_series("t1_se_cor_KM", T1_SE, number=8, time="0830", thickness=5.0, orientation=_CORONAL)
    ax = make_series("t1_se_tra_KM", T1_SE, number=9, time="0834", thickness=5.0)
    thin_t2 = make_series("t2_tse_tra_3mm", TSE, number=5, time="0813", thickness=3.0, pixel=0.9)
    fine_flair = make_series("t2_tirm_tra_dark-fluid_512", FLAIR, number=7, time="0810", thickness=5.0, pixel=0.45)
    selection = select_series(study(*base, cor, ax, thin_t2, fine_flair))
    assert selection.series_uids["t1c"] == ax[0]
    assert selection.choices["t1c"].runners_up[0].reason == "prefer=axial: coronal plane; #9 't1_se_tra_KM' is axial"
    assert selection.series_uids["t2w"] == thin_t2[0]
    assert selection.choices["t2w"].runners_up[0].reason == (
        "prefer=thinnest: 5 mm slices; #5 't2_tse_tra_3mm' has 3 mm"
    )
    assert selection.series_uids["t2f"] == fine_flair[0]  # finer in-plane beats the later series
    assert selection.choices["t2f"].runners_up[0].reason.startswith("prefer=finest_in_plane: 0.9 mm pixels")


def _minimal_study(t1c: tuple[str, list[pydicom.Dataset]], *more: tuple[str, list[pydicom.Dataset]]) -> dict:
    return study(
        make_series("t1_mprage_sag_p2_iso", MPRAGE, number=2, time="0805", orientation=_SAGITTAL),
        make_series("t2_tse_tra", TSE, number=4, time="0812"),
        make_series("t2_tirm_tra_dark-fluid", FLAIR, number=6, time="0816"),
        t1c,
        *more,
    )


def test_a_reformat_is_used_when_no_original_exists_and_says_so() -> None:
    agent = {"ContrastBolusAgent": "Gadovist"}
    mpr_type = ("DERIVED", "SECONDARY", "MPR", "CSA MPR")
    mpr = make_series("t1_mprage_sag_p2_iso_MPR_tra", MPRAGE, number=11, time="0838", image_type=mpr_type, extra=agent)
    mip_type = ("DERIVED", "SECONDARY", "MIP")
    mip = make_series("t1_mprage_KM_MIP_tra", MPRAGE, number=12, time="0839", image_type=mip_type, extra=agent)
    selection = select_series(_minimal_study(mpr, mip))
    assert selection.series_uids["t1c"] == mpr[0]
    assert "reformat (ImageType DERIVED\\SECONDARY\\MPR\\CSA MPR)" in selection.reasons["t1c"]
    assert "MIP is never used" in selection.ignored[mip[0]]
    assert selection.policy["lowest_preference_image_types"][0] == "MPR"
    assert "MIP" in selection.policy["never_used_image_types"]


def test_lossy_series_stays_eligible_and_is_flagged_and_a_lossless_copy_wins() -> None:
    lossy = {"LossyImageCompression": "01", "LossyImageCompressionMethod": "ISO_10918_1",
             "LossyImageCompressionRatio": "8.2"}  # fmt: skip
    derived_primary = ("DERIVED", "PRIMARY", "M", "ND")
    post = make_series("t1_mprage_tra_KM", MPRAGE, number=9, time="0830", image_type=derived_primary, extra=lossy)
    selection = select_series(_minimal_study(post))
    choice = selection.choices["t1c"]
    assert choice.series_instance_uid == post[0] and choice.lossy
    assert "lossy-compressed (LossyImageCompression 01 (ISO_10918_1, ratio 8.2)), used" in choice.reason
    assert selection.to_dict()["t1c"]["lossy"] is True
    assert next(e for e in selection.series if e.series_instance_uid == post[0]).lossy
    copy = make_series("t1_mprage_tra_KM", MPRAGE, number=9, time="0830")
    selection = select_series(_minimal_study(post, copy))
    assert selection.series_uids["t1c"] == copy[0] and not selection.choices["t1c"].lossy
    assert selection.choices["t1c"].runners_up[0].reason.startswith("prefer=lossless: lossy-compressed")


def test_true_ambiguity_fails_in_one_line_naming_the_candidates() -> None:
    first = make_series("t1_mprage_tra_KM", MPRAGE, number=9, time="0830")
    second = make_series("t1_mprage_tra_KM", MPRAGE, number=9, time="0830")
    with pytest.raises(SeriesSelectionError) as failure:
        select_series(_minimal_study(first, second))
    line = str(failure.value)
    assert "\n" not in line
    assert line.startswith("study 1.2.826.0.1.3680043.8.498.1 (ACC001): series selection: 2 series tie for t1c (")
    assert f"#9 't1_mprage_tra_KM' ({first[0]})" in line and f"#9 't1_mprage_tra_KM' ({second[0]})" in line
    assert line.endswith("and no preference separates them")
    assert "did not separate them" in failure.value.details


def test_contrast_entered_once_for_the_whole_exam_is_no_evidence() -> None:
    agent = {"ContrastBolusAgent": "Gadovist"}
    parts = [
        make_series("t1_mprage_sag_p2_iso pre", MPRAGE, number=2, time="0805", extra=agent),
        make_series("t2_tse_tra", TSE, number=4, time="0812", extra=agent),
        make_series("t2_tirm_tra_dark-fluid", FLAIR, number=6, time="0816", extra=agent),
        make_series("t1_mprage_sag_p2_iso_KM", MPRAGE, number=8, time="0830", extra=agent),
    ]
    selection = select_series(study(*parts))
    assert selection.series_uids["t1n"] == parts[0][0]
    assert selection.series_uids["t1c"] == parts[3][0]
    assert "ContrastBolusAgent 'Gadovist' on every series, untimed: no evidence" in selection.reasons["t1n"]
    entry = classify_series(parts[0][1])  # alone, the agent overrules the words
    assert entry[0] == "t1c" and "attributes win" in entry[1]


# ------------------------------------------------------------------------------------------
# Other studies and patients in the input; the loader's inventory of files it did not load


class _Sop:
    def __init__(self, ds: pydicom.Dataset) -> None:
        self.ds = ds

    def get_native_sop_instance(self) -> pydicom.Dataset:
        return self.ds


class _SdkSeries:
    def __init__(self, uid: str, instances: list[pydicom.Dataset]) -> None:
        self.SeriesInstanceUID = uid
        self.sops = [_Sop(ds) for ds in instances]

    def get_sop_instances(self) -> list[_Sop]:
        return self.sops


class _SdkStudy:
    """The part of the SDK's DICOMStudy the selector uses, plus the loader's `inventory` attribute."""

    def __init__(self, series: dict[str, list[pydicom.Dataset]], inventory: StudyInventory | None = None) -> None:
        self.StudyInstanceUID = next(iter(series.values()))[0].StudyInstanceUID
        self.series = [_SdkSeries(uid, instances) for uid, instances in series.items()]
        if inventory is not None:
            self.inventory = inventory

    def get_all_series(self) -> list[_SdkSeries]:
        return self.series


def _restamp(series: dict[str, list[pydicom.Dataset]], study_uid: str, patient: str) -> None:
    for instances in series.values():
        for ds in instances:
            ds.StudyInstanceUID, ds.PatientID = study_uid, patient


def test_series_of_other_studies_and_patients_are_listed_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    chosen, uids = ge_study()
    _restamp(chosen, "1.2.826.0.1.3680043.8.498.1", "P1")
    other_patient, _ = siemens_study(include_flair=False)
    _restamp(other_patient, "1.2.826.0.1.3680043.8.498.7", "P2")
    same_patient = dict([make_series("Ax T2 FSE", TSE, number=3, time="070000", study_uid="1.2.826.0.1.3680043.8.498.8",
                                     extra={"PatientID": "P1"})])  # fmt: skip
    studies = [_SdkStudy(other_patient), _SdkStudy(chosen), _SdkStudy(same_patient)]
    with caplog.at_level("WARNING", logger="operators.series_selection"):
        by_role, selection = select_from_studies(studies)
    assert by_role["t2f"].SeriesInstanceUID == uids["t2f"]
    assert selection.patient_id == "P1"
    foreign = {f.series_instance_uid: f for f in selection.foreign}
    assert set(foreign) == set(other_patient) | set(same_patient)
    some = foreign[next(iter(other_patient))]
    assert some.patient_id == "P2" and some.study_instance_uid.endswith(".7")
    assert some.reason == (
        "another patient (PatientID 'P2'; the selected study's is 'P1'): study 1.2.826.0.1.3680043.8.498.7, "
        "not the selected study 1.2.826.0.1.3680043.8.498.1 (that study is incomplete: no t2f series)"
    )
    assert foreign[next(iter(same_patient))].reason.startswith("another study of the same patient: study ")
    assert "8 series of other studies/patients in the input are not used" in caplog.text
    complete_twice, _ = philips_study()
    _restamp(complete_twice, "1.2.826.0.1.3680043.8.498.9", "P3")
    with pytest.raises(SeriesSelectionError, match="2 studies in the input each have all four series"):
        select_from_studies([_SdkStudy(chosen), _SdkStudy(complete_twice)])


def test_a_series_of_another_patient_inside_the_study_is_ignored_with_that_reason() -> None:
    series, uids = philips_study()
    _restamp(series, "1.2.826.0.1.3680043.8.498.1", "P1")
    intruder = make_series("T2W_TSE", TSE, number=402, time="101200", extra={"PatientID": "P9"})
    series.update([intruder])
    selection = select_series(series)
    assert selection.series_uids["t2w"] == uids["t2w"]  # the later repeat would have won: it is another patient's
    assert selection.ignored[intruder[0]] == "another patient (PatientID 'P9'; the study's is 'P1')"
    entry = next(e for e in selection.series if e.series_instance_uid == intruder[0])
    assert entry.status == "ignored"
    parts = [
        make_series("T1W_3D_TFE", TFE, number=1, time="1000", extra={"PatientID": "P1"}),
        make_series("T2W_TSE", TSE, number=2, time="1005", extra={"PatientID": "P1"}),
        make_series("T2W_FLAIR", FLAIR, number=3, time="1010", extra={"PatientID": "P9"}),
        make_series("T1W_3D_TFE +C", TFE, number=4, time="1020", extra={"PatientID": "P9"}),
    ]
    with pytest.raises(SeriesSelectionError) as failure:
        select_series(study(*parts))
    assert str(failure.value) == (
        "study 1.2.826.0.1.3680043.8.498.1 (ACC001): series selection: the study holds series of 2 patients "
        "('P1': 2 series, 'P9': 2 series); cannot tell whose study it is"
    )


def _inventory(*unreadable: UnreadableFile) -> StudyInventory:
    return StudyInventory(
        "/in/cd",
        skipped=[SkippedFile("AUTORUN.INF", "not DICOM"), SkippedFile("DICOMDIR", "DICOMDIR (media directory)")],
        unreadable=list(unreadable),
    )


def test_unreadable_file_of_a_selected_series_fails_the_study_naming_series_and_file() -> None:
    series, uids = siemens_study()
    broken = UnreadableFile(
        "DICOM/S4/IM7", "truncated pixel data", series[uids["t2f"]][0].StudyInstanceUID, uids["t2f"]
    )
    with pytest.raises(StudyError) as failure:
        select_from_studies([_SdkStudy(series, _inventory(broken))])
    line = str(failure.value)
    assert line == (
        f"study 1.2.826.0.1.3680043.8.498.1 (ACC001): unreadable file DICOM/S4/IM7 in the t2f series "
        f"#4 't2_tirm_tra_dark-fluid' ({uids['t2f']}): truncated pixel data"
    )
    assert failure.value.file == "DICOM/S4/IM7" and uids["t2f"] in failure.value.series
    unknown = UnreadableFile("DICOM/S9/IM1", "not a valid DICOM header")
    with pytest.raises(StudyError, match="unreadable file DICOM/S9/IM1 of unknown series may belong to a selected"):
        select_from_studies([_SdkStudy(series, _inventory(unknown))])


def test_unreadable_files_of_other_series_travel_with_the_selection() -> None:
    series, uids = siemens_study()
    of_dwi = UnreadableFile("DICOM/S5/IM3", "cannot decode", "1.2.826.0.1.3680043.8.498.1", uids["adc"])
    of_other_study = UnreadableFile("DICOM/X/IM1", "truncated header", "1.2.826.0.1.3680043.8.498.99")
    inventory = _inventory(of_dwi, of_other_study)
    _, selection = select_from_studies([_SdkStudy(series, inventory)])
    assert selection.inventory is inventory
    _, bare = select_from_studies([_SdkStudy(series)])
    assert bare.inventory is None


def test_siemens_mpr_abbreviation_with_imagetype_original_is_an_acquisition_not_a_reformat() -> None:
    mprage = make_series("T1_MPR_TRA", MPRAGE, number=2, time="0805", image_type=SIE, thickness=1.0)
    thick = make_series("t1_se_tra", T1_SE, number=3, time="0810", image_type=SIE, thickness=5.0)
    parts = [
        mprage,
        thick,
        make_series("t2_tse_tra", TSE, number=4, time="0812"),
        make_series("t2_tirm_tra_dark-fluid", FLAIR, number=6, time="0816"),
        make_series("t1_mpr_sag_p2_iso_KM", MPRAGE, number=8, time="0830", image_type=SIE, orientation=_SAGITTAL),
    ]
    selection = select_series(study(*parts))
    assert selection.series_uids["t1n"] == mprage[0]  # 3D original beats the 2D SE, not demoted as a reformat
    assert (
        "ImageType ORIGINAL\\PRIMARY\\M\\ND: an acquisition ('MPR' in the description is not a reformat)"
        in (selection.reasons["t1n"])
    )
    assert selection.choices["t1n"].runners_up[0].reason.startswith("prefer=3d: 2D acquisition")
    assert selection.series_uids["t1c"] == parts[4][0]
