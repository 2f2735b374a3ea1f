"""The processing worker: claim ready jobs one at a time, segment, retry or fail, fill the outbox.

Failure policy per attempt (``attempts`` count only failures the job caused):
- bad input (StudyError): permanent; the job keeps its reason and its input stays in the spool
  for inspection (a resend of the study or ``python -m app requeue`` processes it again);
- CUDA out of memory: retried at once with half the sliding-window batch, then on the CPU;
- timeout, worker crash, misconfiguration (ConfigurationError), any other error (a bug): retried
  after a growing delay, at most ``retries`` more times, then permanent;
- not the job's fault (no worker process could be started, the journal could not be written):
  back to the queue without using an attempt. A job that ran ``max_runs`` times without an
  outcome (e.g. it takes the whole node down each time) fails.

While a job runs the worker beats: ``heartbeat`` (monotonic, for /readyz) and the job's
``heartbeat_at`` in the journal (the node's clock returns jobs without one to the queue). Every
journal update names the claim (``runs``), so a run whose job was taken back changes nothing.

Results of a reopened study (instances arrived after its result) supersede the previous one: the
new SEG joins the first result's SEG series as the next instance (InstanceNumber = revision + 1,
ContentDescription "Revision N: supersedes instance N-1 of this series"), and report.json says so (``revision``,
``supersedes``).
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pydicom

from app.logs import log_context
from app.node.executor import OOM, PERMANENT, JobExecutor, Outcome, WorkerStopped, after_out_of_memory
from app.node.send.destinations import Destination
from app.node.send.result_outputs import output_files
from app.node.state.journal import Journal
from app.node.state.spool import Spool
from operators.atomic_files import RESULT_MODE, save_atomically, write_atomically

log = logging.getLogger(__name__)
JOURNAL_ERRORS = (sqlite3.Error, OSError)
BEAT_EVERY = 5.0  # seconds between journal heartbeats of a running job
# Segmentation Storage and Label Map Segmentation Storage: the SOP classes a result's SEG may have.
SEGMENTATION_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")


def first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0]


def _rename_uid(dataset: pydicom.Dataset, old: str, new: str) -> int:
    """Replace every UI value ``old`` by ``new`` in ``dataset`` and its sequences; the count replaced."""
    replaced = 0

    def visit(ds: pydicom.Dataset, element: pydicom.DataElement) -> None:
        nonlocal replaced
        if element.VR == "UI" and element.value == old:
            element.value = new
            replaced += 1

    dataset.walk(visit)
    return replaced


def mark_superseding(files: dict[str, str], series_uid: str | None, revision: int, supersedes: str | None) -> None:
    """Make a result the next revision of a study's result: the SEG joins ``series_uid`` as instance
    ``revision + 1`` with a ContentDescription saying it supersedes the previous instance; report.json
    names the superseded SEG (``supersedes``). The other outputs that reference the SEG's series (the SR's
    segment references) and report.json's ``outputs`` are moved to that series with it."""
    seg_path = Path(files["segmentation"])
    seg = pydicom.dcmread(seg_path)
    written_series = str(seg.SeriesInstanceUID)
    if series_uid:
        seg.SeriesInstanceUID = series_uid
    seg.InstanceNumber = revision + 1
    seg.ContentDescription = f"Revision {revision + 1}: supersedes instance {revision} of this series"  # LO: 64
    save_atomically(seg, seg_path)
    report_path = Path(files.get("report", ""))
    if not report_path.is_file():
        return
    report = json.loads(report_path.read_text())
    if series_uid and series_uid != written_series:
        for entry in report.get("outputs") or []:
            if entry.get("series_instance_uid") == written_series:
                entry["series_instance_uid"] = series_uid
            for name in entry.get("files") or []:
                path = Path(name) if Path(name).is_absolute() else report_path.parent / name
                if path.resolve() == seg_path.resolve() or not path.is_file():
                    continue
                output = pydicom.dcmread(path)
                if _rename_uid(output, written_series, series_uid):
                    save_atomically(output, path)
    report["revision"] = revision + 1
    report["supersedes"] = {"sop_instance_uid": supersedes, "series_instance_uid": series_uid,
                            "reason": "instances arrived after the previous result; this result replaces it"}
    write_atomically(report_path, json.dumps(report, indent=2).encode(), RESULT_MODE)


