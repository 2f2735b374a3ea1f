"""The node's web server (app/node/web.py) on a real journal holding a revised done job with deliveries, a
failed job and a queued one: the probes' answers, what /api/jobs and the status page list, access with
authentication on and off, and the answers for unknown paths. (Authentication headers, security headers and
PHI masking in general are in test_node_security.py; the web pages are read-only: requeue is
``python -m app requeue``, tested in test_node_health.py.)"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import MRImageStorage

from app.node.metrics import NodeMetrics
from app.node.state.journal import InstanceRecord, Journal
from app.node.web import NodeWebServer, WebAccess
from tests.support.node_peers import Clock, basic_auth, http_get

PATIENT_ID, ACCESSION = "PAT-558812", "ACC-77120"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
TOKEN = "web-token"
Serve = Callable[..., NodeWebServer]


def _received(journal: Journal, study: str) -> None:
    journal.record_instance(InstanceRecord(f"{study}.1", study, f"{study}.9", MRImageStorage, "MR", Path("/x"), 10,
                                           "MODALITY", PATIENT_ID, ACCESSION))


def _finish(journal: Journal, job_id: int, sop_uid: str, destinations: tuple[str, ...],
            times: dict[str, float]) -> None:
    run = journal.claim_job()["runs"]
    sends = [(name, f"/spool/{sop_uid}.dcm", sop_uid, "seg", SEG_CLASS) for name in destinations]
    assert journal.finish_job(job_id, {"segmentation": f"/spool/{sop_uid}.dcm"}, times, sends, run)


def _send(journal: Journal, destination: str, sop_uid: str) -> int:
    return int(journal.query("SELECT id FROM outbox WHERE destination = ? AND sop_uid = ?",
                             (destination, sop_uid))[0]["id"])


@pytest.fixture()
def journal(tmp_path: Path) -> Iterator[Journal]:
    """Job 1 (study 1.2.3): done, then requeued and done again (revision 2): its first SEG went to PACS, the
    second to PACS and, after an error, still pending for ARCHIVE. Job 2 (2.2): failed. Job 3 (3.3): queued."""
    journal = Journal(tmp_path / "journal.sqlite3", clock=Clock())
    _received(journal, "1.2.3")
    done = journal.queue_study("1.2.3", "quiet")
    assert done == 1
    _finish(journal, done, "9.1", ("PACS",), {"load": 1.0, "infer": 3.0})
    journal.mark_sent(_send(journal, "PACS", "9.1"), "stored")
    assert journal.requeue("1.2.3", "ops") == "job 1 (done) queued again"
    _finish(journal, done, "9.2", ("PACS", "ARCHIVE"), {"load": 1.0, "infer": 2.0})
    journal.mark_sent(_send(journal, "PACS", "9.2"), "stored")
    journal.mark_send_failed(_send(journal, "ARCHIVE", "9.2"), "ARCHIVE: association rejected", 30)
    _received(journal, "2.2")
    assert journal.fail_study("2.2", "stable", f"study 2.2 of {PATIENT_ID}: no t2f series") == 2
    _received(journal, "3.3")
    assert journal.queue_study("3.3", "quiet") == 3
    yield journal
    journal.close()


@pytest.fixture()
def serve(journal: Journal) -> Iterator[Serve]:
    """Start a web server on a free port (stopped after the test)."""
    servers: list[NodeWebServer] = []

    def start(access: WebAccess, healthy: Callable[[], dict[str, bool]] = lambda: {"scp": True},
              ready: Callable[[], dict[str, bool]] | None = None) -> NodeWebServer:
        server = NodeWebServer(journal, NodeMetrics(journal).registry, healthy, "127.0.0.1", 0, ready=ready,
                               access=access)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _get(server: NodeWebServer, path: str, authorization: str = f"Bearer {TOKEN}") -> tuple[int, Any]:
    """Status and body (parsed when JSON)."""
    code, headers, body = http_get(f"http://127.0.0.1:{server.port}{path}", authorization)
    return code, json.loads(body) if headers.get("Content-Type") == "application/json" else body.decode()


def _rows(page: str) -> dict[int, str]:
    """Job id -> its row of the status page's job table."""
    return {int(match[1]): match[0] for match in re.findall(r'(<tr class="job [^"]*" id="job-(\d+)">.*?</tr>)',
                                                            page, re.S)}


def test_the_probes_name_each_part_and_need_no_credentials(serve: Serve) -> None:
    health = {"scp": True, "loops": True}
    ready = {"model": True, "worker_heartbeat": True, "journal": True, "spool_space": True}
    server = serve(WebAccess(token=TOKEN), lambda: dict(health), lambda: dict(ready))
    assert _get(server, "/healthz", "") == (200, {"status": "ok", "scp": True, "loops": True})
    assert _get(server, "/readyz", "") == (200, {"status": "ok", **ready})
    ready["model"] = False
    assert _get(server, "/readyz", "") == (503, {"status": "unhealthy", **ready}), "names what fails"
    assert _get(server, "/healthz", "")[0] == 200, "not ready is still alive (no restart)"
    health["loops"] = False
    assert _get(server, "/healthz", "") == (503, {"status": "unhealthy", "scp": True, "loops": False})
    alone = serve(WebAccess(token=TOKEN), lambda: {"scp": False})
    assert _get(alone, "/readyz", "") == (503, {"status": "unhealthy", "scp": False}), \
        "without its own readiness check /readyz answers as /healthz"


