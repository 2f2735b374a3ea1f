"""Crashes and outages: the node SIGKILLed during intake, processing and sending, and Orthanc down
while results are due; after restarts every accepted study ends as exactly one SEG in Orthanc."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.node_peers import NodeProcess, Orthanc, copy_as_new_study, send_study, wait_for, write_small_study


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("faults") / "study"
    write_small_study(folder, seed=301)
    return folder


def seg_counts(orthanc: Orthanc) -> Counter[str]:
    return Counter(tag["StudyInstanceUID"] for tag in orthanc.segs())


def test_kill_during_intake_processing_and_sending_with_pacs_down(source: Path, tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path / "orthanc")  # the PACS is down until the end
    # stable_seconds well above a loaded machine's restart-to-resend gap: the half study must not be closed
    # as stable before the modality's resend arrives (that ran it a third time, as a stale revision).
    node = NodeProcess(tmp_path / "node", orthanc, stable_seconds=30).start()
    try:
        study = copy_as_new_study(source, tmp_path / "a", 1)
        instances = len(list((tmp_path / "a").iterdir()))

        assert send_study(tmp_path / "a", node.port, stop_after=instances // 2)
        node.kill()  # during intake: half the study received
        node.start()
        assert send_study(tmp_path / "a", node.port), "the modality sends the whole study again"

        wait_for(lambda: node.journal_rows("SELECT 1 FROM jobs WHERE state = 'processing'"), 60, "processing",
                 every=0.05)
        node.kill()  # during processing
        node.start()

        wait_for(lambda: node.journal_rows("SELECT 1 FROM outbox WHERE state = 'pending' AND attempts >= 2"), 60,
                 "failed sends while the PACS is down")
        node.kill()  # during sending (retrying with back-off)
        node.start()
        time.sleep(2)  # results due, still undeliverable

        orthanc.start()
        wait_for(lambda: seg_counts(orthanc)[study] >= 1, 60, "the SEG once the PACS is back")
        time.sleep(2)  # a duplicate send would arrive now
        assert seg_counts(orthanc) == Counter({study: 1})
        assert node.journal_rows(f"SELECT COUNT(*) FROM instances WHERE study_uid = '{study}'") == [(instances,)]
        [(state, attempts, runs)] = node.journal_rows("SELECT state, attempts, runs FROM jobs")
        assert (state, runs) == ("done", 2), "processing restarted once after the kill"
        assert attempts == 0, "a restart of the node uses none of the job's attempts"
        wait_for(lambda: node.journal_rows("SELECT kind, state FROM outbox ORDER BY kind")
                 == [("seg", "sent"), ("sr", "sent")], 10, "the acknowledgements of the SEG and the SR")
        events = [row[0] for row in node.journal_rows("SELECT event FROM audit ORDER BY id")]
        assert events.count("recovered") == 1 and events.count("result-sent") == 2, "each output sent once"
    finally:
        node.kill()
        orthanc.stop()


def test_random_kills_lose_nothing_and_duplicate_nothing(source: Path, tmp_path: Path) -> None:
    """Ten SIGKILLs at random moments while three studies arrive, are processed and sent."""
    orthanc = Orthanc(tmp_path / "orthanc").start()
    node = NodeProcess(tmp_path / "node", orthanc, quiet_seconds=1.0).start()
    rng = random.Random(5)
    studies = [copy_as_new_study(source, tmp_path / f"s{n}", 10 + n) for n in range(3)]
    sent: list[str] = []

    def modality() -> None:  # resends a study until every instance is acknowledged, as modalities do
        for n, uid in enumerate(studies):
            while not send_study(tmp_path / f"s{n}", node.port):
                time.sleep(0.3)
            sent.append(uid)

    sender = threading.Thread(target=modality)
    sender.start()
    try:
        for _ in range(10):
            time.sleep(rng.uniform(0.3, 3.0))
            node.kill()
            node.start()
        sender.join(timeout=240)  # generous: each restart re-imports MONAI, and each result is a SEG and an SR now
        assert sent == studies
        wait_for(lambda: set(studies) <= set(seg_counts(orthanc)), 240, "every SEG")
        time.sleep(2)
        assert seg_counts(orthanc) == Counter(dict.fromkeys(studies, 1)), "each study exactly once"
    finally:
        node.kill()
        orthanc.stop()



def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_worker_dies_with_the_node_and_temporaries_go_at_start(tmp_path: Path) -> None:
    """SIGKILL of the node process alone (not its group) takes the worker child with it; a restart
    removes temporary files that interrupted receives left in the spool."""
    node = NodeProcess(tmp_path / "node", None).start()
    try:
        wait_for(lambda: (node.ready() or {}).get("model"), 120, "the worker's model")
        assert node.process is not None
        workers = [c for c in _children(node.process.pid) if "python" in Path(f"/proc/{c}/cmdline").read_text()]
        assert workers, "the worker child runs"
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=10)
        wait_for(lambda: not any(_running(w) for w in workers), 10, "the worker to die with its parent")
        node.process = None
        leftover = node.folder / "spool" / "studies" / "1.2.3" / ".4.5.dcm.0123abcd.tmp"
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half a C-STORE")
        node.start()
        assert not leftover.exists(), "temporary file of an interrupted receive removed at start"
    finally:
        node.kill()


def test_retention_prunes_journal_rows_of_purged_studies(tmp_path: Path) -> None:
    from app.node.state.journal import InstanceRecord, Journal
    from app.node.state.retention import clean_spool, remove_temporaries
    from app.node.state.spool import Spool

    now = [1000.0]
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path, clock=lambda: now[0])
    for number in (1, 2):
        study = f"1.2.{number}"
        path = spool.store_instance(study, f"1.1.{number}", b"x")
        journal.record_instance(InstanceRecord(f"1.1.{number}", study, "1.3", "1.2.840.10008.5.1.4.1.1.4", "MR", path,
                                               1, "MOD", patient_id=f"PAT{number}"))
        job_id = journal.queue_study(study, "quiet")
        run = journal.claim_job()["runs"]
        journal.finish_job(job_id, {"segmentation": "s"}, {}, [], run)
        now[0] += 3600  # study 1 finished an hour before study 2
    now[0] -= 3600 - 60
    (spool.study_dir("1.2.2") / ".x.dcm.abc.tmp").write_bytes(b"partial")
    assert clean_spool(journal, spool, max_age_seconds=1800) == 1
    assert not spool.study_dir("1.2.1").exists() and spool.study_dir("1.2.2").exists()
    for table in ("instances", "studies", "jobs"):
        assert [r[0] for r in journal.query(f"SELECT study_uid FROM {table}")] == ["1.2.2"], table
    audit = journal.query("SELECT event, detail FROM audit WHERE study_uid = '1.2.1'")
    assert [r["event"] for r in audit] == ["study-purged"] and "PAT1" not in audit[0]["detail"]
    assert remove_temporaries(spool) == 1 and [p.name for p in spool.study_dir("1.2.2").iterdir()] == ["1.1.2.dcm"]
