"""The DICOM node: ``python -m app serve``.

    C-STORE / inbox folder -> intake (spool + journal) -> study completion -> job queue (journal)
        -> worker (operator chain in a child process, model loaded once) -> outbox -> C-STORE (+ Storage
        Commitment) / STOW-RS to each destination

Threads of this process: the SCP's (pynetdicom), inbox (watchdog), clock (completion checks,
heartbeat reaper, retention), worker (one job at a time), sender (outbox), web (status, /healthz,
/readyz, /metrics). All state is in the spool and the journal; on start, temporary files of
interrupted receives are removed, jobs interrupted by a crash go back to ready and unacknowledged
results are sent again.

Health: ``/healthz`` (liveness) is ok while the SCP and every loop thread are alive;
``/readyz`` (readiness) also needs the model loaded in the worker process, a worker heartbeat within
``heartbeat_timeout``, a writable journal and ``min_free_mb`` free on the spool's disk.
"""

from __future__ import annotations

import io
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pydicom

from app.config import Settings
from app.node.completion import CompletionChecker, CompletionPolicy
from app.node.executor import JobExecutor, Outcome, WorkerStopped
from app.node.metrics import NodeMetrics
from app.node.receive.inbox import Inbox
from app.node.receive.intake import CANNOT_UNDERSTAND, Intake, IntakeResult, Limits
from app.node.receive.storage_scp import ScpConfig, StorageSCP, scp_ssl_context
from app.node.send.destinations import Destination
from app.node.send.result_sender import ResultSender
from app.node.send.storage_scu import client_ssl_context
from app.node.state.journal import Journal
from app.node.state.retention import clean_spool, remove_temporaries
from app.node.state.spool import Spool
from app.node.web import NodeWebServer, web_access
from app.node.worker import Worker

log = logging.getLogger("app.node")
MODEL_RETRY_DELAY = 10.0  # seconds between attempts to start a worker whose model does not load


RECORD_FIELDS = ("SOPClassUID", "Modality", "PatientID", "AccessionNumber")


def unreadable_record_field(data: bytes) -> str | None:
    """Why an attribute the journal records cannot be decoded (e.g. a corrupted VR: pydicom raises
    NotImplementedError, which the intake would answer as a transient 0xA700 forever), or None."""
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:
        return None  # the intake judges unparseable objects itself
    for keyword in RECORD_FIELDS:
        try:
            str(dataset.get(keyword, ""))
        except Exception as error:
            return f"not a usable DICOM instance: {keyword} cannot be decoded ({type(error).__name__}: {error})"[:200]
    return None


