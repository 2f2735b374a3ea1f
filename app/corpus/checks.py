"""Run the application on one corpus case exactly as a user does, and judge what it did.

A case expects either success (the series chosen per role, a dciodvfy-clean SEG in the same study,
SEG voxels inside the known lesion, the segmented volume within bounds of the truth inside the region
every chosen series covers, and facts in report.json) or failure (exit 2, one line
``ERROR study <uid> (<accession or folder>): <reason>`` matching the expectation, no traceback,
nothing left in the output folder).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pydicom

from app.seg_reader import seg_points
from app.synthetic_study import SeriesInfo, StudyInfo

REPO = Path(__file__).resolve().parents[2]
THRESHOLD_MODEL = REPO / "tests" / "models" / "threshold"
DEMO_MODEL = REPO / "models" / "segmamba-demo"


class Anatomy(Protocol):
    """A synthetic head with a known lesion (segmamba.synthetic Phantom or TemplateHead)."""

    center: tuple[float, float, float]
    lesion: Any

    def sample(self, points_lps: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass
class Written:
    """A case's study as written to disk: its input folder, what was written, and marked files."""

    folder: Path
    study: StudyInfo
    anatomy: Anatomy
    marked: dict[str, Any] = field(default_factory=dict)

    def series(self, index: int) -> SeriesInfo:
        return self.study.series[index]

    def series_re(self, index: int) -> str:
        """A regex naming series ``index``: its SeriesInstanceUID or its quoted description."""
        info = self.series(index)
        return f"(?:{re.escape(info.series_instance_uid)}|'{re.escape(info.spec.description)}')"

    def file_re(self) -> str:
        """A regex for the marked (damaged) file, relative to the input folder."""
        return re.escape(str(self.marked["file"]))


@dataclass(frozen=True)
class Success:
    """The study is segmented: series per role (indices into the case's specs) and facts to find.

    ratio bounds the segmented whole-tumour volume over the true one inside the region every chosen
    series covers; inside is the least fraction of SEG voxels inside the true lesion. lossy and
    foreign are series indices the report must flag as lossy / list as foreign (and the log warn
    about); coverage_warning asks
    for a covered fraction and a warning about it; report_patterns must each match the report text.
    """

    roles: Mapping[str, int]
    ratio: tuple[float, float] = (0.85, 1.15)
    inside: float = 0.9
    lossy: tuple[int, ...] = ()
    foreign: tuple[int, ...] = ()
    coverage_warning: bool = False
    report_patterns: tuple[str, ...] = ()
    patient_name: str | None = None

    def summary(self, written: Written | None) -> str:
        t1c = self.roles.get("t1c")
        name = written.series(t1c).spec.description if written and t1c is not None else str(t1c)
        facts = [f"t1c={name!r}"]
        facts += [f"lossy #{i + 1}" for i in self.lossy] + [f"foreign #{i + 1}" for i in self.foreign]
        facts += ["coverage warning"] if self.coverage_warning else []
        return "ok " + ", ".join(facts)


@dataclass(frozen=True)
class Failure:
    """The study is refused: ``reason`` builds the regex the reason must match (searched)."""

    reason: Callable[[Written], str]
    label: str
    folder_head: bool = False  # no single study: the line may name the input folder instead of a study UID

    def summary(self, written: Written | None) -> str:
        return f"ERROR: {self.label}"


@dataclass
class Outcome:
    """What happened to one case and the problems found (none = pass)."""

    case: str
    expected: str
    got: str = ""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.problems


def run_app(input_dir: Path, output_dir: Path, model: Path, *, subprocess_run: bool = False) -> tuple[int, str, str]:
    """``python -m app -i IN -o OUT -m MODEL --no-progress``: (exit code, stdout, stderr)."""
    args = ["-i", str(input_dir), "-o", str(output_dir), "-m", str(model), "--no-progress"]
    if subprocess_run:
        result = subprocess.run([sys.executable, "-m", "app", *args], cwd=REPO, capture_output=True, text=True,
                                timeout=900)
        return result.returncode, result.stdout, result.stderr
    from app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def error_head(written: Written, folder_head: bool) -> str:
    """Regex of ``ERROR study <uid> (<accession or folder>): ``."""
    uid = re.escape(written.study.study_instance_uid)
    where = f"(?:{re.escape(written.study.accession_number)}|{re.escape(str(written.folder))})"
    if folder_head:
        folder = re.escape(str(written.folder))
        return rf"^ERROR study (?:{uid} \({where}\)|{folder}|\S.*? \({folder}\)): "
    return rf"^ERROR study {uid} \({where}\): "


