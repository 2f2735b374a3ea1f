"""The node's web server (stdlib, one thread per request): status page, /healthz, /metrics, previews.

    /                      status page: recent jobs, stage timeline, failures with reasons, previews
    /healthz               liveness: 200 {"status": "ok"} while intake and the node's loops are alive, else 503
    /readyz                readiness: 200 also needs the model loaded, a worker heartbeat, a writable journal
                           and free spool space, else 503 naming what fails
    /metrics               Prometheus text format
    /api/jobs              recent jobs as JSON
    /jobs/<id>/preview.png a job's overlay preview
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from operators.journal import Journal

STAGES = ("load", "select", "volume", "infer", "write")
STAGE_COLOURS = {"load": "#8da0cb", "select": "#e78ac3", "volume": "#a6d854", "infer": "#fc8d62", "write": "#66c2a5"}


def job_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    """One journal job row as plain JSON-able data."""
    outputs = json.loads(row["outputs"]) if row["outputs"] else {}
    return {
        "id": row["id"], "study_uid": row["study_uid"], "state": row["state"], "trigger": row["trigger"],
        "attempts": row["attempts"], "reason": row["reason"], "instances": row["instances"],
        "calling_ae": row["calling_ae"], "patient_id": row["patient_id"], "accession": row["accession"],
        "received_first": row["first_at"], "received_last": row["last_at"], "started": row["started_at"],
        "finished": row["finished_at"], "stage_times": json.loads(row["stage_times"]) if row["stage_times"] else {},
        "sent": row["sent"], "sends": row["sends"], "delivered": row["delivered_at"], "send_error": row["send_error"],
        "preview": f"/jobs/{row['id']}/preview.png" if outputs.get("preview") else None,
        "revision": int(row["revision"] or 0) + 1, "runs": row["runs"],
    }


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


def status_page(journal: Journal, title: str) -> str:
    """The HTML status page."""
    jobs = [job_summary(row) for row in journal.recent_jobs(100)]
    counts = journal.counts()
    rows = []
    for job in jobs:
        delivered = (f"{job['sent']}/{job['sends']} {_when(job['delivered'])}" if job["sends"] else "")
        problem = job["reason"] or job["send_error"] or ""
        revision = f" (revision {job['revision']}, supersedes the earlier result)" if job["revision"] > 1 else ""
        preview = (f'<img class="preview" src="{job["preview"]}" alt="preview of job {job["id"]}" width="240" '
                   "onload=\"this.dataset.loaded = this.naturalWidth\">") if job["preview"] else ""
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
    failures = [j for j in jobs if j["state"] == "failed"]
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
{"".join(rows)}</table></body></html>"""


class NodeWebServer:
    """Serves the pages above in a background thread."""

    def __init__(
        self, journal: Journal, registry: Any, healthy: Callable[[], dict[str, bool]], bind: str, port: int,
        title: str = "SegMamba node", ready: Callable[[], dict[str, bool]] | None = None,
    ) -> None:
        self.journal = journal
        self.ready = ready or healthy
        server = self

        class Handler(BaseHTTPRequestHandler):
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
        if path in ("/healthz", "/readyz"):
            parts = healthy() if path == "/healthz" else self.ready()
            ok = all(parts.values())
            self._send(request, 200 if ok else 503, "application/json",
                       json.dumps({"status": "ok" if ok else "unhealthy", **parts}).encode())
        elif path == "/metrics":
            self._send(request, 200, CONTENT_TYPE_LATEST, generate_latest(registry))
        elif path == "/api/jobs":
            jobs = [job_summary(row) for row in self.journal.recent_jobs(1000)]
            self._send(request, 200, "application/json", json.dumps(jobs).encode())
        elif path in ("/", "/index.html"):
            self._send(request, 200, "text/html; charset=utf-8", status_page(self.journal, title).encode())
        elif match := re.fullmatch(r"/jobs/(\d+)/preview\.png", path):
            job = self.journal.job(int(match.group(1)))
            preview = json.loads(job["outputs"]).get("preview") if job and job["outputs"] else None
            if preview and Path(preview).is_file():
                self._send(request, 200, "image/png", Path(preview).read_bytes())
            else:
                self._send(request, 404, "text/plain", b"no preview\n")
        else:
            self._send(request, 404, "text/plain", b"not found\n")

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, code: int, content_type: str, body: bytes) -> None:
        request.send_response(code)
        request.send_header("Content-Type", content_type)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