class _CountingIntake(Intake):
    """The intake, counting results into the metrics; a resend of a failed study reopens it; an object
    that makes the reader fail unexpectedly is refused (0xC000), never the end of an intake thread."""

    def __init__(self, *args: Any, metrics: NodeMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    def accept(self, data: bytes, calling_ae: str, *args: Any) -> IntakeResult:
        problem = unreadable_record_field(data)
        if problem is not None:
            log.warning("intake from %s refused: %s", calling_ae, problem)
            result = IntakeResult(CANNOT_UNDERSTAND, problem)
            self._count(result)
            return result
        try:
            result = super().accept(data, calling_ae, *args)
        except Exception as error:  # e.g. RecursionError on deeply nested sequences: refuse this object only
            log.exception("intake from %s: unexpected failure reading an object", calling_ae)
            result = IntakeResult(CANNOT_UNDERSTAND, f"not a usable DICOM instance: {type(error).__name__}")
        self._count(result)
        if result.duplicate and result.study_uid:
            try:
                self.journal.touch_receiving(result.study_uid)
                self.journal.reopen_failed(result.study_uid, calling_ae,
                                           "the study was sent again after its job failed; processing it again")
            except Exception:  # the instance is safely stored; a reopen can be done by `requeue`
                log.exception("study %s: could not reopen after a resend", result.study_uid)
        return result

    def _count(self, result: IntakeResult) -> None:
        self.metrics.instances.labels("duplicate" if result.duplicate else "stored" if result.ok else "refused").inc()
        if not result.ok:
            self.metrics.refusals.labels(f"0x{result.status:04X}").inc()


class Node:
    """All parts of the service, wired from one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.log_level != "DEBUG":  # pynetdicom logs every PDU at INFO
            logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self.spool = Spool(settings.spool)
        self.journal = Journal(self.spool.journal_path)
        self.metrics = NodeMetrics(self.journal)
        self.intake = _CountingIntake(self.spool, self.journal, Limits.from_settings(settings), metrics=self.metrics)
        self.inbox = Inbox(settings.inbox, self.intake) if settings.inbox else None
        self.completion = CompletionChecker(self.journal, CompletionPolicy.from_settings(settings),
                                            settings.series_rules)
        destinations = [Destination.from_dict(d) for d in settings.destinations]
        self.executor = JobExecutor(settings)
        self.worker = Worker(self.journal, self.spool, self.executor, destinations, settings.job_timeout,
                             settings.job_retries, on_outcome=self._count_outcome, max_runs=settings.max_job_runs)
        client_tls = client_ssl_context(settings.tls_ca, settings.tls_cert, settings.tls_key) \
            if any(d.tls for d in destinations) else None
        self.sender = ResultSender(self.journal, destinations, settings.ae_title, settings.send_backoff,
                                   settings.send_backoff_max, client_tls,
                                   on_event=lambda kind, name: self.metrics.sends.labels(name, kind).inc(),
                                   commitment_timeout=settings.commitment_timeout, https_ca=settings.tls_ca)
        tls = scp_ssl_context(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_require_client_cert)
        self.scp = StorageSCP(ScpConfig.from_settings(settings, tls), self.intake,
                              on_commitment=self.sender.on_commitment_report)
        self.web = NodeWebServer(self.journal, self.metrics.registry, self.health, settings.http_bind,
                                 settings.http_port, f"SegMamba node {settings.ae_title}", ready=self.readiness,
                                 access=web_access(settings, self.spool.root))
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._cleaned_at = -float("inf")

    def _count_outcome(self, job_id: int, outcome: Outcome) -> None:
        self.metrics.jobs.labels(outcome.kind).inc()
        if outcome.ok:
            for stage, seconds in outcome.stage_times.items():
                self.metrics.stage_seconds.labels(stage).observe(seconds)
            self.metrics.job_seconds.observe(sum(outcome.stage_times.values()))
        else:
            self.metrics.failures.labels(outcome.error_type or outcome.kind).inc()

    def health(self) -> dict[str, bool]:
        """Liveness: the SCP and every loop thread are alive."""
        return {"scp": self.scp.server is not None, **{t.name: t.is_alive() for t in self._threads}}

    def readiness(self) -> dict[str, bool]:
        """Readiness: alive, model loaded, recent worker heartbeat, journal writable, spool not full."""
        try:
            self.journal.probe()
            journal_ok = True
        except Exception as error:  # sqlite3.Error, OSError: disk full, read-only, ...
            log.warning("journal not writable: %s", error)
            journal_ok = False
        try:
            free_ok = shutil.disk_usage(self.spool.root).free >= self.settings.min_free_mb << 20
        except OSError:
            free_ok = False
        beat_age = time.monotonic() - self.worker.heartbeat
        return {**self.health(), "model": self.executor.alive(),
                "worker_heartbeat": beat_age < self.settings.heartbeat_timeout, "journal": journal_ok,
                "spool_space": free_ok}

    def start(self) -> None:
        remove_temporaries(self.spool)
        recovered = self.journal.recover()
        if recovered:
            log.warning("%d job(s) interrupted by a previous stop are ready again", recovered)
        self.web.start()
        self.scp.start()
        self.completion.listening_since = time.time()  # silence before this (the node was down) is not quiet
        if self.inbox is not None:
            self.inbox.start()
        for name, target in (("worker", self._work), ("sender", self._send), ("clock", self._tick)):
            thread = threading.Thread(target=self._guard(name, target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("node %s: DICOM %s:%d, web http://%s:%d/, spool %s", self.settings.ae_title,
                 self.settings.bind_address, self.settings.port, self.settings.http_bind, self.web.port,
                 self.spool.root)

    def stop(self) -> None:
        self.stop_event.set()
        self.worker.stop_event.set()
        self.scp.stop()
        if self.inbox is not None:
            self.inbox.stop()
        self.executor.close()
        for thread in self._threads:
            thread.join(timeout=10)
        self.web.stop()
        self.journal.close()

    def run(self) -> None:
        """Start, then serve until SIGTERM or SIGINT."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop_event.set())
        self.start()
        self.stop_event.wait()
        log.info("stopping")
        self.stop()

    def _guard(self, name: str, target: Callable[[], None]) -> Callable[[], None]:
        """Keep a loop alive across unexpected errors (logged), until stop."""
        def loop() -> None:
            while not self.stop_event.is_set():
                try:
                    target()
                except Exception:
                    log.exception("%s loop failed; continuing", name)
                    self.stop_event.wait(1.0)
        return loop

    def _work(self) -> None:
        if not self.executor.alive():
            try:
                self.executor.start(on_wait=self.worker.beat)
            except WorkerStopped:
                return
            except Exception:  # the model does not load: not ready (/readyz), try again later
                log.exception("the worker process could not load the model; retrying in %.0f s", MODEL_RETRY_DELAY)
                self.worker.beat()
                self.stop_event.wait(MODEL_RETRY_DELAY)
                return
        self.worker.run_forever()

    def _send(self) -> None:
        self.sender.send_due()
        self.stop_event.wait(0.5)

    def _tick(self) -> None:
        self.completion.check()
        for job_id in self.journal.reap_stale(self.settings.heartbeat_timeout):
            log.warning("job %d: no worker heartbeat for %.0f s; back to the queue", job_id,
                        self.settings.heartbeat_timeout)
        now = time.monotonic()
        if now - self._cleaned_at >= self.settings.retention_interval:
            self._cleaned_at = now
            clean_spool(self.journal, self.spool, self.settings.retention_days * 86400)
        self.stop_event.wait(0.5)


def serve(settings: Settings) -> None:
    """Run the node until stopped."""
    Node(settings).run()
