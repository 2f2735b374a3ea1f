"""Deliver the outbox: each pending result goes to its destination until the peer acknowledges it.

A result is marked sent in the journal as soon as its C-STORE response is Success (or a storing
warning), so it is never sent again; a crash between the peer's answer and that mark resends the
same file, with the same SOP Instance UID, which the peer treats as the same instance. While a
destination is down, its entries wait ``backoff(attempts)`` seconds (exponential, capped).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.node.send.storage_scu import Destination, DestinationUnavailable, send_files
from app.node.state.journal import Journal

log = logging.getLogger(__name__)


def backoff(attempts: int, base: float, maximum: float) -> float:
    """Seconds before the next try after ``attempts`` failed ones: base, 2 base, 4 base ... at most maximum."""
    return float(min(maximum, base * 2 ** max(0, attempts)))


class ResultSender:
    """Sends due outbox entries, one destination association at a time (call ``send_due`` periodically)."""

    def __init__(
        self, journal: Journal, destinations: Sequence[Destination], calling_ae: str,
        base_delay: float = 5.0, max_delay: float = 600.0, ssl_context: ssl.SSLContext | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.journal = journal
        self.destinations = {d.name: d for d in destinations}
        self.calling_ae = calling_ae
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.ssl_context = ssl_context
        self.on_event = on_event or (lambda _kind, _destination: None)
        self._lock = threading.Lock()

    def send_due(self) -> int:
        """Try every due entry once; returns how many were acknowledged."""
        with self._lock:
            by_destination: dict[str, list[Mapping[str, Any]]] = {}
            for row in self.journal.due_sends():
                by_destination.setdefault(row["destination"], []).append(row)
            return sum(self._send(name, rows) for name, rows in by_destination.items())

    def _send(self, name: str, rows: list[Mapping[str, Any]]) -> int:
        destination = self.destinations.get(name)
        if destination is None:
            for row in rows:
                self._failed(row, f"destination {name!r} is no longer configured")
            return 0
        try:
            results = send_files([Path(row["path"]) for row in rows], destination, self.calling_ae, self.ssl_context)
        except (DestinationUnavailable, OSError) as error:
            for row in rows:
                self._failed(row, str(error))
            return 0
        acknowledged = 0
        answered = {result.path: result for result in results}
        for row in rows:
            result = answered.get(Path(row["path"]))
            if result is not None and result.stored:
                self.journal.mark_sent(row["id"], f"status 0x{result.status:04X} from {destination.ae_title}@"
                                                  f"{destination.host}:{destination.port}")
                log.info("study %s job %d: %s sent to %s", row["study_uid"], row["job_id"], row["sop_uid"], name)
                self.on_event("sent", name)
                acknowledged += 1
            else:
                why = "no answer" if result is None else f"status 0x{(result.status or 0):04X} {result.comment}"
                self._failed(row, f"{name}: {why}")
        return acknowledged

    def _failed(self, row: Mapping[str, Any], error: str) -> None:
        delay = backoff(int(row["attempts"]), self.base_delay, self.max_delay)
        self.journal.mark_send_failed(row["id"], error, delay)
        self.on_event("retry", str(row["destination"]))
        log.warning("study %s job %d: send to %s failed (%s); retry in %.1f s", row["study_uid"], row["job_id"],
                    row["destination"], error, delay)