def check_failure(expect: Failure, written: Written, code: int, err: str, output_dir: Path, outcome: Outcome) -> None:
    lines = [line for line in err.splitlines() if line.startswith("ERROR")]
    outcome.got = lines[0] if len(lines) == 1 else (f"exit {code}, {len(lines)} ERROR lines")
    if code == 0:
        outcome.got = "exit 0 (segmented)"
        outcome.problems.append("expected a refusal, the study was segmented")
        return
    if code != 2:
        outcome.problems.append(f"exit code {code}, expected 2")
    if len(lines) != 1:
        outcome.problems.append(f"{len(lines)} ERROR lines, expected 1")
        return
    pattern = error_head(written, expect.folder_head)
    if not re.search(pattern, lines[0]):
        outcome.problems.append(f"head does not match {pattern!r}")
    reason = expect.reason(written)
    if not re.search(reason, lines[0]):
        outcome.problems.append(f"reason does not match {reason!r}")
    if "Traceback" in err:
        outcome.problems.append("traceback printed for bad input")
    if output_dir.exists() and any(output_dir.iterdir()):
        outcome.problems.append("output folder not empty after a failure")


def check_success(
    expect: Success, written: Written, code: int, err: str, output_dir: Path, outcome: Outcome,
    dciodvfy: Callable[[Path], list[str]],
) -> None:
    if code != 0:
        lines = [line for line in err.splitlines() if line.startswith("ERROR")]
        outcome.got = lines[-1] if lines else f"exit {code}"
        outcome.problems.append("refused")
        return
    report = json.loads((output_dir / "report.json").read_text())
    chosen = _chosen(report)
    wrong = [role for role, index in expect.roles.items()
             if chosen.get(role, ("", ""))[0] != written.series(index).series_instance_uid]
    outcome.got = "ok" + "".join(f" {role}={chosen.get(role, ('', '-'))[1]!r}" for role in wrong)
    for role, index in expect.roles.items():
        info = written.series(index)
        uid, _description = chosen.get(role, ("", ""))
        if uid != info.series_instance_uid:
            outcome.problems.append(f"{role}: chose {chosen.get(role, ('-', '-'))[1]!r} ({uid[-8:]}), "
                                    f"expected {info.spec.description!r} (#{info.series_number})")
    seg_path = output_dir / "segmentation.dcm"
    errors = dciodvfy(seg_path)
    if errors:
        outcome.problems.append(f"dciodvfy: {len(errors)} Error lines, first: {errors[0]}")
    seg = pydicom.dcmread(seg_path)
    if seg.StudyInstanceUID != written.study.study_instance_uid:
        outcome.problems.append("SEG is not in the study")
    if expect.patient_name is not None and str(seg.PatientName) != expect.patient_name:
        outcome.problems.append(f"SEG PatientName {str(seg.PatientName)!r}, expected {expect.patient_name!r}")
    _check_geometry(expect, written, seg, outcome)
    _check_report(expect, written, report, outcome)
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    for index in expect.foreign:
        info = written.series(index)
        if not any(info.series_instance_uid in line or info.spec.description in line for line in warnings):
            outcome.problems.append(f"the log does not warn about the foreign series #{index + 1}")


