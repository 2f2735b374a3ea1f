"""The processing worker: claim ready jobs one at a time, segment, retry or fail, fill the outbox.

Failure policy per attempt:
- bad input (the pipeline's ValueError family, StudyError): permanent; the job keeps its reason
  and its input stays in the spool for inspection;
- CUDA out of memory: retried at once with half the sliding-window batch, then on the CPU;
- timeout, worker crash, any other error: transient; retried after a delay, at most
  ``retries`` more times, then permanent.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pydicom

from app.node.executor import OOM, PERMANENT, JobExecutor, Outcome, after_out_of_memory
from operators.journal import Journal
from operators.spool import Spool
from operators.storage_scu import Destination

log = logging.getLogger(__name__)


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


class Worker:
    """Runs jobs from the journal through the executor (see the module docstring)."""

    def __init__(
        self, journal: Journal, spool: Spool, executor: JobExecutor, destinations: Sequence[Destination],
        timeout: float, retries: int, retry_delay: float = 5.0,
        on_outcome: Callable[[int, Outcome], None] | None = None,
    ) -> None:
        self.journal = journal
        self.spool = spool
        self.executor = executor
        self.destinations = list(destinations)
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.on_outcome = on_outcome or (lambda _job, _outcome: None)
        self.stop_event = threading.Event()
        self.current_job: int | None = None

    def run_forever(self, idle: float = 0.3) -> None:
        while not self.stop_event.is_set():
            if not self.run_one():
                self.stop_event.wait(idle)

    def run_one(self) -> bool:
        """Claim and run one job; False when none was ready."""
        job = self.journal.claim_job()
        if job is None:
            return False
        job_id, study = int(job["id"]), str(job["study_uid"])
        self.current_job = job_id
        try:
            if job["attempts"] > self.retries + 1:
                self.journal.fail_job(job_id, f"gave up after {job['attempts'] - 1} attempts: {job['reason']}")
                log.error("study %s job %d: gave up after %d attempts", study, job_id, job["attempts"] - 1)
                return True
            overrides: dict[str, Any] = json.loads(job["settings"]) if job["settings"] else {}
            log.info("study %s job %d: processing (attempt %d)", study, job_id, job["attempts"])
            outcome = self.executor.run(self.spool.study_dir(study), self.spool.job_dir(job_id) / "output",
                                        self.timeout, overrides)
            self.on_outcome(job_id, outcome)
            self._record(job_id, study, int(job["attempts"]), outcome)
        finally:
            self.current_job = None
        return True

    def _record(self, job_id: int, study: str, attempts: int, outcome: Outcome) -> None:
        if outcome.ok:
            seg = Path(outcome.files["segmentation"])
            sop_uid = str(pydicom.dcmread(seg, stop_before_pixels=True).SOPInstanceUID)
            sends = [(d.name, str(seg), sop_uid) for d in self.destinations]
            self.journal.finish_job(job_id, outcome.files, outcome.stage_times, sends)
            log.info("study %s job %d: done in %.1f s, SEG %s queued for %s", study, job_id,
                     sum(outcome.stage_times.values()), sop_uid, [d.name for d in self.destinations])
            return
        reason = f"{outcome.error_type}: {first_line(outcome.message)}"
        if outcome.kind == PERMANENT:
            self.journal.fail_job(job_id, reason)
            log.error("study %s job %d: failed: %s", study, job_id, reason)
            return
        if outcome.kind == OOM:
            smaller = after_out_of_memory(outcome.sw_batch_size, outcome.device)
            if smaller is not None:
                self.journal.retry_job(job_id, reason, 0.0, smaller)
                log.warning("study %s job %d: out of memory; retrying with %s", study, job_id, smaller)
                return
        if attempts > self.retries:
            self.journal.fail_job(job_id, f"{reason} (after {attempts} attempts)")
            log.error("study %s job %d: failed after %d attempts: %s", study, job_id, attempts, reason)
            return
        self.journal.retry_job(job_id, reason, self.retry_delay * attempts)
        log.warning("study %s job %d: %s; retry %d of %d", study, job_id, reason, attempts, self.retries)