class Worker:
    """Runs jobs from the journal through the executor (see the module docstring)."""

    def __init__(
        self, journal: Journal, spool: Spool, executor: JobExecutor, destinations: Sequence[Destination],
        timeout: float, retries: int, retry_delay: float = 5.0,
        on_outcome: Callable[[int, Outcome], None] | None = None, max_runs: int = 10,
    ) -> None:
        self.journal = journal
        self.spool = spool
        self.executor = executor
        self.destinations = list(destinations)
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_runs = max_runs
        self.on_outcome = on_outcome or (lambda _job, _outcome: None)
        self.stop_event = threading.Event()
        self.current_job: int | None = None
        self.heartbeat = time.monotonic()
        self._run: tuple[int, int] | None = None  # (job id, claim) of the running job
        self._beaten_at = 0.0

    def beat(self) -> None:
        """The worker is alive; tell the journal every BEAT_EVERY seconds while a job runs."""
        self.heartbeat = time.monotonic()
        if self._run is None or self.heartbeat - self._beaten_at < BEAT_EVERY:
            return
        self._beaten_at = self.heartbeat
        try:
            self.journal.beat(*self._run)
        except JOURNAL_ERRORS as error:
            log.warning("job %d: heartbeat not journalled: %s", self._run[0], error)

    def run_forever(self, idle: float = 0.3) -> None:
        while not self.stop_event.is_set():
            self.beat()
            if not self.run_one():
                self.stop_event.wait(idle)

    def output_dir(self, job_id: int, revision: int) -> Path:
        """A job's output folder; each revision has its own (a pending send of the last one keeps its file)."""
        return self.spool.job_dir(job_id) / ("output" if revision == 0 else f"output-r{revision}")

    def run_one(self) -> bool:
        """Claim and run one job; False when none was ready."""
        job = self.journal.claim_job()
        if job is None:
            return False
        job_id, study, run = int(job["id"]), str(job["study_uid"]), int(job["runs"])
        self.current_job, self._run, self._beaten_at = job_id, (job_id, run), time.monotonic()
        with log_context(study_uid=study, job_id=job_id):
            return self._run_claimed(job, job_id, study, run)

    def _run_claimed(self, job: Any, job_id: int, study: str, run: int) -> bool:
        try:
            if run > self.max_runs:
                self.journal.fail_job(job_id, f"gave up after {run - 1} runs without an outcome: {job['reason']}",
                                      run)
                log.error("study %s job %d: gave up after %d runs", study, job_id, run - 1)
                return True
            overrides: dict[str, Any] = json.loads(job["settings"]) if job["settings"] else {}
            output = self.output_dir(job_id, int(job["revision"]))
            shutil.rmtree(output, ignore_errors=True)  # nothing of an interrupted run mixes in
            log.info("study %s job %d: processing (run %d, %d failed attempt(s))", study, job_id, run,
                     job["attempts"])
            try:
                outcome = self.executor.run(self.spool.study_dir(study), output, self.timeout, overrides,
                                            on_wait=self.beat, ids={"study_uid": study, "job_id": job_id})
            except WorkerStopped:  # the node is stopping: the job waits for the next start
                log.info("study %s job %d: interrupted by the node stopping; back to the queue", study, job_id)
                self._release(job_id, run, "interrupted by the node stopping", 0.0)
                return True
            except Exception as error:  # no worker process: not the job's fault
                log.exception("study %s job %d: no worker process", study, job_id)
                self._release(job_id, run, f"{type(error).__name__}: {first_line(str(error))}", self.retry_delay)
                self.stop_event.wait(self.retry_delay)
                return True
            self.on_outcome(job_id, outcome)
            try:
                self._record(job, outcome)
            except JOURNAL_ERRORS as error:  # e.g. disk full: the job must not stay 'processing'
                log.error("study %s job %d: journal update failed (%s); the job goes back to the queue", study,
                          job_id, error)
                self._release(job_id, run, f"journal update failed: {error}", self.retry_delay)
            except Exception as error:  # a bug recording the outcome (e.g. an unreadable SEG): retried
                log.exception("study %s job %d: recording the outcome failed", study, job_id)
                self.journal.retry_job(job_id, f"{type(error).__name__}: {first_line(str(error))}",
                                       self.retry_delay * (int(job["attempts"]) + 1), None, run)
        finally:
            self.current_job, self._run = None, None
        return True

    def _release(self, job_id: int, run: int, reason: str, delay: float) -> None:
        """Back to the queue without an attempt; if even that cannot be written, the heartbeat reaper
        (or the next start) does it once the journal is writable again."""
        try:
            self.journal.release_job(job_id, reason, delay, run)
        except JOURNAL_ERRORS as error:
            log.error("job %d: could not be released (%s); the heartbeat timeout will requeue it", job_id, error)

    def _record(self, job: Any, outcome: Outcome) -> None:
        job_id, study, run = int(job["id"]), str(job["study_uid"]), int(job["runs"])
        attempts = int(job["attempts"]) + 1  # if this outcome is a failure
        if outcome.ok:
            self._finish(job, outcome)
            return
        reason = f"{outcome.error_type}: {first_line(outcome.message)}"
        if outcome.kind == PERMANENT:
            self.journal.fail_job(job_id, reason, run)
            log.error("study %s job %d: failed: %s", study, job_id, reason)
            return
        if outcome.kind == OOM:
            smaller = after_out_of_memory(outcome.sw_batch_size, outcome.device)
            if smaller is not None:
                self.journal.retry_job(job_id, reason, 0.0, smaller, run, counted=False)
                log.warning("study %s job %d: out of memory; retrying with %s", study, job_id, smaller)
                return
        if attempts > self.retries:
            self.journal.fail_job(job_id, f"{reason} (after {attempts} attempts)", run)
            log.error("study %s job %d: failed after %d attempts: %s", study, job_id, attempts, reason)
            return
        self.journal.retry_job(job_id, reason, self.retry_delay * attempts, None, run)
        log.warning("study %s job %d: %s; retry %d of %d", study, job_id, reason, attempts, self.retries)

    def _finish(self, job: Any, outcome: Outcome) -> None:
        job_id, study, revision = int(job["id"]), str(job["study_uid"]), int(job["revision"])
        files = dict(outcome.files)
        if revision > 0:
            previous = self.journal.query("SELECT sop_uid FROM outbox WHERE job_id = ? AND (sop_class IS NULL OR"
                                          " sop_class IN (?, ?)) ORDER BY id DESC LIMIT 1",
                                          (job_id, *SEGMENTATION_CLASSES))
            mark_superseding(files, job["seg_series_uid"], revision, previous[0]["sop_uid"] if previous else None)
        outputs = output_files(files)  # UIDs and SOP classes as report.json lists them: no header re-read
        seg = next((o for o in outputs if o.kind == "seg"), None)
        sop_uid = seg.sop_uid if seg is not None else "(none)"
        sends = [(d.name, str(o.path), o.sop_uid, o.kind, o.sop_class) for d in self.destinations for o in outputs]
        if not self.journal.finish_job(job_id, files, outcome.stage_times, sends, int(job["runs"]),
                                       seg.series_uid if seg is not None else None):
            log.warning("study %s job %d: result discarded, the job was taken back meanwhile", study, job_id)
            return
        log.info("study %s job %d: done in %.1f s, SEG %s%s and %d other output(s) queued for %s", study, job_id,
                 sum(outcome.stage_times.values()), sop_uid, f" (revision {revision + 1})" if revision else "",
                 len(outputs) - 1, [d.name for d in self.destinations])
