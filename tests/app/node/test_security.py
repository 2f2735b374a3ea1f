"""Who gets in: TLS misconfiguration refuses to start, called/calling AE titles, idle connections
cannot starve intake, web authentication, security headers, PHI masking, no PatientName in logs."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification  # type: ignore[attr-defined]

from app.config import Settings
from app.node.metrics import NodeMetrics
from app.node.receive.intake import Intake
from app.node.receive.storage_scp import ScpConfig, StorageSCP, scp_ssl_context, server_ssl_context
from app.node.send.storage_scu import client_ssl_context
from app.node.state.journal import InstanceRecord, Journal
from app.node.state.spool import Spool
from app.node.web import NodeWebServer, WebAccess, mask, web_access
from operators.errors import ConfigurationError
from tests.support.node_peers import REPO, basic_auth, free_port, http_get, write_small_study

PATIENT_ID, ACCESSION, PATIENT_NAME = "PID-4471-0923", "ACC-99812", "Doe^Jane"


@pytest.fixture(scope="module")
def mr_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mr") / "study"
    write_small_study(folder, seed=401, roles=("t1c",))
    path = sorted(folder.iterdir())[0]
    dataset = pydicom.dcmread(path)
    dataset.PatientName, dataset.PatientID, dataset.AccessionNumber = PATIENT_NAME, PATIENT_ID, ACCESSION
    dataset.save_as(path)
    return path


# --- TLS: misconfiguration refuses to start -------------------------------------------------------


def test_tls_misconfiguration_is_a_clear_configuration_error(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    cert, key = certificate
    assert scp_ssl_context(None, None, None, False) is None, "no TLS setting: plain DICOM"
    with pytest.raises(ConfigurationError, match="tls_cert is set but tls_key is not"):
        scp_ssl_context(cert, None, None, False)
    with pytest.raises(ConfigurationError, match="tls_key is set but tls_cert is not"):
        scp_ssl_context(None, key, None, False)
    with pytest.raises(ConfigurationError, match="tls_require_client_cert is set but TLS is not"):
        scp_ssl_context(None, None, None, True)
    with pytest.raises(ConfigurationError, match="needs tls_ca"):
        scp_ssl_context(cert, key, None, True)
    with pytest.raises(ConfigurationError, match=f"tls_key {tmp_path / 'missing.pem'} cannot be read"):
        scp_ssl_context(cert, tmp_path / "missing.pem", None, False)
    with pytest.raises(ConfigurationError, match="cannot be read"):
        scp_ssl_context(cert, tmp_path, None, False)  # a folder, not a file
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigurationError, match="not a PEM certificate with its private key"):
        scp_ssl_context(garbage, key, None, False)
    with pytest.raises(ConfigurationError, match="not a PEM certificate with its private key"):
        scp_ssl_context(key, cert, None, False)  # swapped
    with pytest.raises(ConfigurationError, match=r"tls_ca .* not a PEM CA bundle"):
        scp_ssl_context(cert, key, garbage, True)


def test_serve_refuses_to_start_on_a_certificate_without_key(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "app", "serve", "--tls-cert", str(certificate[0]), "--port", str(port),
         "--http-port", "0", "--spool", str(tmp_path / "spool")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "ERROR configuration: tls_cert is set but tls_key is not: refusing to start without TLS" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


# --- the SCP: AE titles, starvation -----------------------------------------------------------------


@pytest.fixture()
def journal(tmp_path: Path) -> Any:
    journal = Journal(Spool(tmp_path / "spool").journal_path)
    yield journal
    journal.close()


def _scp(tmp_path: Path, journal: Journal, **config: Any) -> StorageSCP:
    base = ScpConfig("NODE", free_port(), "127.0.0.1", ("MODALITY",))
    scp = StorageSCP(replace(base, **config), Intake(Spool(tmp_path / "spool"), journal))
    scp.start()
    return scp


def _associate(scp: StorageSCP, called: str = "NODE", calling: str = "MODALITY", tls: Any = None) -> Any:
    ae = AE(calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage)
    ae.acse_timeout = 10
    return ae.associate("127.0.0.1", scp.config.port, ae_title=called, tls_args=(tls, None) if tls else None)


def _echo_seconds(scp: StorageSCP, **kwargs: Any) -> float:
    started = time.monotonic()
    assoc = _associate(scp, **kwargs)
    assert assoc.is_established, "the real sender got in"
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()
    return time.monotonic() - started


def test_called_and_calling_ae_titles_are_checked(tmp_path: Path, journal: Journal) -> None:
    scp = _scp(tmp_path, journal)
    try:
        wrong_called = _associate(scp, called="SOMEONE")
        assert wrong_called.is_rejected
        reject = wrong_called.acceptor.primitive
        assert (reject.result, reject.result_source, reject.diagnostic) == (1, 1, 7), \
            "rejected-permanent, service user, called AE title not recognised"
        wrong_calling = _associate(scp, calling="STRANGER")
        assert wrong_calling.is_rejected and wrong_calling.acceptor.primitive.diagnostic == 3
        assert _echo_seconds(scp) < 5
    finally:
        scp.stop()


def _idle(address: tuple[str, int], source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(address)
    sock.settimeout(10)
    return sock


def test_idle_connections_do_not_starve_a_real_sender(tmp_path: Path, journal: Journal) -> None:
    scp = _scp(tmp_path, journal, request_timeout=2.0)
    try:
        baseline = _echo_seconds(scp)
        with ExitStack() as stack:
            idle = [stack.enter_context(_idle(("127.0.0.1", scp.config.port))) for _ in range(8)]
            time.sleep(0.3)
            loaded = _echo_seconds(scp)
            assert loaded - baseline < 2.0, f"8 idle connections added {loaded - baseline:.2f} s"
            started = time.monotonic()
            assert idle[0].recv(16) == b"", "the idle connection is closed"
            assert time.monotonic() - started < 4.0, "within the request timeout"
    finally:
        scp.stop()


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(0.5)
    try:
        return sock.recv(16) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_one_address_cannot_take_every_slot(tmp_path: Path, journal: Journal) -> None:
    scp = _scp(tmp_path, journal, max_per_peer=4, max_associations=8, request_timeout=10.0)
    try:
        with ExitStack() as stack:
            flood = [stack.enter_context(_idle(("127.0.0.1", scp.config.port), "127.0.0.2")) for _ in range(12)]
            time.sleep(0.5)
            assert [_closed(sock) for sock in flood] == [False] * 4 + [True] * 8, \
                "connections beyond the per-peer limit are closed at once"
            assert _echo_seconds(scp) < 2.0, "another address still gets in"
        time.sleep(0.5)
        with _idle(("127.0.0.1", scp.config.port), "127.0.0.2") as again:
            assert not _closed(again), "connections the peer closed are not counted any more"
    finally:
        scp.stop()


def test_an_idle_connection_does_not_block_tls_intake(certificate: tuple[Path, Path], tmp_path: Path,
                                                      journal: Journal) -> None:
    cert, key = certificate
    scp = _scp(tmp_path, journal, ssl_context=server_ssl_context(cert, key, None, False), request_timeout=3.0)
    try:
        with _idle(("127.0.0.1", scp.config.port)):  # TCP only: no TLS handshake ever
            time.sleep(0.3)
            assert _echo_seconds(scp, tls=client_ssl_context(cert)) < 2.0, "the handshake is not in the accept loop"
        plain = _associate(scp)
        assert not plain.is_established, "no plain DICOM on the TLS port"
    finally:
        scp.stop()


def test_logs_carry_no_patient_name(tmp_path: Path, journal: Journal, mr_file: Path,
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    scp = _scp(tmp_path, journal)
    try:
        dataset = pydicom.dcmread(mr_file)
        assoc = _associate(scp)
        assert int(assoc.send_c_store(dataset).Status) == 0
        dataset.SeriesDescription = "changed"  # a conflicting instance: refused, logged, audited
        assert int(assoc.send_c_store(dataset).Status) == 0xC001
        del dataset.StudyInstanceUID
        dataset.SOPInstanceUID = "1.2.3.4.5"
        assert int(assoc.send_c_store(dataset).Status) == 0xA900
        assoc.release()
    finally:
        scp.stop()
    assert "refused" in caplog.text
    assert "Doe" not in caplog.text and "Jane" not in caplog.text


# --- the web server ---------------------------------------------------------------------------------


@pytest.fixture()
def web_journal(tmp_path: Path) -> Any:
    journal = Journal(tmp_path / "web.sqlite3")
    record = InstanceRecord("1.2.3.1", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.4", "MR", Path("/x"), 10,
                            "MODALITY", PATIENT_ID, ACCESSION)
    journal.record_instance(record)
    job_id = journal.queue_study("1.2.3", "quiet")
    journal.claim_job()
    preview = tmp_path / "preview.png"
    preview.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    journal.finish_job(job_id, {"preview": str(preview)}, {"infer": 1.0}, [])
    journal.record_instance(replace(record, sop_uid="2.1", study_uid="2.2"))
    failed = journal.queue_study("2.2", "stable")
    journal.claim_job()
    journal.fail_job(failed, f"study 2.2 ({ACCESSION}): no t2f series")
    yield journal
    journal.close()


def _server(journal: Journal, access: WebAccess) -> NodeWebServer:
    server = NodeWebServer(journal, NodeMetrics(journal).registry, lambda: {"scp": True}, "127.0.0.1", 0,
                           access=access)
    server.start()
    return server


def _get(server: NodeWebServer, path: str, authorization: str = "") -> tuple[int, dict[str, str], bytes]:
    return http_get(f"http://127.0.0.1:{server.port}{path}", authorization)


def test_web_pages_need_authentication_and_send_security_headers(web_journal: Journal) -> None:
    server = _server(web_journal, WebAccess(token="s3cret-token", user="ops", password="pw"))
    try:
        for path in ("/", "/api/jobs", "/metrics", "/jobs/1/preview.png", "/nothing"):
            code, headers, _body = _get(server, path)
            assert code == 401, path
            assert 'Basic realm="SegMamba node"' in headers["WWW-Authenticate"]
        for authorization in ("Bearer wrong", basic_auth("ops", "nope"), basic_auth("x", "s3cret-tokenX"), "Basic !!",
                              "s3cret-token"):
            assert _get(server, "/api/jobs", authorization)[0] == 401, authorization
        for authorization in ("Bearer s3cret-token", basic_auth("ops", "pw"), basic_auth("anyone", "s3cret-token")):
            assert _get(server, "/api/jobs", authorization)[0] == 200, authorization
        assert _get(server, "/healthz")[0] == 200, "the liveness probe stays open"
        code, headers, body = _get(server, "/", "Bearer s3cret-token")
        assert code == 200
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        nonce = headers["Content-Security-Policy"].split("'nonce-")[1].split("'")[0]
        assert f'<script nonce="{nonce}">' in body.decode(), "the page's only script carries the nonce"
        assert "onload=" not in body.decode(), "no inline event handlers (blocked by the CSP)"
        for header, value in (("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
                              ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store")):
            assert headers[header] == value
            assert _get(server, "/healthz")[1][header] == value
            assert _get(server, "/api/jobs")[1][header] == value, "also on the 401"
        assert "Python" not in headers.get("Server", "")
    finally:
        server.stop()


def test_phi_is_masked_unless_configured(web_journal: Journal) -> None:
    server = _server(web_journal, WebAccess(token="t"))
    try:
        for path in ("/", "/api/jobs", "/metrics"):
            body = _get(server, path, "Bearer t")[2].decode()
            assert PATIENT_ID not in body and ACCESSION not in body, path
        jobs = json.loads(_get(server, "/api/jobs", "Bearer t")[2])
        assert {job["patient_id"] for job in jobs} == {mask(PATIENT_ID)} == {"***23"}
        assert {job["accession"] for job in jobs} == {"***12"}
        assert [job["reason"] for job in jobs if job["state"] == "failed"] == ["study 2.2 (***12): no t2f series"]
        assert all(job["preview"] is None for job in jobs)
        assert "<img" not in _get(server, "/", "Bearer t")[2].decode()
        assert _get(server, "/jobs/1/preview.png", "Bearer t")[0] == 403
    finally:
        server.stop()
    server = _server(web_journal, WebAccess(token="t", show_phi=True))
    try:
        jobs = json.loads(_get(server, "/api/jobs", "Bearer t")[2])
        assert {job["patient_id"] for job in jobs} == {PATIENT_ID}
        code, headers, body = _get(server, "/jobs/1/preview.png", "Bearer t")
        assert code == 200 and body.startswith(b"\x89PNG") and headers["Cache-Control"] == "no-store"
        assert 'src="/jobs/1/preview.png"' in _get(server, "/", "Bearer t")[2].decode()
        assert PATIENT_ID not in _get(server, "/metrics", "Bearer t")[2].decode(), "/metrics never has PHI"
    finally:
        server.stop()


def test_web_access_policy_from_settings(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = Settings(spool=tmp_path)
    generated = web_access(settings, tmp_path)
    token_file = tmp_path / "http-token"
    assert generated.auth and len(generated.token) >= 32 and token_file.read_text().strip() == generated.token
    assert token_file.stat().st_mode & 0o077 == 0, "only the node's user may read the token"
    assert str(token_file) in caplog.text and generated.token not in caplog.text, "the path is logged, not the token"
    assert web_access(settings, tmp_path).token == generated.token, "reused across restarts"
    assert web_access(replace(settings, http_token="chosen"), tmp_path).token == "chosen"
    basic = web_access(replace(settings, http_user="ops", http_password="pw"), tmp_path / "x")
    assert (basic.user, basic.token) == ("ops", "") and not (tmp_path / "x" / "http-token").exists()
    with pytest.raises(ConfigurationError, match="go together"):
        web_access(replace(settings, http_user="ops"), tmp_path)
    with pytest.raises(ConfigurationError, match=r"http_auth is off but http_bind is 0\.0\.0\.0"):
        web_access(replace(settings, http_auth=False, http_bind="0.0.0.0"), tmp_path)
    assert not web_access(replace(settings, http_auth=False), tmp_path).auth, "off on loopback: allowed"


def test_encoded_status_comment_is_a_valid_lo(tmp_path: Path, journal: Journal, mr_file: Path) -> None:
    scp = _scp(tmp_path, journal)
    try:
        dataset = pydicom.dcmread(mr_file)
        dataset.PixelData = dataset.PixelData[:-10]
        assoc = _associate(scp)
        answer = assoc.send_c_store(dataset)
        assoc.release()
    finally:
        scp.stop()
    assert int(answer.Status) == 0xC000
    comment = str(answer.ErrorComment)
    assert comment.startswith("PixelData truncated") and len(comment) <= 64 and "\\" not in comment
