"""Completeness before processing: a selected series with a gap (by its headers) is not processed
until the rest arrives (or the forced timeout fails it); instances arriving after a result make the
study reprocess, and the new SEG supersedes the old one in the PACS (same series, next instance)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pydicom
import pytest

from app.node.completion import CompletionPolicy, readiness, series_gap
from app.node.state.journal import InstanceRecord, Journal
from tests.support.node_peers import NodeProcess, Orthanc, copy_as_new_study, send_study, wait_for, write_small_study

FLAIR = "Ax T2 FLAIR"


def _slices(zs: list[float], numbers: list[int] | None = None, **extra: object) -> list[pydicom.Dataset]:
    headers = []
    for index, z in enumerate(zs):
        ds = pydicom.Dataset()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.InstanceNumber = (numbers or list(range(1, len(zs) + 1)))[index]
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        headers.append(ds)
    return headers


def test_series_gap_reads_what_the_headers_say() -> None:
    assert series_gap(_slices([0, 3, 6, 9, 12])) is None
    assert "2 of 5 images" in str(series_gap(_slices([0, 3], ImagesInAcquisition=5)))
    assert "InstanceNumber" in str(series_gap(_slices([0, 3, 12, 15], numbers=[1, 2, 5, 6])))
    assert "slice gap of 9.0 mm" in str(series_gap(_slices([0, 3, 12, 15], numbers=[1, 2, 3, 4])))
    assert series_gap(_slices([0, 3, 6], ImagesInAcquisition=3)) is None
    assert "NumberOfTemporalPositions" in str(series_gap(_slices([0, 3, 6], NumberOfTemporalPositions=2)))
    multi = _slices([0], NumberOfFrames=40, ImagesInAcquisition=40)
    assert series_gap(multi) is None, "a multi-frame instance holds the whole series"


def test_a_gap_holds_quiet_and_stable_but_not_forced() -> None:
    policy = CompletionPolicy(quiet=2, stable=10, forced=100)
    assert readiness(0, 5, 50, True, policy, gap="3 of 40 images") is None
    assert readiness(0, 5, 100, True, policy, gap="3 of 40 images") == "forced"


def _record(sop: str, study: str = "1.2.3") -> InstanceRecord:
    return InstanceRecord(sop, study, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.4", "MR", Path(f"/x/{sop}"), 10, "MOD")


def test_instances_after_a_result_reopen_the_study_as_the_next_revision(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    journal.record_instance(_record("1.1"))
    job_id = journal.queue_study("1.2.3", "quiet")
    run = journal.claim_job()["runs"]
    assert journal.finish_job(job_id, {"segmentation": "/a.dcm"}, {}, [("PACS", "/a.dcm", "9.1")], run, "7.7")
    journal.record_instance(_record("1.2"))  # late: after the result
    job = journal.job(job_id)
    assert (job["state"], job["revision"], job["seg_series_uid"]) == ("reopened", 1, "7.7")
    assert journal.queue_study("1.2.3", "quiet") == job_id
    run = journal.claim_job()["runs"]
    journal.record_instance(_record("1.3"))  # while the second run is processing: stale
    assert journal.finish_job(job_id, {"segmentation": "/b.dcm"}, {}, [("PACS", "/b.dcm", "9.2")], run, "8.8")
    job = journal.job(job_id)
    assert (job["state"], job["revision"], job["seg_series_uid"]) == ("reopened", 2, "7.7"), \
        "a result made while instances arrived is superseded at once"
    assert journal.queue_study("1.2.3", "quiet") == job_id
    run = journal.claim_job()["runs"]
    assert journal.finish_job(job_id, {"segmentation": "/c.dcm"}, {}, [("PACS", "/c.dcm", "9.3")], run)
    states = journal.query("SELECT sop_uid, state FROM outbox ORDER BY id")
    assert [tuple(r) for r in states] == [("9.1", "superseded"), ("9.2", "superseded"), ("9.3", "pending")], \
        "results not yet sent are never sent once superseded"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("completeness") / "study"
    write_small_study(folder, seed=601)
    return folder


def _flair(folder: Path) -> list[Path]:
    paths = [p for p in sorted(folder.iterdir()) if pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription
             == FLAIR]
    return sorted(paths, key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber))


def _hold_back(folder: Path, held: list[Path]) -> Path:
    """Move ``held`` files out of ``folder`` into a sibling folder (sent later); returns it."""
    later = folder.parent / f"{folder.name}-later"
    later.mkdir()
    for path in held:
        shutil.move(path, later / path.name)
    return later


def test_a_sender_pausing_mid_series_gets_no_result_until_the_series_is_complete(source: Path, tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path / "orthanc").start()
    node = NodeProcess(tmp_path / "node", orthanc).start()  # quiet 1.5 s, stable 4 s
    try:
        counted = copy_as_new_study(source, tmp_path / "counted", 61)  # FLAIR says ImagesInAcquisition
        flair = _flair(tmp_path / "counted")
        for path in flair:
            dataset = pydicom.dcmread(path)
            dataset.ImagesInAcquisition = len(flair)
            dataset.save_as(path)
        counted_later = _hold_back(tmp_path / "counted", flair[len(flair) // 2:])
        holed = copy_as_new_study(source, tmp_path / "holed", 62)  # a hole in the middle of the FLAIR
        flair = _flair(tmp_path / "holed")
        holed_later = _hold_back(tmp_path / "holed", flair[5:9])
        assert send_study(tmp_path / "counted", node.port) and send_study(tmp_path / "holed", node.port)
        time.sleep(8)  # longer than quiet and stable
        assert node.journal_rows("SELECT COUNT(*) FROM jobs") == [(0,)], "no job while a series has a gap"
        assert orthanc.segs() == []
        assert send_study(counted_later, node.port) and send_study(holed_later, node.port)
        wait_for(lambda: {counted, holed} <= {s["StudyInstanceUID"] for s in orthanc.segs()}, 120, "both SEGs")
        jobs = {job["study_uid"]: job for job in node.jobs()}
        assert jobs[counted]["trigger"] == jobs[holed]["trigger"] == "quiet"
        assert jobs[counted]["instances"] == len(list(source.iterdir()))
    finally:
        node.kill()
        orthanc.stop()


def test_instances_after_the_result_make_a_superseding_seg(source: Path, tmp_path: Path) -> None:
    """The tail of a series held back (nothing in the headers tells): a SEG goes out, then the rest
    arrives; the study is reprocessed and the new SEG joins the same SEG series as instance 2."""
    orthanc = Orthanc(tmp_path / "orthanc").start()
    node = NodeProcess(tmp_path / "node", orthanc).start()
    try:
        study = copy_as_new_study(source, tmp_path / "tail", 63)
        later = _hold_back(tmp_path / "tail", _flair(tmp_path / "tail")[-4:])
        assert send_study(tmp_path / "tail", node.port)
        [first] = wait_for(lambda: [s for s in orthanc.segs() if s["StudyInstanceUID"] == study], 120, "first SEG")
        sent_segs = "SELECT COUNT(*) FROM outbox WHERE state = 'sent' AND kind = 'seg'"
        wait_for(lambda: node.journal_rows(sent_segs) == [(1,)], 20, "the first SEG acknowledged")
        assert send_study(later, node.port)

        def both() -> list[dict[str, str]] | None:
            found = [tags for tags in orthanc.segs() if tags["StudyInstanceUID"] == study]
            return found if len(found) == 2 else None

        segs = wait_for(both, 120, "the superseding SEG")
        newer = max(segs, key=lambda tags: int(tags["InstanceNumber"]))
        assert {s["SeriesInstanceUID"] for s in segs} == {first["SeriesInstanceUID"]}, "same SEG series"
        assert int(newer["InstanceNumber"]) == 2 and newer["SOPInstanceUID"] != first["SOPInstanceUID"]
        assert newer["ContentDescription"] == "Revision 2: supersedes instance 1 of this series"
        [job] = [j for j in node.jobs() if j["study_uid"] == study]
        assert job["revision"] == 2 and job["state"] == "done"
        outputs = json.loads(node.journal_rows(f"SELECT outputs FROM jobs WHERE id = {job['id']}")[0][0])
        report = json.loads(Path(outputs["report"]).read_text())
        assert report["revision"] == 2 and report["supersedes"]["sop_instance_uid"] == first["SOPInstanceUID"]
        with_page = wait_for(lambda: "revision 2, supersedes" in _page(node.url, node.token), 10, "the status page")
        assert with_page
    finally:
        node.kill()
        orthanc.stop()


def _page(url: str, token: str) -> str:
    import urllib.request

    request = urllib.request.Request(url + "/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()
