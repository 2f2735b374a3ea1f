"""The node's web server (stdlib, one thread per request): status page, /healthz, /metrics, previews.

    /                      status page: recent jobs, stage timeline, failures with reasons, previews
    /healthz               liveness: 200 {"status": "ok"} while intake and the node's loops are alive, else 503
    /readyz                readiness: 200 also needs the model loaded, a worker heartbeat, a writable journal
                           and free spool space, else 503 naming what fails
    /metrics               Prometheus text format (no PHI: counts and error types only)
    /api/jobs              recent jobs as JSON
    /jobs/<id>/preview.png a job's overlay preview (only when PHI display is on)

Access (``WebAccess``): every path but /healthz and /readyz needs ``Authorization: Bearer
<token>`` or basic auth (the configured user and password, or any user with the token as
password, so a browser's login prompt works); else 401. Patient ID and accession number are
masked (``***89``) everywhere, also inside failure reasons, and previews (brain images) are not
served unless ``show_phi`` is on. Every answer carries a restrictive Content-Security-Policy
(scripts only with the page's nonce), X-Content-Type-Options, X-Frame-Options, Referrer-Policy
and Cache-Control: no-store.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import ipaddress
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.node.state.journal import Journal
from app.node.state.states import JobState, OutboxState
from operators.errors import ConfigurationError

log = logging.getLogger(__name__)
OPEN_PATHS = ("/healthz", "/readyz")  # probes: no PHI, no authentication
TOKEN_FILE = "http-token"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CSP = ("default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src {script}; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

STAGES = ("load", "select", "volume", "infer", "write")
STAGE_COLOURS = {"load": "#8da0cb", "select": "#e78ac3", "volume": "#a6d854", "infer": "#fc8d62", "write": "#66c2a5"}


@dataclass(frozen=True)
class WebAccess:
    """Who may read the web pages and what they show (see the module docstring)."""

    auth: bool = True
    token: str = ""
    user: str = ""
    password: str = ""
    show_phi: bool = False

    def allows(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header value grants access."""
        if not self.auth:
            return True
        scheme, _, value = (header or "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            return bool(self.token) and hmac.compare_digest(value.encode(), self.token.encode())
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        by_token = bool(self.token) and hmac.compare_digest(password.encode(), self.token.encode())
        by_user = bool(self.user) and hmac.compare_digest(user.encode(), self.user.encode()) and \
            hmac.compare_digest(password.encode(), self.password.encode())
        return by_token or by_user


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def web_access(settings: Any, spool_root: Path) -> WebAccess:
    """The web access policy from the settings.

    Auth on without any credential: a random token is generated once into ``<spool>/http-token``
    (mode 0600, reused across restarts) and its path, never the token, is logged. Auth off is
    allowed only on a loopback address (e.g. behind an authenticating proxy in the same pod).
    A user without a password (or the reverse) is a ConfigurationError."""
    user, password = settings.http_user or "", settings.http_password or ""
    if bool(user) != bool(password):
        raise ConfigurationError("http_user and http_password go together (basic auth needs both)")
    if not settings.http_auth:
        if not _loopback(settings.http_bind):
            raise ConfigurationError(f"http_auth is off but http_bind is {settings.http_bind}: the status page shows "
                                     "patient data; switch http_auth on or bind to 127.0.0.1")
        log.warning("web pages without authentication (http_auth off, loopback only)")
        return WebAccess(auth=False, show_phi=settings.show_phi)
    token = settings.http_token or ""
    if not token and not user:
        token = _stored_token(Path(spool_root) / TOKEN_FILE)
    return WebAccess(True, token, user, password, settings.show_phi)


def _stored_token(path: Path) -> str:
    if path.is_file():
        token = path.read_text().strip()
        if token:
            log.info("web access token: %s (http_token not set)", path)
            return token
    token = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")
    log.warning("web access token generated into %s (set http_token to choose one)", path)
    return token


def mask(value: str | None) -> str:
    """An identifier shown without PHI display: its last two characters (``***89``), or ``***``."""
    text = str(value or "")
    if not text:
        return ""
    return "***" + text[-2:] if len(text) >= 6 else "***"


def delivery_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """One outbox row: which output went where, its state and when it was stored, committed, delivered."""
    return {"destination": row["destination"], "kind": row["kind"] or "seg", "sop_instance_uid": row["sop_uid"],
            "sop_class_uid": row["sop_class"], "state": row["state"], "attempts": row["attempts"],
            "stored": row["stored_at"] or (row["sent_at"] if row["state"] == OutboxState.SENT else None),
            "committed": row["committed_at"], "delivered": row["sent_at"] if row["state"] == OutboxState.SENT else None,
            "transaction_uid": row["transaction_uid"], "error": row["last_error"]}


def job_summary(row: Mapping[str, Any], show_phi: bool = False,
                deliveries: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """One journal job row as plain JSON-able data; patient ID and accession masked unless ``show_phi``;
    ``deliveries``: its outbox rows (one per output and destination)."""
    outputs = json.loads(row["outputs"]) if row["outputs"] else {}
    patient_id, accession, reason = row["patient_id"], row["accession"], row["reason"]
    if not show_phi:
        for value in sorted((v for v in (patient_id, accession) if v), key=len, reverse=True):
            reason = reason.replace(value, mask(value)) if reason else reason
        patient_id, accession = mask(patient_id), mask(accession)
    return {
        "id": row["id"], "study_uid": row["study_uid"], "state": row["state"], "trigger": row["trigger"],
        "attempts": row["attempts"], "reason": reason, "instances": row["instances"],
        "calling_ae": row["calling_ae"], "patient_id": patient_id, "accession": accession,
        "received_first": row["first_at"], "received_last": row["last_at"], "started": row["started_at"],
        "finished": row["finished_at"], "stage_times": json.loads(row["stage_times"]) if row["stage_times"] else {},
        "sent": row["sent"], "sends": row["sends"], "delivered": row["delivered_at"], "send_error": row["send_error"],
        "preview": f"/jobs/{row['id']}/preview.png" if outputs.get("preview") and show_phi else None,
        "revision": int(row["revision"] or 0) + 1, "runs": row["runs"], "committing": row["committing"],
        "deliveries": [delivery_summary(d) for d in deliveries],
    }


def recent_summaries(journal: Journal, limit: int, show_phi: bool) -> list[dict[str, Any]]:
    rows = journal.recent_jobs(limit)
    deliveries = journal.deliveries(int(row["id"]) for row in rows)
    return [job_summary(row, show_phi, deliveries.get(int(row["id"]), ())) for row in rows]


def _deliveries_cell(job: Mapping[str, Any]) -> str:
    """Per destination: each output's state and when it was delivered (committed where required)."""
    by_destination: dict[str, list[Mapping[str, Any]]] = {}
    for item in job["deliveries"]:
        if item["state"] != OutboxState.SUPERSEDED:
            by_destination.setdefault(item["destination"], []).append(item)
    parts = []
    for name, items in by_destination.items():
        lines = []
        for item in items:
            committing = item["state"] == OutboxState.COMMITTING
            when = (f"committed {_when(item['committed'])}" if item["committed"] else
                    f"sent {_when(item['delivered'])}" if item["delivered"] else
                    f"stored {_when(item['stored'])}, awaiting commitment" if committing else
                    f"pending (attempt {item['attempts'] + 1})")
            lines.append(f'<li class="delivery delivery-{html.escape(item["state"])}">{html.escape(item["kind"])}: '
                         f'{html.escape(when)}</li>')
        parts.append(f"<b>{html.escape(name)}</b><ul>{''.join(lines)}</ul>")
    return "".join(parts)


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""


def _timeline(times: Mapping[str, float]) -> str:
    total = sum(times.values()) or 1.0
    bars = "".join(
        f'<span title="{stage} {times[stage]:.2f} s" style="display:inline-block;height:12px;'
        f'width:{max(2, int(200 * times[stage] / total))}px;background:{STAGE_COLOURS.get(stage, "#999")}"></span>'
        for stage in STAGES if stage in times
    )
    text = ", ".join(f"{stage} {times[stage]:.1f}" for stage in STAGES if stage in times)
    return f"{bars}<br><small>{html.escape(text)} s</small>" if times else ""


def status_page(journal: Journal, title: str, show_phi: bool = False, nonce: str = "") -> str:
    """The HTML status page (its one script, which marks rendered previews, runs with ``nonce``)."""
    jobs = recent_summaries(journal, 100, show_phi)
    counts = journal.counts()
    rows = []
    for job in jobs:
        delivered = (f"{job['sent']}/{job['sends']} {_when(job['delivered'])}{_deliveries_cell(job)}"
                     if job["sends"] else "")
        problem = job["reason"] or job["send_error"] or ""
        revision = f" (revision {job['revision']}, supersedes the earlier result)" if job["revision"] > 1 else ""
        preview = (f'<img class="preview" src="{job["preview"]}" alt="preview of job {job["id"]}" width="240">'
                   if job["preview"] else "")
        rows.append(
            f'<tr class="job state-{job["state"]}" id="job-{job["id"]}"><td>{job["id"]}</td>'
            f'<td><code>{html.escape(job["study_uid"])}</code><br>{html.escape(job["patient_id"] or "")} '
            f'{html.escape(job["accession"] or "")}</td><td>{html.escape(job["calling_ae"] or "")}</td>'
            f'<td>{job["instances"]}</td><td>{_when(job["received_last"])}</td>'
            f'<td class="state">{html.escape(job["state"])}'
            f'{revision}</td><td>{html.escape(job["trigger"] or "")}</td>'
            f'<td>{job["attempts"]}</td><td>{_timeline(job["stage_times"])}</td><td>{delivered}</td>'
            f'<td class="reason">{html.escape(problem)}</td><td>{preview}</td></tr>'
        )
    failures = [j for j in jobs if j["state"] == JobState.FAILED]
    failure_items = "".join(f"<li>job {j['id']} study <code>{html.escape(j['study_uid'])}</code>: "
                            f"{html.escape(j['reason'] or '')}</li>" for j in failures) or "<li>none</li>"
    summary = ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(counts.items()))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="10"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px;vertical-align:top;font-size:13px}}
