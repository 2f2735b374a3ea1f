"""When is a received study complete? Decide from the journal and queue its job.

A receiving study is ready when
- ``quiet``: the four required sequences are present (the series selector, run on the journalled
  instances' headers, finds t1n, t1c, t2w and t2f), each selected series is complete (see
  ``series_gap``) and no instance arrived for ``quiet`` seconds;
- ``stable``: no instance arrived for ``stable`` seconds, whatever was received (the job then
  fails with the selector's reason if a sequence is missing) - but not while a selected series
  has a gap: such a study waits for the rest until ``forced``;
- ``forced``: ``forced`` seconds after its first instance, even if instances keep arriving. A
  study whose selected series still has a gap then fails with that reason (no result from half a
  series); more instances, a resend or ``python -m app requeue`` reopen it.

Silence counts only while the node listens: after a restart the quiet and stable periods start
again from the restart (``listening_since``), since a modality could not send while the node was
down and resends the rest once it is back; ``forced`` still counts from the first instance.

Isolation: whatever goes wrong while reading or judging one study (unreadable headers, malformed
geometry, a bug) fails that study with its reason and the loop goes on to the next; ``check``
never raises because of a study. A journal that cannot be written (full disk) fails no study:
the study stays receiving and is judged again on the next check.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from app.config import DEFAULTS, Settings
from app.node.state.journal import Journal
from operators.errors import StudyError, one_line
from operators.series_selection import SeriesSelectionError, select_series

log = logging.getLogger(__name__)
# Geometry attributes and their value multiplicity; each instance must have them well-formed.
GEOMETRY_VM = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}
SPACING_TOLERANCE = 1.5  # a step this many times the typical slice step is a gap


@dataclass(frozen=True)
class CompletionPolicy:
    """Seconds of the three completion rules (defaults: the settings' defaults)."""

    quiet: float = DEFAULTS.quiet_seconds
    stable: float = DEFAULTS.stable_seconds
    forced: float = DEFAULTS.forced_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> CompletionPolicy:
        """The policy of quiet_seconds, stable_seconds and forced_seconds."""
        return cls(settings.quiet_seconds, settings.stable_seconds, settings.forced_seconds)


@dataclass(frozen=True)
class Judgement:
    """What the headers say about a study: all four sequences found, and the first gap of a selected series."""

    has_required: bool
    gap: str | None = None


def readiness(first_at: float, last_at: float, now: float, has_required: bool, policy: CompletionPolicy,
              gap: str | None = None) -> str | None:
    """Which rule makes a study ready now ('forced', 'stable', 'quiet'), or None."""
    if now - first_at >= policy.forced:
        return "forced"
    if gap is not None:
        return None
    if now - last_at >= policy.stable:
        return "stable"
    if has_required and now - last_at >= policy.quiet:
        return "quiet"
    return None


def _numbers(header: pydicom.Dataset, keyword: str, count: int) -> list[float] | None:
    """The values of a decimal attribute, None when absent; ValueError when malformed."""
    element = header.get(keyword)
    if element is None or element == "":
        return None
    values = list(element) if isinstance(element, Sequence) and not isinstance(element, str) else [element]
    if len(values) != count:
        raise ValueError(f"{keyword} has {len(values)} value(s), {count} expected")
    numbers = [float(v) for v in values]
    if not all(np.isfinite(numbers)):
        raise ValueError(f"{keyword} is not finite")
    return numbers


def _integer(header: pydicom.Dataset, keyword: str) -> int | None:
    value = header.get(keyword)
    if value is None or value == "":
        return None
    return int(value)


def check_geometry(header: pydicom.Dataset) -> None:
    """ValueError when an image attribute the volume needs is present but malformed (wrong VR or VM)."""
    for keyword, count in GEOMETRY_VM.items():
        _numbers(header, keyword, count)
    for keyword in ("Rows", "Columns", "InstanceNumber", "NumberOfFrames", "ImagesInAcquisition",
                    "NumberOfTemporalPositions"):
        _integer(header, keyword)


def series_gap(headers: Sequence[pydicom.Dataset]) -> str | None:
    """Why a series looks incomplete from its headers, or None: fewer instances than
    ImagesInAcquisition (or NumberOfTemporalPositions x positions), a hole in the InstanceNumbers, or a
    slice step much larger than the series' usual step. A multi-frame series is complete in one instance."""
    count = len(headers)
    if count == 0 or any((_integer(h, "NumberOfFrames") or 1) > 1 for h in headers):
        return None
    expected = max((_integer(h, "ImagesInAcquisition") or 0) for h in headers)
    if expected > count:
        return f"{count} of {expected} images (ImagesInAcquisition) received"
    numbers = sorted({n for h in headers if (n := _integer(h, "InstanceNumber")) is not None})
    if len(numbers) >= 2 and numbers[-1] - numbers[0] + 1 > len(numbers):
        missing = numbers[-1] - numbers[0] + 1 - len(numbers)
        return f"{missing} InstanceNumber(s) missing between {numbers[0]} and {numbers[-1]}"
    orientation = next((o for h in headers if (o := _numbers(h, "ImageOrientationPatient", 6))), None)
    positions = [p for h in headers if (p := _numbers(h, "ImagePositionPatient", 3)) is not None]
    if orientation is None or len(positions) < 3:
        return None
    normal = np.cross(orientation[:3], orientation[3:])
    distances = np.unique(np.round(np.array(positions) @ normal, 3))
    temporal = max((_integer(h, "NumberOfTemporalPositions") or 0) for h in headers)
    if temporal > 1 and count < temporal * len(distances):
        return f"{count} of {temporal} x {len(distances)} images (NumberOfTemporalPositions) received"
    steps = np.diff(distances)
    if len(steps) >= 2:
        usual = float(np.median(steps))
        wide = np.flatnonzero(steps > SPACING_TOLERANCE * usual)
        if usual > 0 and len(wide):
            at = int(wide[0])
            return (f"slice gap of {steps[at]:.1f} mm (usual step {usual:.1f} mm) after position "
                    f"{distances[at]:.1f} mm")
    return None


class CompletionChecker:
    """Queues the jobs of receiving studies that became ready (call ``check`` periodically)."""

    def __init__(
        self, journal: Journal, policy: CompletionPolicy, rules: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.policy = policy
        self.rules = rules
        self.clock = clock
        self.listening_since = clock()  # the node sets it again when its SCP starts listening
        self._judged: dict[str, tuple[int, Judgement]] = {}  # study -> (instances seen, judgement)

    def check(self) -> list[tuple[str, int, str]]:
        """Queue every ready study (or fail it with its reason); returns (study UID, job id, rule) of
        each queued. One study's trouble never stops the others."""
        queued = []
        for study in self.journal.receiving_studies():
            uid = str(study["study_uid"])
            try:
                result = self._check_study(study)
            except sqlite3.Error as error:  # the journal (e.g. a full disk), not the study: next tick again
                log.warning("study %s: journal update failed (%s); checked again later", uid, error)
                continue
            except StudyError as error:
                self._fail(uid, error.line())
                continue
            except Exception as error:  # a bug: this study fails with the reason, every other goes on
                log.exception("study %s: completion check failed (a bug)", uid)
                self._fail(uid, f"study {uid}: internal error judging completeness "
                                f"({type(error).__name__}: {one_line(str(error)) or repr(error)})")
                continue
            if result is not None:
                queued.append(result)
        return queued

    def _check_study(self, study: Any) -> tuple[str, int, str] | None:
        uid = str(study["study_uid"])
        now = self.clock()
        last_at = max(float(study["last_at"]), self.listening_since)  # no silence counted while the node was down
        if now - last_at < self.policy.quiet and now - study["first_at"] < self.policy.forced:
            return None  # still arriving: do not read headers yet
        judgement = self.judge(uid, int(study["instances"]))
        trigger = readiness(study["first_at"], last_at, now, judgement.has_required, self.policy, judgement.gap)
        if trigger is None:
            return None
        self._judged.pop(uid, None)
        if judgement.gap is not None:  # forced with a series still incomplete: no result from half a series
            self._fail(uid, f"study {uid}: {judgement.gap} when the forced timeout "
                            f"({self.policy.forced:.0f} s) came; not processed", trigger)
            return None
        job_id = self.journal.queue_study(uid, trigger)
        if job_id is None:
            return None
        log.info("study %s: complete (%s, %d instances), job %d queued", uid, trigger, study["instances"], job_id)
        return uid, job_id, trigger

    def _fail(self, uid: str, reason: str, trigger: str = "rejected") -> None:
        self._judged.pop(uid, None)
        try:
            job_id = self.journal.fail_study(uid, trigger, reason)
        except sqlite3.Error as error:  # the study stays receiving and is judged again next tick
            log.warning("study %s: could not record its failure (%s): %s", uid, error, reason)
            return
        log.error("study %s: failed before processing (job %s): %s", uid, job_id, reason)

    def has_required(self, study_uid: str, instances: int) -> bool:
        """Whether the series selector finds all four sequences among the study's received headers."""
        return self.judge(study_uid, instances).has_required

    def judge(self, study_uid: str, instances: int) -> Judgement:
        """Read the study's headers: are the four sequences there, is each selected series complete?
        Raises StudyError for an unreadable or malformed instance (cached per instance count)."""
        cached = self._judged.get(study_uid)
        if cached is not None and cached[0] == instances:
            return cached[1]
        series: dict[str, list[Any]] = {}
        for row in self.journal.study_instances(study_uid):
            name, header = Path(row["path"]).name, None
            try:
                header = pydicom.dcmread(row["path"], stop_before_pixels=True)
                check_geometry(header)
            except Exception as error:  # unreadable, wrong VR, wrong value multiplicity, ...
                raise StudyError(study_uid, f"instance {row['sop_uid']} has an unusable header: "
                                            f"{type(error).__name__}: {one_line(str(error)) or repr(error)}",
                                 accession=_accession(header),
                                 file=name) from error
            series.setdefault(row["series_uid"], []).append(header)
        try:
            selection = select_series(series, self.rules)
        except SeriesSelectionError:
            judgement = Judgement(False)
        else:
            gaps = [f"{role} series {choice.description!r} ({choice.series_instance_uid}) incomplete: {gap}"
                    for role, choice in selection.choices.items()
                    if (gap := series_gap(series.get(choice.series_instance_uid, []))) is not None]
            judgement = Judgement(True, gaps[0] if gaps else None)
        self._judged[study_uid] = (instances, judgement)
        return judgement


def _accession(header: pydicom.Dataset | None) -> str:
    try:
        return str(header.get("AccessionNumber", "") or "") if header is not None else ""
    except Exception:
        return ""
