"""The node's parts without the model: spool, journal, completion rules, retry policies, SCP intake."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from app.node.completion import CompletionChecker, CompletionPolicy, readiness
from app.node.executor import OOM, PERMANENT, TRANSIENT, after_out_of_memory, classify
from app.node.receive.intake import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, STUDY_LIMIT, Intake, Limits
from app.node.receive.storage_scp import ScpConfig, StorageSCP
from app.node.send.result_outputs import OutputFile, output_files
from app.node.send.result_sender import backoff
from app.node.state.journal import InstanceRecord, Journal
from app.node.state.retention import clean_spool
from app.node.state.spool import Spool, UnsafeUID, checked_uid
from operators.atomic_files import write_atomically
from operators.errors import StudyError
from operators.series_selection import SeriesSelectionError
from tests.support.node_peers import Clock, free_port, write_small_study


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("small") / "study"
    write_small_study(folder, seed=101)
    return folder


@pytest.mark.parametrize("uid", ["../../etc/passwd", "1.2.abc", "1.02.3", "", "1." + "2" * 70, "1.2/3", "1..2"])
def test_unsafe_uids_never_become_paths(uid: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeUID):
        Spool(tmp_path).instance_path(uid, "1.2.3")
    with pytest.raises(UnsafeUID):
        checked_uid(uid)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a" / "x.dcm"
    write_atomically(target, b"first")
    monkeypatch.setattr(os, "fsync", lambda _fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match="No space"):
        write_atomically(target, b"second")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["x.dcm"]


def _record(sop: str, study: str = "1.2.3", size: int = 10) -> InstanceRecord:
    return InstanceRecord(sop, study, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.4", "MR", Path(f"/x/{sop}"), size, "MOD")


def test_failed_study_reopens_when_more_instances_arrive(tmp_path: Path) -> None:
    """A study processed too early (e.g. stable timeout during a sender outage) fails; the rest arriving
    reopens it, and it is queued again under the same job."""
    journal = Journal(tmp_path / "j.sqlite3", clock=Clock())
    journal.record_instance(_record("1.1"))
    job_id = journal.queue_study("1.2.3", "stable")
    journal.claim_job()
    journal.fail_job(job_id, "SeriesSelectionError: no t2f series")
    assert journal.record_instance(_record("1.2"))
    assert journal.receiving_studies()[0]["study_uid"] == "1.2.3"
    assert journal.queue_study("1.2.3", "quiet") == job_id
    job = journal.job(job_id)
    assert (job["state"], job["attempts"], job["reason"]) == ("ready", 0, None)
    assert "study-reopened" in [r["event"] for r in journal.query("SELECT event FROM audit")]


def test_journal_states_and_outbox(tmp_path: Path) -> None:
    clock = Clock()
    journal = Journal(tmp_path / "j.sqlite3", clock=clock)
    assert journal.query("PRAGMA journal_mode")[0][0] == "wal"
    assert journal.record_instance(_record("1.1")) and journal.record_instance(_record("1.2"))
    assert not journal.record_instance(_record("1.1")), "a duplicate SOP Instance UID is recognised"
    assert journal.study_totals("1.2.3") == (2, 20)
    job_id = journal.queue_study("1.2.3", "quiet")
    assert job_id and journal.queue_study("1.2.3", "stable") is None, "one job per study"
    journal.record_instance(_record("1.3"))  # late instance: kept, audited, not a second job
    assert [r["event"] for r in journal.query("SELECT event FROM audit")][-1] == "late-instance"

    claimed = journal.claim_job()
    assert claimed["id"] == job_id and claimed["runs"] == 1 and journal.claim_job() is None
    assert journal.recover() == 1 and journal.job(job_id)["state"] == "ready"
    journal.claim_job()
    journal.retry_job(job_id, "RuntimeError: boom", delay=30)
    assert journal.claim_job() is None, "not before its retry delay"
    clock.now += 31
    again = journal.claim_job()
    assert (again["runs"], again["attempts"]) == (3, 1), "the restart used no attempt, the failure one"
    journal.finish_job(job_id, {"segmentation": "/s.dcm"}, {"infer": 1.0}, [("PACS", "/s.dcm", "9.9"), ("B", "/s.dcm",
                                                                                                          "9.9")])
    sends = journal.due_sends()
    assert [s["destination"] for s in sends] == ["PACS", "B"]
    journal.mark_send_failed(sends[1]["id"], "down", retry_in=10)
    journal.mark_sent(sends[0]["id"], "status 0x0000")
    assert [s["destination"] for s in journal.due_sends()] == []
    assert journal.counts()["outbox_sent"] == 1 and journal.counts()["outbox_pending"] == 1
    clock.now += 100
    assert journal.finished_before(clock.now) == [], "not finished while a result is pending"
    journal.mark_sent(sends[1]["id"], "status 0x0000")
    assert [j["id"] for j in journal.finished_before(clock.now)] == [job_id]


def test_claims_are_atomic_across_threads(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    for number in range(20):
        journal.record_instance(_record(f"1.{number}", study=f"2.{number}"))
        journal.queue_study(f"2.{number}", "quiet")
    claimed: list[int] = []

    def claim() -> None:
        while (job := journal.claim_job()) is not None:
            claimed.append(int(job["id"]))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(1, 21))


@pytest.mark.parametrize(
    ("first", "last", "now", "required", "expected"),
    [(0, 5, 6, True, None), (0, 5, 8, True, "quiet"), (0, 5, 8, False, None), (0, 5, 20, False, "stable"),
     (0, 99, 100, False, "forced"), (0, 99, 100, True, "forced")],
)
def test_readiness_rules(first: float, last: float, now: float, required: bool, expected: str | None) -> None:
    assert readiness(first, last, now, required, CompletionPolicy(quiet=2, stable=10, forced=100)) == expected


def test_completion_uses_the_series_selector(small_study: Path, tmp_path: Path) -> None:
    clock = Clock()
    spool, journal = Spool(tmp_path / "spool"), Journal(tmp_path / "j.sqlite3", clock=clock)
    intake = Intake(spool, journal)
    files = sorted(small_study.iterdir())
    flair = [p for p in files if pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription == "Ax T2 FLAIR"]
    for path in files:
        if path not in flair:
            assert intake.accept(path.read_bytes(), "MOD").ok
    checker = CompletionChecker(journal, CompletionPolicy(quiet=2, stable=10, forced=100), clock=clock)
    clock.now += 3
    assert checker.check() == [], "FLAIR missing: not ready at the quiet time"
    for path in flair:
        intake.accept(path.read_bytes(), "MOD")
    clock.now += 3
    [(_study, _job, trigger)] = checker.check()
    assert trigger == "quiet"


def test_silence_while_the_node_was_down_is_not_quiet(small_study: Path, tmp_path: Path) -> None:
    """A study whose sender was cut off by a node restart is not closed at once on restart: the quiet
    period starts again when the node listens, so the modality's resend of the rest comes in time."""
    clock = Clock()
    spool, journal = Spool(tmp_path / "spool"), Journal(tmp_path / "j.sqlite3", clock=clock)
    intake = Intake(spool, journal)
    for path in sorted(small_study.iterdir()):
        assert intake.accept(path.read_bytes(), "MOD").ok
    clock.now += 30  # the node was down for 30 s after the last instance
    checker = CompletionChecker(journal, CompletionPolicy(quiet=2, stable=10, forced=100), clock=clock)
    assert checker.check() == [], "not quiet: the node has listened for 0 s"
    clock.now += 3
    [(_study, _job, trigger)] = checker.check()
    assert trigger == "quiet"


