"""Deliver the outbox: each pending result goes to its destination until the destination confirms it.

Destinations are served side by side (one thread each per round), each with its own outbox rows,
attempts and back-off, so one that is down never delays another. A result is delivered ('sent')
when the peer acknowledged it: C-STORE Success (or a storing warning), or named as stored in the
STOW-RS response; for a destination that requires Storage Commitment, only once the PACS reported
it committed (N-EVENT-REPORT). The rows are put 'committing' under a fresh Transaction UID before
the N-ACTION goes out; a failure in the report, a refused N-ACTION or no report within
``commitment_timeout`` puts them back to pending and they are sent again after their back-off.
A crash between the peer's answer and the journal's mark resends the same file, with the same SOP
Instance UID, which the peer treats as the same instance. While a destination is down, its entries
wait ``backoff(attempts)`` seconds (exponential, capped). After each change a job's report.json
gets its ``delivery`` record (app/node/send/result_outputs.py).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from app.node.send.destinations import STOW, Destination
from app.node.send.result_outputs import write_delivery
from app.node.send.storage_commitment import CommitmentReport, request_commitment
from app.node.send.storage_scu import DestinationUnavailable, SendResult, send_files
from app.node.send.stow_client import stow_files
from app.node.state.journal import Journal

log = logging.getLogger(__name__)


def backoff(attempts: int, base: float, maximum: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: base, 2 base, 4 base ... at most maximum."""
    return float(min(maximum, base * 2 ** max(0, attempts)))


