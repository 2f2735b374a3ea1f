"""The corpus: studies shaped like those hospitals send, each with what the application must do.

Every case is deterministic (phantom, seeds, file names). A case writes its series with
app.synthetic_study, then ``prepare`` re-encodes, re-lays-out or damages the folder and marks the
files the expectation refers to (``Written.marked``: "file" for the damaged file, "skipped" for
non-DICOM files the report must list, "unreadable" for DICOM files it must list).

Policies the expectations state (from issue 11): 3D over 2D, thin over thick, the later of two
identical repeats, ORIGINAL over DERIVED (MPR, MIP, subtraction); a distortion-corrected copy
(Siemens DIS2D) over the uncorrected one (ND), as it is the later, geometrically faithful series;
contrast-bolus attributes over description words; a lossy series stays eligible and is flagged;
foreign series are listed; partial coverage is reported with a warning and segmented only where
every series has data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydicom

from app.corpus import encodings, layouts
from app.corpus.checks import Failure, Success, Written
from app.corpus.vendors import ALTERNATIVE_WORDS, protocol
from app.synthetic_study import PHILIPS, SIEMENS, SeriesSpec
from segmamba.synthetic import Lesion, Phantom

ModelKind = Literal["threshold", "demo"]
ROLES = {"t1n": 0, "t1c": 1, "t2w": 2, "t2f": 3}
LESION_CENTER = (-26.0, 2.0, 36.0)


def phantom() -> Phantom:
    """The corpus head: the phantom off the scanner origin with a lesion right-posterior-superior."""
    return Phantom(center=(2.0, -8.0, 15.0), lesion=Lesion(center=LESION_CENTER, radius=22.0, seed=1))


@dataclass(frozen=True)
class Case:
    """One study of the corpus and its expectation."""

    name: str
    specs: tuple[SeriesSpec, ...]
    expect: Success | Failure
    seed: int = 1
    prepare: Callable[[Written], None] | None = None
    write: dict[str, Any] = field(default_factory=dict)
    second_study: tuple[SeriesSpec, ...] = ()
    model: ModelKind = "threshold"
    anatomy: Literal["phantom", "template"] = "phantom"
    topic: str = ""


def _files(written: Written, index: int) -> list[Path]:
    return list(written.series(index).files)


def _all_files(written: Written) -> list[Path]:
    return [path for info in written.study.series for path in info.files]


def _relative(written: Written, path: Path) -> str:
    return path.relative_to(written.folder).as_posix()


def _encode(syntax: str) -> Callable[[Written], None]:
    def prepare(written: Written) -> None:
        encodings.transcode(_all_files(written), syntax)

    return prepare


def _multiframe(enhanced: bool) -> Callable[[Written], None]:
    def prepare(written: Written) -> None:
        for info in written.study.series:
            encodings.to_multiframe(info.files, written.folder / f"MF{info.series_number:03d}.dcm", enhanced=enhanced)

    return prepare


def _damage(index: int, damage: Callable[[Path], None], syntax: str | None = None) -> Callable[[Written], None]:
    """Encode the study (optionally), then damage the middle file of series ``index``."""

    def prepare(written: Written) -> None:
        if syntax is not None:
            encodings.transcode(_all_files(written), syntax)
        files = _files(written, index)
        target = files[len(files) // 2]
        damage(target)
        written.marked["file"] = _relative(written, target)

    return prepare


def _cd(layout: Literal["dicomdir", "nested"], damage_index: int | None = None) -> Callable[[Written], None]:
    """Lay the study out as a CD with extras beside it; optionally cut short a file of series ``damage_index``."""

    def prepare(written: Written) -> None:
        if layout == "dicomdir":
            layouts.dicomdir_cd(written.folder)
        else:
            layouts.nested_same_names(written.folder)
        written.marked["skipped"] = layouts.add_cd_extras(written.folder)
        if damage_index is None:
            return
        uid = written.series(damage_index).series_instance_uid
        members = sorted(
            path for path in written.folder.rglob("IM*")
            if path.is_file() and pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID == uid
        )
        target = members[len(members) // 2]
        encodings.truncate_file(target)
        written.marked["file"] = _relative(written, target)
        written.marked["unreadable"] = [written.marked["file"]]

    return prepare


def _series(vendor_specs: list[SeriesSpec], **changes: Any) -> list[SeriesSpec]:
    return [dataclasses.replace(spec, **changes) for spec in vendor_specs]


def _bolus(spec: SeriesSpec, agent: str | None, **extra: Any) -> SeriesSpec:
    return dataclasses.replace(spec, contrast_agent=agent, **extra)


LOCALIZER = SeriesSpec("t1n", "localizer", kind="localizer", rows=32, columns=32, pixel_spacing=(8.0, 8.0),
                       slice_thickness=8.0)
DWI = SeriesSpec("t2w", "ep2d_diff_3scan_trace_p2", kind="dwi", rows=24, columns=24, slices=12,
                 pixel_spacing=(8.0, 8.0), slice_thickness=10.0, vendor=SIEMENS)
THREE_D = dict(rows=48, columns=48, slices=48, pixel_spacing=(4.0, 4.0), slice_thickness=4.0)
MPR = ("DERIVED", "SECONDARY", "MPR")


def _naming_cases() -> list[Case]:
    combos = [("siemens", "en", False), ("ge", "en", False), ("philips", "en", True), ("siemens", "de", False),
              ("philips", "de", True), ("ge", "fr", False), ("philips", "fr", True), ("siemens", "es", False),
              ("ge", "es", True), ("ge", "it", False), ("philips", "it", True), ("siemens", "nl", False),
              ("philips", "nl", True)]
    cases = []
    for seed, (vendor, language, alternative) in enumerate(combos, start=100):
        specs = protocol(vendor, language, ALTERNATIVE_WORDS[language] if alternative else None)
        cases.append(Case(f"names-{vendor}-{language}{'-alt' if alternative else ''}", tuple(specs),
                          Success(ROLES), seed=seed, write={"shuffle_files": True, "opaque_names": seed % 2 == 0},
                          topic="naming"))
    return cases


def _selection_cases() -> list[Case]:
    ge, siemens, philips = protocol("ge", "en"), protocol("siemens", "de"), protocol("philips", "en")
    t1c_ge = ge[1]
    t1c_3d = SeriesSpec("t1c", "t1_mprage_sag_p2_iso_KM", "sagittal", vendor=SIEMENS, acquisition="t1_3d", **THREE_D)
    t1n_3d = SeriesSpec("t1n", "t1_mprage_sag_p2_iso", "sagittal", vendor=SIEMENS, **THREE_D)
    cases = [
        Case("repeat-after-motion", (ge[0], dataclasses.replace(t1c_ge, acquisition_time="093000"),
                                     dataclasses.replace(t1c_ge, acquisition_time="094500"), ge[2], ge[3]),
             Success({"t1n": 0, "t1c": 2, "t2w": 3, "t2f": 4}), seed=201, topic="selection"),
        Case("repeat-flair-later-acquisition",
             (*siemens[:3], dataclasses.replace(siemens[3], acquisition_time="101000"),
              dataclasses.replace(siemens[3], acquisition_time="101900", acquisition_number=2)),
             Success({"t1n": 0, "t1c": 1, "t2w": 2, "t2f": 4}), seed=202, topic="selection"),
        Case("pre-post-t1-2d-and-3d", (siemens[0], t1n_3d, siemens[1], t1c_3d, siemens[2], siemens[3], LOCALIZER, DWI),
             Success({"t1n": 1, "t1c": 3, "t2w": 4, "t2f": 5}), seed=203, topic="selection"),
        Case("siemens-t1-mpr-is-mprage",
             (dataclasses.replace(t1n_3d, description="t1_mpr_sag_p2_iso"),
              dataclasses.replace(t1c_3d, description="t1_mpr_sag_p2_iso_post"), siemens[2], siemens[3]),
             Success(ROLES), seed=204, topic="selection"),
        Case("t1c-two-planes",
             (ge[0], dataclasses.replace(t1c_ge, slice_thickness=4.0, slices=36),
              dataclasses.replace(t1c_ge, description="Cor T1 SE +C", orientation="coronal"), ge[2], ge[3]),
             Success({"t1n": 0, "t1c": 1, "t2w": 3, "t2f": 4}), seed=205, topic="selection"),
        Case("mpr-beside-original",
             (t1n_3d, t1c_3d,
              dataclasses.replace(t1c_3d, description="t1_mprage_sag_p2_iso_KM_MPR_tra", orientation="axial",
                                  image_type=(*MPR, "M", "ND"), slices=40, slice_thickness=3.0),
              dataclasses.replace(t1c_3d, description="t1_mprage_sag_p2_iso_KM_MPR_cor", orientation="coronal",
                                  image_type=(*MPR, "M", "ND"), slices=40, slice_thickness=3.0),
              siemens[2], siemens[3]),
             Success({"t1n": 0, "t1c": 1, "t2w": 4, "t2f": 5}), seed=206, topic="selection"),
        Case("reformat-known-by-image-type-only",
             (philips[0], SeriesSpec("t1c", "T1W_3D_TFE +C", "sagittal", vendor=PHILIPS, acquisition="t1_3d",
                                     **THREE_D),
              SeriesSpec("t1c", "T1W_3D_TFE +C tra", "axial", vendor=PHILIPS, image_type=(*MPR,),
                         acquisition="t1_3d", rows=48, columns=48, slices=48, pixel_spacing=(4.0, 4.0),
                         slice_thickness=3.0, slice_spacing=4.0),
              philips[2], philips[3]),
             Success({"t1n": 0, "t1c": 1, "t2w": 3, "t2f": 4}), seed=207, topic="selection"),
        Case("distortion-corrected-copy",
             (siemens[0], dataclasses.replace(siemens[1], acquisition_time="094000"),
              dataclasses.replace(siemens[1], acquisition_time="094000",
                                  image_type=("ORIGINAL", "PRIMARY", "M", "DIS2D", "NORM")),
              siemens[2], siemens[3]),
             Success({"t1n": 0, "t1c": 2, "t2w": 3, "t2f": 4}), seed=208, topic="selection"),
        Case("mip-and-subtraction-beside-originals",
             (siemens[0], siemens[1],
              dataclasses.replace(siemens[1], description="t1_se_tra_KM_SUB",
                                  image_type=("DERIVED", "PRIMARY", "SUBTRACTION", "ND")),
              dataclasses.replace(siemens[1], description="t1_fl3d_tra_KM_MIP_TRA", slices=12,
                                  image_type=("DERIVED", "PRIMARY", "MIP", "ND")),
              siemens[2], siemens[3]),
             Success({"t1n": 0, "t1c": 1, "t2w": 4, "t2f": 5}), seed=209, topic="selection"),
        Case("lossy-t1c", (ge[0], dataclasses.replace(t1c_ge, lossy=True), ge[2], ge[3]),
             Success(ROLES, lossy=(1,)), seed=210, topic="selection"),
        Case("contrast-attributes-only",
             (_bolus(dataclasses.replace(philips[0], description="T1W_SE tra"), None),
              _bolus(dataclasses.replace(philips[1], description="T1W_SE tra"), "Gadovist",
                     contrast_ingredient="GADOLINIUM", contrast_start_time="093512"),
              philips[2], philips[3]),
             Success(ROLES), seed=211, topic="selection"),
        Case("words-and-attributes-disagree",
             (_bolus(ge[1], None), _bolus(ge[0], "Dotarem", contrast_ingredient="GADOTERATE",
                                          contrast_start_time="081000"), ge[2], ge[3]),
             Success(ROLES, report_patterns=(r"(?i)attributes win|disagree|contradict|conflict|despite|overrid",)),
             seed=212, topic="selection"),
        # Reformats are used when no original exists (lowest preference); the report must say so.
        Case("only-derived-series",
             tuple(dataclasses.replace(s, image_type=(*MPR, "M", "ND")) for s in siemens),
             Success(ROLES, report_patterns=(r"reformat \(ImageType DERIVED\\\\SECONDARY\\\\MPR",)),
             seed=213, topic="selection"),
        Case("missing-flair", tuple(protocol("ge", "fr")[:3]),
             Failure(lambda w: r"series selection: .*\bt2f\b", "series selection: no t2f"), seed=214,
             topic="selection"),
    ]
    return cases


LOSSY_SYNTAXES = {"jpeg-baseline", "jpeg-extended-12bit", "jpeg-ls-near-lossless", "jpeg2000-lossy"}


def _encoding_cases() -> list[Case]:
    cases = []
    for seed, syntax in enumerate(encodings.SYNTAXES, start=300):
        lossy = (0, 1, 2, 3) if syntax in LOSSY_SYNTAXES else ()
        cases.append(Case(f"encoding-{syntax}", tuple(protocol("ge", "en")), Success(ROLES, lossy=lossy), seed=seed,
                          prepare=_encode(syntax), topic="encoding"))
    specs = tuple(protocol("siemens", "en"))
    cases += [
        Case("multiframe-legacy-converted", specs, Success(ROLES), seed=320, prepare=_multiframe(False),
             topic="encoding"),
        Case("multiframe-enhanced-mr", specs, Success(ROLES), seed=321, prepare=_multiframe(True), topic="encoding"),
    ]
    return cases


def _geometry_cases() -> list[Case]:
    ge = protocol("ge", "en")
    slab_center = (2.0, -8.0, LESION_CENTER[2] + 10.0)  # a 3 cm FLAIR slab over the upper part of the lesion
    return [
        Case("matrix-150-wide", (ge[0], dataclasses.replace(ge[1], rows=128, columns=150, pixel_spacing=(1.5, 1.5)),
                                 ge[2], ge[3]), Success(ROLES), seed=400, topic="geometry"),
        Case("matrix-256x232", (ge[0], dataclasses.replace(ge[1], rows=232, columns=256, slices=20,
                                                           pixel_spacing=(0.86, 0.86)), ge[2], ge[3]),
             Success(ROLES), seed=401, topic="geometry"),
        Case("non-square-pixels", (ge[0], dataclasses.replace(ge[1], rows=120, columns=60, pixel_spacing=(1.6, 3.2)),
                                   dataclasses.replace(ge[2], rows=64, columns=40, pixel_spacing=(3.0, 4.8)), ge[3]),
             Success(ROLES), seed=402, topic="geometry"),
        Case("partial-flair-slab", (*ge[:3], dataclasses.replace(ge[3], slices=6, slice_thickness=5.0,
                                                                 center=slab_center)),
             Success(ROLES, coverage_warning=True), seed=410, topic="coverage"),
        Case("partial-small-fov-t2", (ge[0], ge[1], dataclasses.replace(ge[2], rows=28, columns=28,
                                                                        center=(20.0, -8.0, 15.0)), ge[3]),
             Success(ROLES, coverage_warning=True), seed=411, topic="coverage"),
        Case("partial-coronal-t1c-axial-flair",
             (ge[0], dataclasses.replace(ge[1], description="Cor T1 SE +C", orientation="coronal", slices=12,
                                         slice_thickness=5.0),
              ge[2], dataclasses.replace(ge[3], slices=8, slice_thickness=4.0, center=(2.0, -8.0, 26.0))),
             Success(ROLES, coverage_warning=True), seed=412, topic="coverage"),
    ]


def _layout_cases() -> list[Case]:
    italian, siemens = protocol("ge", "it"), protocol("siemens", "de")
    return [
        Case("cd-dicomdir", tuple(italian), Success(ROLES), seed=500, prepare=_cd("dicomdir"), topic="layout"),
        Case("cd-nested-same-names", (*siemens, LOCALIZER), Success(ROLES), seed=501, prepare=_cd("nested"),
             topic="layout"),
        Case("cd-unreadable-file-in-unselected-series", (*siemens, LOCALIZER), Success(ROLES), seed=502,
             prepare=_cd("nested", damage_index=4), topic="layout"),
        Case("cd-unreadable-file-in-selected-series", (*siemens, LOCALIZER),
             Failure(lambda w: rf"{w.series_re(2)}.*{w.file_re()}|{w.file_re()}.*{w.series_re(2)}",
                     "unreadable file named with its series (#3)"), seed=503,
             prepare=_cd("nested", damage_index=2), topic="layout"),
    ]


TYPE2 = ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "ReferringPhysicianName",
         "PositionReferenceIndicator", "InstitutionName")
BAD_VALUES = (
    ("InstitutionName", "University Hospital of the Very Long Name Department of Neuroradiology North"),
    ("StationName", "MR\x07CONSOLE-ONE"),
    ("StudyID", "STUDY-0001-EXTRA-LONG"),
    ("ReferringPhysicianName", "Dr. Anne-Marie Castellanos-Villanueva de la Torre y Hernandez-Ruiz Junior"),
    ("AccessionNumber", "RAD-2024-000123456789"),
    ("StudyDescription", "MRT Schaedel\tnativ + KM\r\n(Tumor)"),
)


def _attribute_cases() -> list[Case]:
    ge = protocol("ge", "en")
    return [
        Case("missing-type2-attributes", tuple(_series(ge, drop_attributes=TYPE2)), Success(ROLES), seed=600,
             topic="attributes"),
        Case("values-breaking-their-vr", tuple(_series(ge, set_attributes=BAD_VALUES)), Success(ROLES), seed=601,
             topic="attributes"),
        Case("name-latin1", tuple(protocol("siemens", "de")), Success(ROLES, patient_name="Müller^Jürgen"), seed=602,
             write={"patient_name": "Müller^Jürgen"}, topic="attributes"),
        Case("name-utf8-greek", tuple(protocol("ge", "en")), Success(ROLES, patient_name="Παπαδόπουλος^Ελένη"),
             seed=603, write={"patient_name": "Παπαδόπουλος^Ελένη", "character_set": "ISO_IR 192"},
             topic="attributes"),
        Case("name-cyrillic", tuple(protocol("philips", "en")), Success(ROLES, patient_name="Иванова^Мария"),
             seed=604, write={"patient_name": "Иванова^Мария", "character_set": "ISO_IR 144"}, topic="attributes"),
    ]


def _foreign_cases() -> list[Case]:
    ge = protocol("ge", "en")
    return [
        Case("foreign-series-of-a-prior-study", (*ge, dataclasses.replace(ge[3], other_study="prior")),
             Success(ROLES, foreign=(4,)), seed=700, topic="foreign"),
        Case("foreign-series-of-another-patient", (*ge, dataclasses.replace(ge[2], other_study="patient")),
             Success(ROLES, foreign=(4,)), seed=701, topic="foreign"),
        Case("two-complete-studies", tuple(ge), Failure(lambda w: r"(?i)(two|2|several|multiple|more than one) stud",
                                                        "two studies in the input", folder_head=True),
             seed=702, second_study=tuple(protocol("siemens", "en")), topic="foreign"),
    ]


def _corruption_cases() -> list[Case]:
    ge = tuple(protocol("ge", "en"))

    def names(index: int) -> Failure:
        return Failure(lambda w: rf"{w.series_re(index)}.*{w.file_re()}|{w.file_re()}.*{w.series_re(index)}",
                       f"bad pixel data, series #{index + 1} and file named")

    return [
        Case("corrupt-truncated-jpeg-frame", ge, names(1), seed=800,
             prepare=_damage(1, encodings.truncate_frame, "jpeg-lossless-sv1"), topic="corruption"),
        Case("corrupt-bit-flips-in-jpeg-frame", ge, names(1), seed=801,
             prepare=_damage(1, encodings.flip_bits, "jpeg-lossless-sv1"), topic="corruption"),
        Case("corrupt-bit-flips-in-jpeg-ls-frame", ge, names(3), seed=802,
             prepare=_damage(3, encodings.flip_bits, "jpeg-ls-lossless"), topic="corruption"),
        Case("corrupt-native-pixel-length", ge, names(2), seed=803,
             prepare=_damage(2, encodings.short_native_pixels), topic="corruption"),
    ]


DEMO_GRID = dict(rows=96, columns=96, slices=36, pixel_spacing=(2.2, 2.2), slice_thickness=4.0)


def _demo_cases() -> list[Case]:
    demo = dict(ratio=(0.6, 1.4), inside=0.7)
    specs = [dataclasses.replace(s, **DEMO_GRID) for s in protocol("siemens", "de")]
    return [
        Case("demo-siemens-de", tuple(specs), Success(ROLES, **demo), seed=900, model="demo", anatomy="template",
             topic="demo model"),
        Case("demo-cd-dicomdir-jpeg-ls", tuple(dataclasses.replace(s, **DEMO_GRID) for s in protocol("philips", "fr")),
             Success(ROLES, **demo), seed=901, model="demo", anatomy="template", topic="demo model",
             prepare=lambda w: (_encode("jpeg-ls-lossless")(w), _cd("dicomdir")(w))[-1]),
    ]


CASES: tuple[Case, ...] = tuple(
    _naming_cases() + _selection_cases() + _encoding_cases() + _geometry_cases() + _layout_cases()
    + _attribute_cases() + _foreign_cases() + _corruption_cases() + _demo_cases()
)
BY_NAME: dict[str, Case] = {case.name: case for case in CASES}
if len(BY_NAME) != len(CASES):
    raise RuntimeError("corpus case names must be unique")
