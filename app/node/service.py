"""The DICOM node: ``python -m app serve``.

    C-STORE / inbox folder -> intake (spool + journal) -> study completion -> job queue (journal)
        -> worker (operator chain in a child process, model loaded once) -> outbox -> C-STORE to PACS

Threads of this process: the SCP's (pynetdicom), inbox (watchdog), clock (completion checks and
retention), worker (one job at a time), sender (outbox), web (status, /healthz, /metrics). All
state is in the spool and the journal; on start, jobs interrupted by a crash go back to ready
and unacknowledged results are sent again.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.node.executor import JobExecutor, Outcome
from app.node.metrics import NodeMetrics
from app.node.web import NodeWebServer, web_access
from app.node.worker import Worker
from operators.inbox import Inbox
from operators.intake import Intake, IntakeResult, Limits
from operators.journal import Journal
from operators.result_sender import ResultSender
from operators.retention import clean_spool
from operators.spool import Spool
from operators.storage_scp import ScpConfig, StorageSCP, scp_ssl_context
from operators.storage_scu import Destination, client_ssl_context
from operators.study_completion import CompletionChecker, CompletionPolicy

log = logging.getLogger("app.node")
RETENTION_EVERY = 3600.0


class _CountingIntake(Intake):
    """The intake, counting results into the metrics."""

    def __init__(self, *args: Any, metrics: NodeMetrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics

    def accept(self, data: bytes, calling_ae: str, *args: Any) -> IntakeResult:
        result = super().accept(data, calling_ae, *args)
        self.metrics.instances.labels("duplicate" if result.duplicate else "stored" if result.ok else "refused").inc()
        if not result.ok:
            self.metrics.refusals.labels(f"0x{result.status:04X}").inc()
        return result


class Node:
    """All parts of the service, wired from one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.log_level != "DEBUG":  # pynetdicom logs every PDU at INFO
            logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        self.spool = Spool(settings.spool)
        self.journal = Journal(self.spool.journal_path)
        self.metrics = NodeMetrics(self.journal)
        self.intake = _CountingIntake(self.spool, self.journal, Limits(
            settings.max_study_instances, settings.max_study_mb << 20, settings.min_free_mb << 20,
            settings.quarantine_mb << 20), metrics=self.metrics)
        self.scp = StorageSCP(ScpConfig(
            settings.ae_title, settings.port, settings.bind_address, settings.allowed_calling_aes,
            settings.max_associations,
            scp_ssl_context(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_require_client_cert),
            settings.association_request_timeout, settings.max_associations_per_peer,
        ), self.intake)
        self.inbox = Inbox(settings.inbox, self.intake) if settings.inbox else None
        self.completion = CompletionChecker(self.journal, CompletionPolicy(
            settings.quiet_seconds, settings.stable_seconds, settings.forced_seconds), settings.series_rules)
        destinations = [Destination.from_dict(d) for d in settings.destinations]
        self.executor = JobExecutor(settings)
        self.worker = Worker(self.journal, self.spool, self.executor, destinations, settings.job_timeout,
                             settings.job_retries, on_outcome=self._count_outcome)
        client_tls = client_ssl_context(settings.tls_ca, settings.tls_cert, settings.tls_key) \
            if any(d.tls for d in destinations) else None
        self.sender = ResultSender(self.journal, destinations, settings.ae_title, settings.send_backoff,
                                   settings.send_backoff_max, client_tls,
                                   on_event=lambda kind, name: self.metrics.sends.labels(name, kind).inc())
        self.web = NodeWebServer(self.journal, self.metrics.registry, self.health, settings.http_bind,
                                 settings.http_port, f"SegMamba node {settings.ae_title}",
                                 access=web_access(settings, self.spool.root))
        self.stop_event = threading.Event()
        self.worker_ready = False
        self._threads: list[threading.Thread] = []

    def _count_outcome(self, job_id: int, outcome: Outcome) -> None:
        self.metrics.jobs.labels(outcome.kind).inc()
        if outcome.ok:
            for stage, seconds in outcome.stage_times.items():
                self.metrics.stage_seconds.labels(stage).observe(seconds)
            self.metrics.job_seconds.observe(sum(outcome.stage_times.values()))
        else:
            self.metrics.failures.labels(outcome.error_type or outcome.kind).inc()

    def health(self) -> dict[str, bool]:
        return {"scp": self.scp.server is not None, "worker": self.worker_ready,
                **{t.name: t.is_alive() for t in self._threads}}

    def start(self) -> None:
        recovered = self.journal.recover()
        if recovered:
            log.warning("%d job(s) interrupted by a previous stop are ready again", recovered)
        self.web.start()
        self.scp.start()
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
        self.executor.stop()
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
        if not self.worker_ready:
            self.executor.start()
            self.worker_ready = True
        self.worker.run_forever()

    def _send(self) -> None:
        self.sender.send_due()
        self.stop_event.wait(0.5)

    def _tick(self) -> None:
        self.completion.check()
        now = time.monotonic()
        if now - getattr(self, "_cleaned_at", -RETENTION_EVERY) >= RETENTION_EVERY:
            self._cleaned_at = now
            clean_spool(self.journal, self.spool, self.settings.retention_days * 86400)
        self.stop_event.wait(0.5)


def serve(settings: Settings) -> None:
    """Run the node until stopped."""
    Node(settings).run()
