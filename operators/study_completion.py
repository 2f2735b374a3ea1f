"""When is a received study complete? Decide from the journal and queue its job.

A receiving study is ready when
- ``quiet``: the four required sequences are present (the series selector, run on the journalled
  instances' headers, finds t1n, t1c, t2w and t2f) and no instance arrived for ``quiet`` seconds;
- ``stable``: no instance arrived for ``stable`` seconds, whatever was received (the job then
  fails with the selector's reason if a sequence is missing);
- ``forced``: ``forced`` seconds after its first instance, even if instances keep arriving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from operators.journal import Journal
from operators.series_selection import select_series

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompletionPolicy:
    """Seconds of the three completion rules."""

    quiet: float = 10.0
    stable: float = 60.0
    forced: float = 3600.0


def readiness(first_at: float, last_at: float, now: float, has_required: bool, policy: CompletionPolicy) -> str | None:
    """Which rule makes a study ready now ('forced', 'stable', 'quiet'), or None."""
    if now - first_at >= policy.forced:
        return "forced"
    if now - last_at >= policy.stable:
        return "stable"
    if has_required and now - last_at >= policy.quiet:
        return "quiet"
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
        self._required: dict[str, tuple[int, bool]] = {}  # study -> (instances seen, all four present)

    def check(self) -> list[tuple[str, int, str]]:
        """Queue every ready study; returns (study UID, job id, rule) for each."""
        queued = []
        now = self.clock()
        for study in self.journal.receiving_studies():
            uid = study["study_uid"]
            if now - study["last_at"] < self.policy.quiet and now - study["first_at"] < self.policy.forced:
                continue  # still arriving: do not read headers yet
            trigger = readiness(study["first_at"], study["last_at"], now, self.has_required(uid, study["instances"]),
                                self.policy)
            if trigger is None:
                continue
            job_id = self.journal.queue_study(uid, trigger)
            self._required.pop(uid, None)
            if job_id is not None:
                log.info("study %s: complete (%s, %d instances), job %d queued", uid, trigger, study["instances"],
                         job_id)
                queued.append((uid, job_id, trigger))
        return queued

    def has_required(self, study_uid: str, instances: int) -> bool:
        """Whether the series selector finds all four sequences among the study's received headers."""
        cached = self._required.get(study_uid)
        if cached is not None and cached[0] == instances:
            return cached[1]
        series: dict[str, list[Any]] = {}
        for row in self.journal.study_instances(study_uid):
            try:
                header = pydicom.dcmread(row["path"], stop_before_pixels=True)
            except (OSError, pydicom.errors.InvalidDicomError) as error:
                log.warning("study %s: cannot read %s: %s", study_uid, row["path"], error)
                continue
            series.setdefault(row["series_uid"], []).append(header)
        try:
            select_series(series, self.rules)
            found = True
        except ValueError:  # SeriesSelectionError: a sequence missing or ambiguous
            found = False
        self._required[study_uid] = (instances, found)
        return found
