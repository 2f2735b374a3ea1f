"""Spool retention: delete the input and outputs of jobs finished (delivered, or failed) long ago."""

from __future__ import annotations

import logging

from operators.journal import Journal
from operators.spool import Spool

log = logging.getLogger(__name__)


def clean_spool(journal: Journal, spool: Spool, max_age_seconds: float) -> int:
    """Remove spool folders of jobs finished more than ``max_age_seconds`` ago; returns how many jobs.

    The journal keeps their rows (and the audit trail); only files go.
    """
    removed = 0
    for job in journal.finished_before(journal.clock() - max_age_seconds):
        study_dir, job_dir = spool.study_dir(job["study_uid"]), spool.job_dir(job["id"])
        if not (study_dir.exists() or job_dir.exists()):
            continue
        spool.remove_study(job["study_uid"])
        spool.remove_job(job["id"])
        journal.audit("spool-cleaned", job["study_uid"], job["id"], "node", f"files of a {job['state']} job removed")
        log.info("study %s job %d: spool files removed (retention)", job["study_uid"], job["id"])
        removed += 1
    return removed
