"""Spool retention and hygiene: delete what finished jobs (delivered, or failed) left long ago, prune
their journal rows, and remove the temporary files of receives and writes a crash interrupted."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from app.node.state.journal import Journal
from app.node.state.spool import Spool

log = logging.getLogger(__name__)


def clean_spool(journal: Journal, spool: Spool, max_age_seconds: float) -> int:
    """Remove spool folders and journal rows of jobs finished more than ``max_age_seconds`` ago;
    returns how many jobs. One audit line per purged study remains (no PHI)."""
    removed = 0
    for job in journal.finished_before(journal.clock() - max_age_seconds):
        spool.remove_study(job["study_uid"])
        spool.remove_job(job["id"])
        journal.forget_study(job["study_uid"], int(job["id"]))
        log.info("study %s job %d: spool files and journal rows removed (retention)", job["study_uid"], job["id"])
        removed += 1
    return removed


def is_temporary(path: Path) -> bool:
    """A temporary file of an atomic write (spool ``.<name>.<hex>.tmp``, SEG writer ``.<x>.partial``)."""
    return path.name.startswith(".") and path.name.endswith((".tmp", ".partial"))


def remove_temporaries(spool: Spool) -> int:
    """Delete temporary files left by interrupted receives and writes (call at start, before intake);
    returns how many."""
    count = 0
    for folder, _dirs, names in os.walk(spool.root):
        for name in names:
            path = Path(folder) / name
            if is_temporary(path):
                path.unlink(missing_ok=True)
                count += 1
    if count:
        log.warning("removed %d temporary file(s) of interrupted receives", count)
    return count
