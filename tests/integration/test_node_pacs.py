"""The node end to end with real peers: dcmtk storescu and pynetdicom as modalities, the node as
``python -m app serve`` (threshold model), Orthanc as the PACS that receives the SEGs."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.support.node_peers import (
    NodeProcess,
    Orthanc,
    copy_as_new_study,
    send_study,
    storescu,
    wait_for,
    write_small_study,
)

# The load figure is 20 studies from 4 senders; CI runs a smaller number (benchmarks/bench_node.py: 20).
LOAD_STUDIES = int(os.environ.get("SEGMAMBA_LOAD_STUDIES", "4"))
SENDERS = 4


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("base") / "study"
    return write_small_study(folder, seed=201)


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("node")
    orthanc = Orthanc(root / "orthanc").start()
    node = NodeProcess(root / "node", orthanc, allowed_calling_aes="MODALITY,SENDER0,SENDER1,SENDER2,SENDER3",
                       inbox=root / "inbox", show_phi=True)
    node.start()
    yield node, orthanc
    node.stop()
    orthanc.stop()


def segs_by_study(orthanc: Orthanc) -> Counter[str]:
    return Counter(tag["StudyInstanceUID"] for tag in orthanc.segs())


def test_storescu_study_ends_as_seg_in_orthanc(peers: Any, base: Any) -> None:
    node, orthanc = peers
    folder = base.series[0].files[0].parent
    result = storescu(folder, node.port)
    assert result.returncode == 0, result.stdout + result.stderr
    [seg] = wait_for(lambda: [s for s in orthanc.segs() if s["StudyInstanceUID"] == base.study_instance_uid], 90,
                     "the SEG in Orthanc")
    t1c = base.by_description("AX T1 POST GAD")
    referenced = seg["ReferencedSeriesSequence"][0]
    assert referenced["SeriesInstanceUID"] == t1c.series_instance_uid
    reference_uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in t1c.files}
    assert {item["ReferencedSOPInstanceUID"] for item in referenced["ReferencedInstanceSequence"]} <= reference_uids
    def result_modalities() -> list[str]:
        studies = [s for s in orthanc.get("/studies?expand") or []
                   if s["MainDicomTags"]["StudyInstanceUID"] == base.study_instance_uid]
        return sorted(orthanc.get(f"/series/{series}")["MainDicomTags"]["Modality"]
                      for study in studies for series in study["Series"])

    assert wait_for(lambda: result_modalities() == ["SEG", "SR"], 30, "the SR beside the SEG"), \
        "only the results (the SEG and the SR of its volumes) go to the PACS, filed under the study they segment"

    [job] = wait_for(lambda: [j for j in node.jobs() if j["study_uid"] == base.study_instance_uid and j["sent"]], 10,
                     "the journal to record the acknowledgement")
    assert job["state"] == "done" and job["trigger"] == "quiet"
    assert job["sent"] == job["sends"] == 2, "the SEG and the SR"
    assert set(job["stage_times"]) == {"load", "select", "volume", "infer", "write"}
    audit = node.journal_rows(f"SELECT event, actor FROM audit WHERE study_uid = '{base.study_instance_uid}'")
    assert audit[0][0] == "study-first-instance" and audit[0][1].startswith("MODALITY@127.0.0.1")
    assert ("result-sent", "PACS") in audit


def test_load_from_concurrent_senders(peers: Any, base: Any, tmp_path: Path) -> None:
    node, orthanc = peers
    source = base.series[0].files[0].parent
    studies = [copy_as_new_study(source, tmp_path / f"s{n}", n) for n in range(LOAD_STUDIES)]
    failures: list[str] = []

    def sender(index: int) -> None:
        for n in range(index, LOAD_STUDIES, SENDERS):
            if index % 2:  # half the senders are dcmtk, half pynetdicom
                result = storescu(tmp_path / f"s{n}", node.port, calling=f"SENDER{index}")
                ok = result.returncode == 0
            else:
                ok = send_study(tmp_path / f"s{n}", node.port, calling=f"SENDER{index}")
            if not ok:
                failures.append(f"study {n} from SENDER{index}")

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    wait_for(lambda: set(studies) <= set(segs_by_study(orthanc)), 60 + 15 * LOAD_STUDIES, "every SEG in Orthanc")
    counts = segs_by_study(orthanc)
    assert [counts[uid] for uid in studies] == [1] * LOAD_STUDIES, "0 lost, 0 duplicated"
    # Orthanc stores a SEG a moment before the node journals the acknowledgement: wait for both.
    # Each study's results are its SEG and the SR of its volumes: one sent outbox row each.
    sent = "SELECT kind, COUNT(*) FROM outbox WHERE state = 'sent' GROUP BY kind ORDER BY kind"
    expected = [("seg", len(counts)), ("sr", len(counts))]
    wait_for(lambda: node.journal_rows(sent) == expected, 30, "every acknowledgement journalled")
    assert node.journal_rows("SELECT COUNT(*) FROM outbox")[0][0] == 2 * len(counts), "nothing sent twice"


def _bad_studies(base: Any, root: Path) -> dict[str, Path]:
    source = base.series[0].files[0].parent
    folders = {}
    non_mr = root / "non_mr"
    copy_as_new_study(source, non_mr, 900)
    for path in non_mr.iterdir():
        dataset = pydicom.dcmread(path)
        dataset.Modality = "CT"
        dataset.save_as(path)
    folders["non_mr"] = non_mr
    missing = root / "missing"
    copy_as_new_study(source, missing, 901)
    for path in missing.iterdir():
        if pydicom.dcmread(path, stop_before_pixels=True).SeriesDescription == "Ax T2 FLAIR":
            path.unlink()
    folders["missing"] = missing
    return folders


def test_bad_input_fails_clearly_and_the_node_stays_up(peers: Any, base: Any, tmp_path: Path) -> None:
    node, orthanc = peers
    folders = _bad_studies(base, tmp_path)
    non_mr_uid = str(pydicom.dcmread(next(folders["non_mr"].iterdir())).StudyInstanceUID)
    missing_uid = str(pydicom.dcmread(next(folders["missing"].iterdir())).StudyInstanceUID)
    for folder in folders.values():
        assert send_study(folder, node.port)

    unknown = storescu(folders["non_mr"], node.port, calling="STRANGER")
    assert unknown.returncode != 0 and "Association Rejected" in unknown.stdout + unknown.stderr
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n" + os.urandom(2000))
    inbox = node.settings["inbox"]
    good_file = sorted(base.series[0].files[0].parent.iterdir())[0].read_bytes()
    (inbox / "truncated.dcm").write_bytes(good_file[: len(good_file) - 500])
    (inbox / "garbage.dcm").write_bytes(os.urandom(3000))
    good = tmp_path / "good"
    good_uid = copy_as_new_study(base.series[0].files[0].parent, good, 902)
    for path in good.iterdir():  # a good study through the inbox
        shutil.copy(path, inbox / f".{path.name}")
        (inbox / f".{path.name}").rename(inbox / path.name)

    def finished() -> dict[str, Any]:
        jobs = {j["study_uid"]: j for j in node.jobs()}
        wanted = (non_mr_uid, missing_uid, good_uid)
        return jobs if all(jobs.get(uid, {}).get("state") in ("done", "failed") for uid in wanted) else {}

    jobs = wait_for(finished, 90, "the three jobs to finish")
    assert jobs[non_mr_uid]["state"] == "failed" and non_mr_uid in jobs[non_mr_uid]["reason"]
    assert "no MR series in the study (modalities found: CT)" in jobs[non_mr_uid]["reason"]
    assert jobs[missing_uid]["state"] == "failed" and jobs[missing_uid]["trigger"] == "stable"
    assert "t2f" in jobs[missing_uid]["reason"]
    assert jobs[good_uid]["state"] == "done"
    wait_for(lambda: segs_by_study(orthanc)[good_uid] == 1, 30, "the good study's SEG")
    quarantined = {record["source"]: record for record in (
        json.loads(path.read_text()) for path in (node.folder / "spool" / "quarantine").glob("*.json"))}
    assert "PixelData truncated" in quarantined["inbox:truncated.dcm"]["reason"]
    assert quarantined["inbox:garbage.dcm"]["status"] == "0xC000"
    assert not (inbox / "truncated.dcm").exists() and not (inbox / "garbage.dcm").exists()
    assert node.alive()
    request = urllib.request.Request(node.url + "/metrics", headers={"Authorization": f"Bearer {node.token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        metrics = response.read().decode()
    assert 'segmamba_job_failures_total{reason="SeriesSelectionError"}' in metrics
    assert 'segmamba_instances_received_total{result="refused"}' in metrics
    assert 'segmamba_instances_refused_total{status="0xC000"}' in metrics, "refusals by status"
    assert "segmamba_queue_depth" in metrics and 'segmamba_job_stage_seconds_count{stage="infer"}' in metrics


def test_status_page_in_headless_chromium(peers: Any) -> None:
    node, _orthanc = peers
    wait_for(lambda: any(j["state"] == "done" for j in node.jobs()), 90, "a finished job")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed; run tools/setup --dev"
    page = node.url.replace("http://", f"http://operator:{node.token}@") + "/"  # basic auth, token as password
    result = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom", page],
        capture_output=True, text=True, timeout=90,
    )
    dom = result.stdout
    assert 'id="jobs"' in dom and dom.count('class="job state-') >= 1, result.stderr[-2000:]
    assert "state-done" in dom and "state-failed" in dom
    loaded = [int(width) for width in re.findall(r'data-loaded="(\d+)"', dom)]
    assert loaded and min(loaded) > 0, "the preview images rendered (under the page's Content-Security-Policy)"