def test_a_resend_keeps_a_receiving_study_open(small_study: Path, tmp_path: Path) -> None:
    """Instances sent again (a modality resuming from the start of the study) count as activity."""
    clock = Clock()
    spool, journal = Spool(tmp_path / "spool"), Journal(tmp_path / "j.sqlite3", clock=clock)
    intake = Intake(spool, journal)
    files = sorted(small_study.iterdir())
    for path in files:
        assert intake.accept(path.read_bytes(), "MOD").ok
    checker = CompletionChecker(journal, CompletionPolicy(quiet=2, stable=10, forced=100), clock=clock)
    clock.now += 1.5
    study = intake.accept(files[0].read_bytes(), "MOD").study_uid
    assert journal.touch_receiving(study)
    clock.now += 1.5
    assert checker.check() == [], "the resend 1.5 s ago keeps the study open"
    clock.now += 1
    assert [trigger for *_, trigger in checker.check()] == ["quiet"]
    assert not journal.touch_receiving(study), "a queued study is no longer receiving"


def test_failure_policies() -> None:
    assert classify(SeriesSelectionError("study 1: t2f missing")) == PERMANENT
    assert classify(StudyError("1.2", "truncated")) == PERMANENT
    assert classify(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")) == OOM
    assert classify(RuntimeError("NCCL hiccup")) == TRANSIENT
    assert after_out_of_memory(4, "cuda:0") == {"sw_batch_size": 2, "device": "cuda:0"}
    assert after_out_of_memory(1, "cuda:0") == {"sw_batch_size": 1, "device": "cpu"}
    assert after_out_of_memory(4, "cpu") is None
    assert [backoff(n, 1.0, 10.0) for n in range(6)] == [1, 2, 4, 8, 10, 10]


def test_retention_removes_only_old_finished_jobs(tmp_path: Path) -> None:
    clock = Clock()
    spool, journal = Spool(tmp_path / "spool"), Journal(tmp_path / "j.sqlite3", clock=clock)
    for number in (1, 2):
        study = f"1.2.{number}"
        spool.store_instance(study, "1.1", b"x")
        journal.record_instance(_record(f"1.{number}", study))
        journal.queue_study(study, "quiet")
        job = journal.claim_job()
        spool.job_dir(job["id"]).mkdir()
    journal.fail_job(1, "ValueError: bad")
    clock.now += 3600
    assert clean_spool(journal, spool, max_age_seconds=60) == 1
    assert not spool.study_dir("1.2.1").exists() and spool.study_dir("1.2.2").exists()


# --- the SCP in this process (no model): statuses a modality sees --------------------------------


@pytest.fixture()
def scp(tmp_path: Path) -> Any:
    spool, journal = Spool(tmp_path / "spool"), Journal(tmp_path / "spool" / "journal.sqlite3")
    intake = Intake(spool, journal, Limits(max_instances=1000, max_bytes=1 << 30))
    server = StorageSCP(ScpConfig("NODE", free_port(), "127.0.0.1", ("MODALITY",), 4), intake)
    server.start()
    yield server
    server.stop()
    journal.close()


def _send(server: StorageSCP, datasets: list[pydicom.Dataset], calling: str = "MODALITY") -> list[int] | None:
    ae = AE(calling)
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.config.port, ae_title="NODE")
    if not assoc.is_established:
        return None
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def test_scp_answers_success_only_when_stored(scp: StorageSCP, small_study: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = [pydicom.dcmread(p) for p in sorted(small_study.iterdir())[:3]]
    assert _send(scp, datasets[:1]) == [0]
    assert _send(scp, datasets[:1]) == [0], "a duplicate is acknowledged"
    assert len(list(scp.intake.spool.studies.rglob("*.dcm"))) == 1, "but stored once"

    def disk_full(*_args: Any) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scp.intake.spool, "store_instance", disk_full)
    assert _send(scp, datasets[1:2]) == [OUT_OF_RESOURCES]
    assert not scp.intake.journal.has_instance(str(datasets[1].SOPInstanceUID))
    monkeypatch.undo()

    bad = datasets[2].copy()
    bad.SOPInstanceUID = "1.2.3.../../../x"
    assert _send(scp, [bad]) == [CANNOT_UNDERSTAND]
    assert _send(scp, datasets[:1], calling="STRANGER") is None, "unknown calling AE rejected"