.state-failed .state{{color:#b00;font-weight:bold}}.state-done .state{{color:#070}}</style></head>
<body><h1>{html.escape(title)}</h1><p id="counts">{summary}</p>
<h2>Failures</h2><ul id="failures">{failure_items}</ul>
<h2>Recent jobs</h2>
<table id="jobs"><tr><th>job</th><th>study / patient / accession</th><th>from</th><th>instances</th>
<th>last received</th><th>state</th><th>ready by</th><th>attempts</th><th>stages</th><th>delivered</th>
<th>reason</th><th>preview</th></tr>
{"".join(rows)}</table>
<script nonce="{nonce}">for (const img of document.querySelectorAll("img.preview")) {{
  const mark = () => {{ img.dataset.loaded = img.naturalWidth; }};
  if (img.complete) mark(); else img.addEventListener("load", mark);
}}</script></body></html>"""


class NodeWebServer:
    """Serves the pages above in a background thread."""

    def __init__(
        self, journal: Journal, registry: Any, healthy: Callable[[], dict[str, bool]], bind: str, port: int,
        title: str = "SegMamba node", ready: Callable[[], dict[str, bool]] | None = None,
        access: WebAccess | None = None,
    ) -> None:
        self.journal = journal
        self.ready = ready or healthy
        self.access = access or WebAccess()
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "SegMamba-node"
            sys_version = ""

            def do_GET(self) -> None:
                server.handle(self, registry, healthy, title)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer((bind, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="web", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def handle(self, request: BaseHTTPRequestHandler, registry: Any, healthy: Callable[[], dict[str, bool]],
               title: str) -> None:
        path = request.path.split("?", 1)[0]
        if path not in OPEN_PATHS and not self.access.allows(request.headers.get("Authorization")):
            self._send(request, 401, "text/plain", b"authentication required\n", challenge=True)
            return
        show_phi = self.access.show_phi
        if path in ("/healthz", "/readyz"):
            parts = healthy() if path == "/healthz" else self.ready()
            ok = all(parts.values())
            self._send(request, 200 if ok else 503, "application/json",
                       json.dumps({"status": "ok" if ok else "unhealthy", **parts}).encode())
        elif path == "/metrics":
            self._send(request, 200, CONTENT_TYPE_LATEST, generate_latest(registry))
        elif path == "/api/jobs":
            jobs = recent_summaries(self.journal, 1000, show_phi)
            self._send(request, 200, "application/json", json.dumps(jobs).encode())
        elif path in ("/", "/index.html"):
            nonce = secrets.token_urlsafe(16)
            self._send(request, 200, "text/html; charset=utf-8",
                       status_page(self.journal, title, show_phi, nonce).encode(), nonce=nonce)
        elif (match := re.fullmatch(r"/jobs/(\d+)/preview\.png", path)) and not show_phi:
            self._send(request, 403, "text/plain", b"previews are shown only with show_phi\n")
        elif match:
            job = self.journal.job(int(match.group(1)))
            preview = json.loads(job["outputs"]).get("preview") if job and job["outputs"] else None
            if preview and Path(preview).is_file():
                self._send(request, 200, "image/png", Path(preview).read_bytes())
            else:
                self._send(request, 404, "text/plain", b"no preview\n")
        else:
            self._send(request, 404, "text/plain", b"not found\n")

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, code: int, content_type: str, body: bytes, nonce: str = "",
              challenge: bool = False) -> None:
        request.send_response(code)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Content-Security-Policy", CSP.format(script=f"'nonce-{nonce}'" if nonce else "'none'"))
        for name, value in SECURITY_HEADERS.items():
            request.send_header(name, value)
        if challenge:
            request.send_header("WWW-Authenticate", 'Basic realm="SegMamba node", charset="UTF-8"')
            request.send_header("WWW-Authenticate", 'Bearer realm="SegMamba node"')
        request.end_headers()
        request.wfile.write(body)
