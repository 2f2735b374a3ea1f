"""Delivery with real peers: C-STORE with Storage Commitment and STOW-RS to Orthanc (orthanc-dicomweb),
several destinations each with its own retry state, Orthanc stopped and restarted mid-way, reports
that fail or never come; every result committed exactly once. Journal, sender and SCP run in
this process; the last test runs the whole node (``python -m app serve``)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from app.node.executor import Outcome
from app.node.send.destinations import STOW, Destination
from app.node.send.result_outputs import output_files
from app.node.send.storage_commitment import COMMITMENT_INSTANCE, request_commitment
from app.node.state.journal import InstanceRecord, Journal
from app.node.state.spool import Spool
from app.node.worker import Worker
from tests.support.node_peers import (
    NODE_AET,
    DeliveryBench,
    NodeProcess,
    Orthanc,
    free_port,
    storescu,
    wait_for,
    write_instance,
    write_small_study,
)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[tuple[Orthanc, Orthanc, int]]:
    """A DIMSE PACS that commits (knows our AE for its reports) and a DICOMweb archive."""
    node_port = free_port()
    dimse = Orthanc(tmp_path / "pacs", modalities={"node": (NODE_AET, node_port)}).start()
    web = Orthanc(tmp_path / "web", aet="WEBPACS", dicomweb=True).start()
    yield dimse, web, node_port
    dimse.stop()
    web.stop()


def _bench(tmp_path: Path, dimse: Orthanc, web: Orthanc, node_port: int, **kwargs: Any) -> DeliveryBench:
    destinations = [Destination("PACS", dimse.aet, "127.0.0.1", dimse.dicom_port, storage_commitment=True),
                    Destination("WEB", type=STOW, url=web.stow_url)]
    bench = DeliveryBench(tmp_path / "node", destinations, node_port, **kwargs)  # node_port: where the PACS reports
    bench.scp.start()
    return bench


def test_commitment_and_stow_with_a_pacs_stopped_mid_way(tmp_path: Path, pacs: Any) -> None:
    dimse, web, node_port = pacs
    bench = _bench(tmp_path, dimse, web, node_port)
    try:
        first = bench.add_job()
        bench.deliver(30, "the first job delivered")
        dimse.stop()  # the PACS goes down mid-way; the DICOMweb archive stays up
        later = bench.add_job() + bench.add_job()
        for _ in range(3):
            bench.sender.send_due()
            time.sleep(0.3)
        rows = bench.journal.query("SELECT destination, state, attempts, last_error FROM outbox WHERE job_id > 1")
        assert {(r["destination"], r["state"]) for r in rows} == {("PACS", "pending"), ("WEB", "sent")}, \
            "each destination has its own retry state: the archive got its results while the PACS was down"
        assert all(r["attempts"] >= 1 and "PACS" in r["last_error"] for r in rows if r["destination"] == "PACS")
        dimse.start()
        bench.deliver(30, "every result delivered after the PACS restarted")
    finally:
        bench.scp.stop()
    uids = [str(ds.SOPInstanceUID) for ds in first + later]
    assert sorted(dimse.sop_instance_uids()) == sorted(uids), "each result stored once in the PACS"
    assert sorted(web.sop_instance_uids()) == sorted(uids), "each result stored once in the archive"
    committed = bench.audit("result-committed")
    assert committed == Counter({("PACS", uid): 1 for uid in uids}), "every result committed exactly once"
    rows = bench.journal.query("SELECT * FROM outbox")
    assert all(r["committed_at"] and r["stored_at"] <= r["committed_at"] for r in rows if r["destination"] == "PACS")
    assert all(r["committed_at"] is None and r["sent_at"] for r in rows if r["destination"] == "WEB"), \
        "STOW-RS: delivered when the response names the instance, no commitment"
    assert bench.events[("committed", "PACS")] == len(uids) and bench.events[("sent", "WEB")] == len(uids)


def test_no_report_within_the_timeout_resends_until_committed(tmp_path: Path, pacs: Any) -> None:
    dimse, web, node_port = pacs
    dimse.stop()
    dimse.configure({"node": (NODE_AET, free_port())})  # the PACS reports to a port nobody listens on
    dimse.start()
    bench = _bench(tmp_path, dimse, web, node_port, commitment_timeout=1.5)
    try:
        datasets = bench.add_job(outputs=3)

        def expired() -> bool:
            bench.sender.send_due()
            rows = bench.journal.query("SELECT attempts, last_error FROM outbox WHERE destination = 'PACS'")
            return all(r["attempts"] >= 1 and "no storage commitment report" in (r["last_error"] or "") for r in rows)

        wait_for(expired, 30, "the commitment deadline to pass and the results to be sent again")
        assert bench.states()["sent"] == 3, "STOW-RS results are delivered meanwhile"
        dimse.stop()
        dimse.configure({"node": (NODE_AET, node_port)})
        dimse.start()
        bench.deliver(30, "the results committed once the PACS can report")
    finally:
        bench.scp.stop()
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    assert sorted(dimse.sop_instance_uids()) == sorted(uids)
    assert bench.audit("result-committed") == Counter({("PACS", uid): 1 for uid in uids})
    assert min(bench.audit("result-stored").values()) >= 2, "stored again after the deadline"


def test_a_node_restart_while_waiting_for_reports(tmp_path: Path, pacs: Any) -> None:
    dimse, _web, node_port = pacs
    destinations = [Destination("PACS", dimse.aet, "127.0.0.1", dimse.dicom_port, storage_commitment=True)]
    before = DeliveryBench(tmp_path / "node", destinations, node_port, commitment_timeout=1.5)  # SCP not started
    datasets = before.add_job(outputs=2)
    before.sender.send_due()
    assert before.states() == Counter({"committing": 2}), "stored, waiting for the report"
    before.journal.close()  # the node stops; the PACS's report finds nobody listening
    after = DeliveryBench(tmp_path / "node", destinations, node_port, commitment_timeout=1.5)
    assert after.states() == Counter({"committing": 2}), "the wait survives the restart (journal rows)"
    after.scp.start()
    try:
        after.deliver(30, "the results sent again after the deadline and committed")
    finally:
        after.scp.stop()
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    assert sorted(dimse.sop_instance_uids()) == sorted(uids)
    assert after.audit("result-committed") == Counter({("PACS", uid): 1 for uid in uids})


def test_stow_token_file_is_read_at_every_send(tmp_path: Path, pacs: Any) -> None:
    _dimse, web, node_port = pacs
    token = tmp_path / "secrets" / "stow-token"
    bench = DeliveryBench(tmp_path / "node", [Destination("WEB", type=STOW, url=web.stow_url, token_file=token)],
                          node_port)
    [dataset] = bench.add_job(outputs=1)
    bench.sender.send_due()
    [row] = bench.journal.query("SELECT state, attempts, last_error FROM outbox")
    assert (row["state"], row["attempts"]) == ("pending", 1)
    assert f"token file {token} cannot be read" in row["last_error"], "the missing secret is named"
    token.parent.mkdir()
    token.write_text("s3cret\n")
    bench.deliver(20, "the result delivered once the token exists")
    assert web.sop_instance_uids() == [str(dataset.SOPInstanceUID)]


def test_a_superseded_result_awaiting_commitment_is_not_sent_again(tmp_path: Path, pacs: Any) -> None:
    dimse, _web, node_port = pacs
    destinations = [Destination("PACS", dimse.aet, "127.0.0.1", dimse.dicom_port, storage_commitment=True)]
    bench = DeliveryBench(tmp_path / "node", destinations, node_port, commitment_timeout=1.0)  # SCP not started
    [old] = bench.add_job(outputs=1)
    bench.sender.send_due()
    assert bench.states() == Counter({"committing": 1})
    study = str(old.StudyInstanceUID)
    bench.journal.record_instance(InstanceRecord(generate_uid(), study, generate_uid(), MRImageStorage, "MR",
                                                 tmp_path / "late.dcm", 1, "MODALITY"))  # reopens the study
    assert bench.journal.queue_study(study, "quiet")
    claimed = bench.journal.claim_job()
    new = write_instance(tmp_path / "revision2.dcm", study)
    assert bench.journal.finish_job(claimed["id"], {"segmentation": str(tmp_path / "revision2.dcm")}, {},
                                    [("PACS", str(tmp_path / "revision2.dcm"), str(new.SOPInstanceUID), "seg",
                                      MRImageStorage)], claimed["runs"])
    bench.scp.start()
    try:
        time.sleep(1.5)  # past the old row's commitment deadline
        wait_for(lambda: bench.sender.send_due() is not None and bench.states()["sent"] == 1, 20,
                 "the new revision committed")
    finally:
        bench.scp.stop()
    rows = {row["sop_uid"]: row["state"] for row in bench.journal.query("SELECT sop_uid, state FROM outbox")}
    assert rows == {str(old.SOPInstanceUID): "superseded", str(new.SOPInstanceUID): "sent"}
    assert bench.audit("result-stored")[("PACS", str(old.SOPInstanceUID))] == 1, "the old result is not resent"


def test_a_report_on_the_requesting_association(tmp_path: Path) -> None:
    """Orthanc reports on a new association; other PACS answer on the one that asked. pynetdicom plays
    such a PACS: it stores, answers the N-ACTION, then reports on the same association."""
    stored: dict[str, pydicom.Dataset] = {}

    def on_store(event: Any) -> int:
        stored[str(event.request.AffectedSOPInstanceUID)] = event.dataset
        return 0x0000

    def on_action(event: Any) -> tuple[int, None]:
        info = event.action_information

        def report() -> None:
            time.sleep(0.2)  # after the N-ACTION response
            answer = pydicom.Dataset()
            answer.TransactionUID = info.TransactionUID
            answer.ReferencedSOPSequence = [i for i in info.ReferencedSOPSequence
                                            if str(i.ReferencedSOPInstanceUID) in stored]
            event.assoc.send_n_event_report(answer, 1, StorageCommitmentPushModel, COMMITMENT_INSTANCE)

        threading.Thread(target=report, daemon=True).start()
        return 0x0000, None

    pacs = AE("SAMEPACS")
    pacs.add_supported_context(StorageCommitmentPushModel)
    pacs.add_supported_context(MRImageStorage)
    port = free_port()
    server = pacs.start_server(("127.0.0.1", port), block=False,
                               evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_N_ACTION, on_action)])
    try:
        bench = DeliveryBench(tmp_path / "node", [Destination("SAME", "SAMEPACS", "127.0.0.1", port,
                                                              storage_commitment=True)], free_port())
        datasets = bench.add_job(outputs=2)
        assert bench.sender.send_due() == 2
    finally:
        server.shutdown()
    assert bench.states() == Counter({"sent": 2}), "committed by the report on the requesting association"
    assert set(stored) == {str(ds.SOPInstanceUID) for ds in datasets}
    assert bench.audit("result-committed") == Counter({("SAME", uid): 1 for uid in stored})


def test_a_failed_commitment_is_sent_again(tmp_path: Path, pacs: Any) -> None:
    dimse, web, node_port = pacs
    bench = _bench(tmp_path, dimse, web, node_port)
    try:
        [dataset] = bench.add_job(outputs=1)
        uid = str(dataset.SOPInstanceUID)
        [row] = bench.journal.query("SELECT id FROM outbox WHERE destination = 'PACS'")
        # The row is marked stored but the PACS never got the file: its report names the instance as failed.
        transaction = generate_uid()
        bench.journal.mark_stored([row["id"]], transaction, 30, "test: not actually stored")
        request_commitment(bench.destinations[0], NODE_AET, transaction, [(MRImageStorage, uid)],
                           bench.sender.on_commitment_report)
        failed = wait_for(lambda: bench.journal.query("SELECT * FROM outbox WHERE id = ? AND state = 'pending'",
                                                      (row["id"],)), 20, "the failure report")
        assert "0x0112 no such object instance" in failed[0]["last_error"] and failed[0]["attempts"] == 1
        assert bench.audit("result-not-committed") == Counter({("PACS", uid): 1})
        bench.deliver(30, "the result sent again and committed")
    finally:
        bench.scp.stop()
    assert dimse.sop_instance_uids() == [uid]
    assert bench.audit("result-committed") == Counter({("PACS", uid): 1})


def test_node_delivers_to_pacs_with_commitment_and_to_stow_across_a_pacs_restart(tmp_path: Path) -> None:
    study = write_small_study(tmp_path / "study", seed=141)
    node_port = free_port()
    dimse = Orthanc(tmp_path / "pacs", modalities={"node": ("SEGMAMBA", node_port)}).start()
    web = Orthanc(tmp_path / "web", aet="WEBPACS", dicomweb=True).start()
    token = tmp_path / "stow-token"
    token.write_text("not-checked-by-orthanc\n")
    node = NodeProcess(tmp_path / "node", None, allowed_calling_aes="MODALITY,ORTHANC", show_phi=True,
                       commitment_timeout=20)
    node.port = node_port
    node.destinations = [f"PACS={dimse.aet}@127.0.0.1:{dimse.dicom_port}+commit",
                         f"WEB={web.stow_url}+token={token}"]
    try:
        node.start()
        dimse.stop()  # the PACS is down when the result is ready
        result = storescu(study.series[0].files[0].parent, node.port)
        assert result.returncode == 0, result.stdout + result.stderr

        def waiting() -> Any:
            jobs = [j for j in node.jobs() if j["study_uid"] == study.study_instance_uid and j["state"] == "done"]
            states = {d["destination"]: d for d in jobs[0]["deliveries"]} if jobs else {}
            return states if states.get("WEB", {}).get("delivered") and states.get("PACS", {}).get("error") else None

        states = wait_for(waiting, 120, "the archive served while the PACS is down")
        assert states["PACS"]["state"] == "pending" and states["PACS"]["attempts"] >= 1
        dimse.start()

        def delivered() -> Any:
            jobs = [j for j in node.jobs() if j["study_uid"] == study.study_instance_uid]
            return jobs if jobs and jobs[0]["sends"] and jobs[0]["sent"] == jobs[0]["sends"] else None

        [job] = wait_for(delivered, 120, "the result delivered to both destinations")
        by_destination = {d["destination"]: d for d in job["deliveries"]}
        assert by_destination["PACS"]["committed"] and by_destination["PACS"]["state"] == "sent"
        assert by_destination["WEB"]["delivered"] and by_destination["WEB"]["committed"] is None
        assert {d["kind"] for d in job["deliveries"]} >= {"seg"}
        [seg_uid] = {d["sop_instance_uid"] for d in job["deliveries"] if d["kind"] == "seg"}
        assert dimse.sop_instance_uids().count(seg_uid) == 1 and web.sop_instance_uids().count(seg_uid) == 1
        outputs = json.loads(node.journal_rows(f"SELECT outputs FROM jobs WHERE id = {job['id']}")[0][0])

        def recorded() -> Any:
            delivery = json.loads(Path(outputs["report"]).read_text()).get("delivery") or []
            found = {d["destination"]: d for d in delivery}
            return found if found.get("PACS", {}).get("committed") and found.get("WEB", {}).get("delivered") else None

        in_report = wait_for(recorded, 10, "report.json to record where the result went")
        assert in_report["PACS"]["address"] == f"{dimse.aet}@127.0.0.1:{dimse.dicom_port}"
        assert in_report["WEB"]["committed"] is None and in_report["WEB"]["address"] == web.stow_url
        request = urllib.request.Request(node.url + "/", headers={"Authorization": f"Bearer {node.token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            page = response.read().decode()
        assert "<b>PACS</b>" in page and "committed" in page and "<b>WEB</b>" in page
    finally:
        node.stop()
        dimse.stop()
        web.stop()


def test_every_listed_output_is_delivered_else_the_segmentation(tmp_path: Path) -> None:
    study = generate_uid()
    seg, sr, sc1, sc2 = (write_instance(tmp_path / name, study) for name in ("seg.dcm", "sr.dcm", "sc1.dcm", "sc2.dcm"))
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"outputs": [
        {"kind": "seg", "files": ["seg.dcm"]}, {"kind": "sr", "files": ["sr.dcm"]},
        {"kind": "sc", "files": ["sc1.dcm", str(tmp_path / "sc2.dcm")]}]}))
    files = {"segmentation": str(tmp_path / "seg.dcm"), "report": str(report)}
    listed = output_files(files)
    assert [(o.kind, o.sop_uid) for o in listed] == [("seg", seg.SOPInstanceUID), ("sr", sr.SOPInstanceUID),
                                                     ("sc", sc1.SOPInstanceUID), ("sc", sc2.SOPInstanceUID)]
    report.write_text(json.dumps({"volumes": {}}))
    assert [(o.kind, o.sop_uid) for o in output_files(files)] == [("seg", seg.SOPInstanceUID)], "today's outputs"
    report.write_text(json.dumps({"outputs": [{"kind": "sr", "files": ["missing.dcm"]}]}))
    with pytest.raises(ValueError, match=r"output sr .*missing\.dcm is not a readable DICOM instance"):
        output_files(files)


class _Finished:
    """Stands in for the worker's child process: the job's outputs are already written."""

    def __init__(self, files: dict[str, str]) -> None:
        self.files = files

    def run(self, *_args: Any, **_kwargs: Any) -> Outcome:
        return Outcome("ok", files=self.files, stage_times={"infer": 0.1})


def test_the_worker_queues_every_output_for_every_destination(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path)
    study = generate_uid()
    journal.record_instance(InstanceRecord(generate_uid(), study, generate_uid(), MRImageStorage, "MR",
                                           tmp_path / "x.dcm", 1, "MODALITY"))
    job_id = journal.queue_study(study, "quiet")
    out = tmp_path / "out"
    out.mkdir()
    written = {name: write_instance(out / f"{name}.dcm", study) for name in ("seg", "sr", "sc1", "sc2")}
    (out / "report.json").write_text(json.dumps({"outputs": [
        {"kind": "seg", "files": ["seg.dcm"]}, {"kind": "sr", "files": ["sr.dcm"]},
        {"kind": "sc", "files": ["sc1.dcm", "sc2.dcm"]}]}))
    destinations = [Destination("PACS", "ORTHANC", "127.0.0.1", 104, storage_commitment=True),
                    Destination("WEB", type=STOW, url="http://127.0.0.1:1/dicom-web")]
    files = {"segmentation": str(out / "seg.dcm"), "report": str(out / "report.json")}
    worker = Worker(journal, spool, _Finished(files), destinations, 60, 2)  # type: ignore[arg-type]
    assert worker.run_one()
    rows = journal.query("SELECT destination, kind, sop_uid, sop_class FROM outbox WHERE job_id = ? ORDER BY id",
                         (job_id,))
    expected = [(d, kind, str(written[name].SOPInstanceUID), MRImageStorage) for d in ("PACS", "WEB")
                for name, kind in (("seg", "seg"), ("sr", "sr"), ("sc1", "sc"), ("sc2", "sc"))]
    assert [tuple(row) for row in rows] == expected