def test_scp_survives_garbage_and_enforces_the_study_limit(scp: StorageSCP, small_study: Path) -> None:
    with socket.create_connection(("127.0.0.1", scp.config.port), timeout=5) as sock:
        sock.sendall(os.urandom(4096))
        sock.settimeout(5)
        with contextlib.suppress(OSError):
            sock.recv(1024)
    ae = AE("MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.config.port, ae_title="NODE")
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()

    scp.intake.limits = Limits(max_instances=2, max_bytes=1 << 30)
    datasets = [pydicom.dcmread(p) for p in sorted(small_study.iterdir())[:3]]
    assert _send(scp, datasets) == [0, 0, STUDY_LIMIT], "a study over its limit: an error, not out of resources"


def test_truncated_and_malformed_files_are_refused(scp: StorageSCP, small_study: Path) -> None:
    data = sorted(small_study.iterdir())[0].read_bytes()
    assert scp.intake.accept(data[: len(data) // 2], "inbox:t.dcm").status == CANNOT_UNDERSTAND
    assert "truncated" in scp.intake.accept(data[: len(data) - 100], "inbox:t.dcm").reason
    assert scp.intake.accept(b"not dicom at all" * 20, "inbox:g").status == CANNOT_UNDERSTAND
    no_uid = pydicom.dcmread(sorted(small_study.iterdir())[0])
    del no_uid.StudyInstanceUID
    no_uid.SOPInstanceUID = generate_uid()
    path = small_study.parent / "no_uid.dcm"
    no_uid.save_as(path)
    assert "lacks StudyInstanceUID" in scp.intake.accept(path.read_bytes(), "inbox:n").reason


def test_outputs_take_their_uids_from_the_report_not_from_the_files(tmp_path: Path) -> None:
    seg = tmp_path / "seg.dcm"
    seg.write_bytes(b"not parsed: the result's report.json names the UIDs")
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"outputs": [{"kind": "seg", "files": ["seg.dcm"], "sop_class_uid": "1.2.840.1",
                                               "series_instance_uid": "1.2.3", "sop_instance_uids": ["1.2.3.4"]}]}))
    files = {"segmentation": str(seg), "report": str(report)}
    assert output_files(files) == [OutputFile("seg", seg, "1.2.3.4", "1.2.840.1", "1.2.3")]
    seg.unlink()
    with pytest.raises(ValueError, match=r"output seg .*seg\.dcm is not a readable DICOM instance"):
        output_files(files)