class ResultSender:
    """Sends due outbox entries, one association (or STOW-RS request) per destination and round
    (call ``send_due`` periodically); ``on_commitment_report`` takes the reports the SCP receives."""

    def __init__(
        self, journal: Journal, destinations: Sequence[Destination], calling_ae: str,
        base_delay: float = 5.0, max_delay: float = 600.0, ssl_context: ssl.SSLContext | None = None,
        on_event: Callable[[str, str], None] | None = None, commitment_timeout: float = 300.0,
        https_ca: Path | None = None, report_linger: float = 2.0,
    ) -> None:
        self.journal = journal
        self.destinations = {d.name: d for d in destinations}
        self.calling_ae = calling_ae
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.ssl_context = ssl_context
        self.commitment_timeout = commitment_timeout
        self.https_ca = https_ca
        self.report_linger = report_linger  # seconds the N-ACTION association waits for a report on it
        self.on_event = on_event or (lambda _kind, _destination: None)
        self._lock = threading.Lock()
        self._report_lock = threading.Lock()

    def retry_delay(self, attempts: int) -> float:
        return backoff(attempts, self.base_delay, self.max_delay)

    def send_due(self) -> int:
        """Expire overdue commitments, then try every due entry once; returns how many were delivered
        (acknowledged, or for commitment destinations stored and waiting for the report)."""
        with self._lock:
            expired = self.journal.expire_commitments(self.retry_delay)
            for row in expired:
                self.on_event("retry", str(row["destination"]))
                log.warning("study %s job %d: %s: no storage commitment report for %s within %.0f s; sent again",
                            row["study_uid"], row["job_id"], row["destination"], row["sop_uid"],
                            self.commitment_timeout)
            by_destination: dict[str, list[Mapping[str, Any]]] = {}
            due = self.journal.due_sends()
            for row in due:
                by_destination.setdefault(row["destination"], []).append(row)
            if len(by_destination) <= 1:
                delivered = sum(self._send(name, rows) for name, rows in by_destination.items())
            else:
                with ThreadPoolExecutor(len(by_destination), thread_name_prefix="send") as pool:
                    delivered = sum(pool.map(lambda item: self._send(*item), by_destination.items()))
            self.record_in_reports({int(row["job_id"]) for row in [*expired, *due]})
            return delivered

    def record_in_reports(self, job_ids: set[int]) -> None:
        """Write each job's deliveries into its report.json (a report that is gone is skipped)."""
        addresses = {name: d.address for name, d in self.destinations.items()}
        with self._report_lock:
            for job_id, rows in self.journal.deliveries(job_ids).items():
                job = self.journal.job(job_id)
                report = json.loads(job["outputs"]).get("report") if job and job["outputs"] else None
                if not report or not Path(report).is_file():
                    continue
                try:
                    write_delivery(Path(report), rows, addresses)
                except (OSError, ValueError) as error:
                    log.warning("job %d: delivery not recorded in %s: %s", job_id, report, error)

    def on_commitment_report(self, report: CommitmentReport, caller: str) -> None:
        """Record a Storage Commitment report (from our SCP or the requesting association)."""
        jobs = {int(row["job_id"]) for row in self.journal.committing(report.transaction_uid)}
        done, again = self.journal.record_commitment(report.transaction_uid, report.committed, report.failed,
                                                     self.retry_delay, caller)
        if not done and not again:
            log.warning("storage commitment report from %s for unknown or settled transaction %s", caller,
                        report.transaction_uid)
            return
        log.info("storage commitment %s from %s: %d committed, %d to send again", report.transaction_uid, caller,
                 len(done), len(again))
        for name in done:
            self.on_event("committed", name)
        for name in again:
            self.on_event("retry", name)
        self.record_in_reports(jobs)

    def _send(self, name: str, rows: list[Mapping[str, Any]]) -> int:
        try:
            return self._deliver(name, rows)
        except Exception as error:  # a bug or an unreadable file: this destination's rows wait, others go on
            log.exception("sending to %s failed unexpectedly", name)
            for row in rows:
                self._failed(row, f"{name}: {type(error).__name__}: {error}")
            return 0

    def _deliver(self, name: str, rows: list[Mapping[str, Any]]) -> int:
        destination = self.destinations.get(name)
        if destination is None:
            for row in rows:
                self._failed(row, f"destination {name!r} is no longer configured")
            return 0
        paths = [Path(row["path"]) for row in rows]
        try:
            if destination.type == STOW:
                results = stow_files(paths, destination, ca=self.https_ca)
            else:
                results = send_files(paths, destination, self.calling_ae, self.ssl_context)
        except (DestinationUnavailable, OSError) as error:
            for row in rows:
                self._failed(row, str(error))
            return 0
        answered = {result.path: result for result in results}
        stored: list[Mapping[str, Any]] = []
        for row in rows:
            result = answered.get(Path(row["path"]))
            if result is not None and result.stored:
                stored.append(row)
            else:
                self._failed(row, f"{name}: {_why(result)}")
        if not stored:
            return 0
        detail = f"status 0x{answered[Path(stored[0]['path'])].status:04X} from {destination.address}"
        if destination.storage_commitment:
            return self._commit(destination, stored, detail)
        for row in stored:
            self.journal.mark_sent(row["id"], detail)
            log.info("study %s job %d: %s sent to %s", row["study_uid"], row["job_id"], row["sop_uid"], name)
            self.on_event("sent", name)
        return len(stored)

    def _commit(self, destination: Destination, rows: list[Mapping[str, Any]], detail: str) -> int:
        """Journal the rows as 'committing' under a new transaction, then ask for commitment."""
        transaction = generate_uid()
        self.journal.mark_stored([row["id"] for row in rows], transaction, self.commitment_timeout, detail)
        instances = [(str(row["sop_class"] or _sop_class(Path(row["path"]))), str(row["sop_uid"])) for row in rows]
        try:
            request_commitment(destination, self.calling_ae, transaction, instances, self.on_commitment_report,
                               self.ssl_context, settled=lambda: not self.journal.committing(transaction),
                               linger=self.report_linger)
        except (DestinationUnavailable, OSError) as error:
            for row in self.journal.committing(transaction):
                self._failed(row, str(error))
            return 0
        for row in rows:
            self.on_event("stored", destination.name)
            log.info("study %s job %d: %s stored at %s, commitment requested (%s)", row["study_uid"], row["job_id"],
                     row["sop_uid"], destination.name, transaction)
        return len(rows)

    def _failed(self, row: Mapping[str, Any], error: str) -> None:
        delay = self.retry_delay(int(row["attempts"]))
        self.journal.mark_send_failed(row["id"], error, delay)
        self.on_event("retry", str(row["destination"]))
        log.warning("study %s job %d: send to %s failed (%s); retry in %.1f s", row["study_uid"], row["job_id"],
                    row["destination"], error, delay)


def _why(result: SendResult | None) -> str:
    return "no answer" if result is None else f"status 0x{(result.status or 0):04X} {result.comment}".strip()


def _sop_class(path: Path) -> str:
    """The SOP Class UID of a file (outbox rows journalled before the column existed)."""
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)