def _chosen(report: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Role -> (SeriesInstanceUID, description) from the report's input_series."""
    chosen = {}
    for role, entry in dict(report.get("input_series", {})).items():
        if isinstance(entry, Mapping):
            chosen[role] = (str(entry.get("series_instance_uid", "")), str(entry.get("description", "")))
    return chosen


def _check_geometry(expect: Success, written: Written, seg: pydicom.Dataset, outcome: Outcome) -> None:
    points, _numbers, pixels = seg_points(seg)
    on = pixels > 0
    positive = points[on]
    grids = [written.series(index) for index in expect.roles.values()]
    truth_ml = true_volume_ml(written.anatomy, grids)
    if positive.shape[0] == 0:
        if truth_ml > 0:
            outcome.problems.append(f"empty SEG; true volume in the covered region {truth_ml:.1f} mL")
        return
    inside = float((written.anatomy.sample(positive)["label"] > 0).mean())
    outside_cover = 1.0 - float(covered(positive, grids).mean())
    seg_ml = float(on.sum()) * _seg_voxel_ml(seg, points)
    ratio = seg_ml / truth_ml if truth_ml > 0 else float("inf")
    outcome.got += f", WT {seg_ml:.1f}/{truth_ml:.1f} mL ({ratio:.2f}), {inside:.0%} in lesion"
    low, high = expect.ratio
    if not low <= ratio <= high:
        outcome.problems.append(f"volume ratio {ratio:.2f} outside [{low}, {high}]")
    if inside < expect.inside:
        outcome.problems.append(f"only {inside:.0%} of SEG voxels inside the lesion (need {expect.inside:.0%})")
    if outside_cover > 0.01:
        outcome.problems.append(f"{outside_cover:.0%} of SEG voxels outside the region every series covers")


def covered(points: np.ndarray, grids: Sequence[SeriesInfo]) -> np.ndarray:
    """Which world points (N, 3) lie inside the field of view of every series grid."""
    inside = np.ones(points.shape[0], dtype=bool)
    for info in grids:
        if info.shape is None or info.affine is None:
            continue
        inverse = np.linalg.inv(info.affine)
        index = points @ inverse[:3, :3].T + inverse[:3, 3]
        inside &= np.all((index >= -0.5) & (index <= np.asarray(info.shape) - 0.5), axis=1)
    return inside


def true_volume_ml(anatomy: Anatomy, grids: Sequence[SeriesInfo], step: float = 1.0) -> float:
    """True whole-tumour volume (mL) inside the region every grid covers, on a fine grid around the lesion."""
    lesion = anatomy.lesion
    if lesion is None:
        return 0.0
    reach = float(lesion.radius) * (1.0 + float(lesion.irregularity)) + step
    axis = np.arange(-reach, reach + step / 2, step)
    offsets = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    points = offsets + np.asarray(lesion.center, dtype=np.float64)
    labels = anatomy.sample(points)["label"] > 0
    return float((labels & covered(points, grids)).sum()) * step**3 / 1000.0


def _seg_voxel_ml(seg: pydicom.Dataset, points: np.ndarray) -> float:
    """Volume of one SEG voxel (mL): pixel area times the distance between frame planes."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    row, column = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    normal = np.cross(points[0, 0, 1] - points[0, 0, 0], points[0, 1, 0] - points[0, 0, 0])
    normal /= np.linalg.norm(normal)
    heights = np.unique(np.round(points[:, 0, 0] @ normal, 3))
    spacing = float(np.median(np.diff(heights))) if heights.size > 1 else float(
        shared.PixelMeasuresSequence[0].get("SliceThickness", 1.0))
    return row * column * spacing / 1000.0


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(key path, leaf value) for every leaf of a JSON value."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{path}/{key}")
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, path + "/[]")
    else:
        yield path, value


def _dicts_naming(value: Any, needle: str) -> Iterator[Mapping[str, Any]]:
    """Every mapping in a JSON value that holds ``needle`` among its direct string values."""
    if isinstance(value, Mapping):
        if any(isinstance(v, str) and needle in v for v in value.values()):
            yield value
        for item in value.values():
            yield from _dicts_naming(item, needle)
    elif isinstance(value, list):
        for item in value:
            yield from _dicts_naming(item, needle)


def _check_report(expect: Success, written: Written, report: Mapping[str, Any], outcome: Outcome) -> None:
    text = json.dumps(report, ensure_ascii=False)
    own = [s for s in written.study.series if s.study_instance_uid == written.study.study_instance_uid]
    unlisted = [s.spec.description for s in own if s.series_instance_uid not in text]
    if unlisted:
        outcome.problems.append(f"report does not list series {unlisted}")
    for index in expect.lossy:
        uid = written.series(index).series_instance_uid
        flagged = any(
            any(re.search("lossy", str(k), re.I) and v not in (False, None, "", "00", 0) for k, v in d.items())
            or any(isinstance(v, str) and re.search("lossy", v, re.I) for v in d.values())
            for d in _dicts_naming(report, uid)
        )
        if not flagged:
            outcome.problems.append(f"report does not say series #{index + 1} is lossy")
    for index in expect.foreign:
        if written.series(index).series_instance_uid not in text:
            outcome.problems.append(f"report does not list the foreign series #{index + 1}")
    for relative in written.marked.get("skipped", []):
        if relative not in text:
            outcome.problems.append(f"report does not list the skipped file {relative}")
            break
    for relative in written.marked.get("unreadable", []):
        if relative not in text:
            outcome.problems.append(f"report does not list the unreadable file {relative}")
    if expect.coverage_warning:
        leaves = list(_walk(report))
        fraction = any(re.search("cover", p, re.I) and isinstance(v, int | float) and not isinstance(v, bool)
                       for p, v in leaves)
        warning = any(re.search("warn", p, re.I) and isinstance(v, str) and re.search("cover|field of view", v, re.I)
                      for p, v in leaves)
        if not fraction:
            outcome.problems.append("report gives no covered fraction")
        if not warning:
            outcome.problems.append("report has no coverage warning")
    for pattern in expect.report_patterns:
        if not re.search(pattern, text):
            outcome.problems.append(f"report does not match {pattern!r}")


def clean(path: Path) -> None:
    """Remove a folder if present."""
    shutil.rmtree(path, ignore_errors=True)