def test_the_jobs_api_lists_every_study_with_its_state_and_deliveries(serve: Serve) -> None:
    code, jobs = _get(serve(WebAccess(token=TOKEN)), "/api/jobs?limit=ignored")
    assert code == 200
    assert [(j["id"], j["study_uid"], j["state"], j["trigger"]) for j in jobs] == [
        (3, "3.3", "ready", "quiet"), (2, "2.2", "failed", "stable"), (1, "1.2.3", "done", "requeued")]
    failed, done = jobs[1], jobs[2]
    assert failed["reason"] == "study 2.2 of ***12: no t2f series" and failed["attempts"] == 0
    assert (done["revision"], done["runs"], done["stage_times"]) == (2, 2, {"load": 1.0, "infer": 2.0})
    assert (done["instances"], done["calling_ae"], done["patient_id"], done["accession"]) == (1, "MODALITY", "***12",
                                                                                             "***20")
    assert (done["sent"], done["sends"], done["send_error"]) == (2, 3, "ARCHIVE: association rejected")
    assert [(d["destination"], d["sop_instance_uid"], d["state"], d["attempts"], d["error"])
            for d in done["deliveries"]] == [("PACS", "9.1", "sent", 0, None), ("PACS", "9.2", "sent", 0, None),
                                             ("ARCHIVE", "9.2", "pending", 1, "ARCHIVE: association rejected")]
    assert all(d["delivered"] for d in done["deliveries"][:2]) and done["deliveries"][2]["delivered"] is None


def test_the_status_page_shows_each_job_with_its_state_failures_and_deliveries(serve: Serve) -> None:
    code, page = _get(serve(WebAccess(token=TOKEN)), "/")
    assert code == 200
    rows = _rows(page)
    assert {job: re.search(r'class="job state-(\w+)"', row)[1] for job, row in rows.items()} == {  # type: ignore[index]
        1: "done", 2: "failed", 3: "ready"}
    assert '<td class="state">done (revision 2, supersedes the earlier result)</td>' in rows[1]
    assert "<code>1.2.3</code><br>***12 ***20" in rows[1], "the study with masked patient ID and accession"
    assert PATIENT_ID not in page and ACCESSION not in page
    assert "<b>PACS</b>" in rows[1] and "<b>ARCHIVE</b>" in rows[1] and "pending (attempt 2)" in rows[1]
    assert '<td class="reason">ARCHIVE: association rejected</td>' in rows[1], "a send error shows as the problem"
    failures = re.search(r'<ul id="failures">(.*?)</ul>', page, re.S)[1]  # type: ignore[index]
    assert failures == "<li>job 2 study <code>2.2</code>: study 2.2 of ***12: no t2f series</li>"
    counts = re.search(r'<p id="counts">(.*?)</p>', page)[1]  # type: ignore[index]
    assert "jobs_done: 1, jobs_failed: 1, jobs_ready: 1, outbox_pending: 1, outbox_sent: 2" in counts
    shown = _get(serve(WebAccess(token=TOKEN, show_phi=True)), "/")[1]
    assert f"<code>1.2.3</code><br>{PATIENT_ID} {ACCESSION}" in _rows(shown)[1], "shown when show_phi is on"


def test_with_authentication_off_every_page_is_open_and_phi_still_masked(serve: Serve) -> None:
    server = serve(WebAccess(auth=False))
    for path in ("/", "/index.html", "/api/jobs", "/metrics"):
        code, body = _get(server, path, "")
        assert code == 200, path
        assert PATIENT_ID not in str(body), path
    assert _get(server, "/jobs/1/preview.png", "")[0] == 403, "previews stay behind show_phi"


def test_credentials_that_are_not_configured_never_grant_access() -> None:
    basic_only = WebAccess(user="ops", password="pw")
    assert basic_only.allows(basic_auth("ops", "pw"))
    for header in ("Bearer ", "Bearer", basic_auth("ops", ""), basic_auth("", ""), basic_auth("anyone", ""), None):
        assert not basic_only.allows(header), header
    nothing = WebAccess()
    assert not any(nothing.allows(h) for h in ("Bearer ", basic_auth("", ""), None)), "auth on, no credential: closed"
    token_only = WebAccess(token=TOKEN)
    assert token_only.allows(f"bearer {TOKEN}") and token_only.allows(f"  Bearer   {TOKEN}  "), "scheme any case"
    assert not token_only.allows(basic_auth("", "")) and not token_only.allows(basic_auth(TOKEN, ""))


def test_unknown_paths_missing_previews_and_writes_are_refused(serve: Serve) -> None:
    server = serve(WebAccess(token=TOKEN, show_phi=True))
    assert _get(server, "/jobs/1/preview.png") == (404, "no preview\n"), "a job without a preview"
    assert _get(server, "/jobs/999/preview.png") == (404, "no preview\n"), "no such job"
    assert _get(server, "/jobs/x/preview.png") == (404, "not found\n")
    assert _get(server, "/api/jobs/1") == (404, "not found\n")
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/api/jobs", data=b'{"requeue": 2}',
                                     method="POST", headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 501, "the web pages change nothing"
    assert server.journal.job(2)["state"] == "failed"
