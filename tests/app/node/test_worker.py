"""The processing worker (app/node/worker.py) on a real journal, with a scripted executor in place of the
child process: what each outcome does to the job (permanent: failed with its reason; transient: retried
after a growing delay, then failed; out of memory: retried at once with a smaller configuration; ok: done
with its sends in the outbox), and a reopened study's result superseding the previous one."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import MRImageStorage, generate_uid

from app.node.executor import OOM, PERMANENT, TRANSIENT, Outcome
from app.node.send.destinations import Destination
from app.node.state.journal import InstanceRecord, Journal
from app.node.state.spool import Spool
from app.node.state.states import JobState, OutboxState
from app.node.worker import Worker
from tests.support.node_peers import Clock

DESTINATIONS = [Destination("PACS", "ORTHANC", "127.0.0.1", 104), Destination("ARCHIVE", "ARCH", "127.0.0.1", 105)]
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class Scripted:
    """Stands in for the JobExecutor: answers each run with the next outcome (a callable gets the output
    folder and writes the result there first) and remembers what it was asked."""

    def __init__(self, *outcomes: Outcome | Callable[[Path], Outcome]) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[dict[str, Any]] = []

    def run(self, input_dir: Path, output_dir: Path, timeout: float, overrides: dict[str, Any],
            on_wait: Callable[[], None] | None = None, ids: dict[str, Any] | None = None) -> Outcome:
        self.calls.append({"input": input_dir, "output": output_dir, "overrides": dict(overrides), "ids": ids})
        outcome = self.outcomes.pop(0)
        return outcome(output_dir) if callable(outcome) else outcome


class Bench:
    """A spool and journal on a settable clock, with one received study (one instance on disk)."""

    def __init__(self, root: Path) -> None:
        self.clock = Clock()
        self.spool = Spool(root / "spool")
        self.journal = Journal(self.spool.journal_path, clock=self.clock)
        self.study = generate_uid()
        self.receive()
        job_id = self.journal.queue_study(self.study, "quiet")
        assert job_id is not None
        self.job_id = job_id

    def receive(self) -> None:
        sop = generate_uid()
        path = self.spool.store_instance(self.study, sop, b"instance")
        self.journal.record_instance(InstanceRecord(sop, self.study, generate_uid(), MRImageStorage, "MR", path, 8,
                                                    "MODALITY"))

    def worker(self, executor: Scripted, retries: int = 2, retry_delay: float = 5.0) -> Worker:
        return Worker(self.journal, self.spool, executor, DESTINATIONS, timeout=60, retries=retries,  # type: ignore[arg-type]
                      retry_delay=retry_delay)

    def job(self) -> Any:
        return self.journal.job(self.job_id)

    def outbox(self) -> list[tuple[str, str, str]]:
        rows = self.journal.query("SELECT destination, sop_uid, state FROM outbox ORDER BY id")
        return [(row["destination"], row["sop_uid"], row["state"]) for row in rows]


@pytest.fixture()
def bench(tmp_path: Path) -> Bench:
    return Bench(tmp_path)


@pytest.fixture(scope="module")
def segs(small_study: Any, brats_segments: list[Any], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two SEGs of the same study (two runs: each its own SOP Instance and series UID)."""
    from operators.seg_writer import write_segmentation
    from operators.volume import sort_slices

    reference = sort_slices([pydicom.dcmread(f) for f in small_study.by_description("AX T1 POST GAD").files])
    labels = np.zeros((int(reference[0].Columns), int(reference[0].Rows), len(reference)), np.uint8)
    labels[12:30, 10:26, 6:14] = 2
    folder = tmp_path_factory.mktemp("segs")
    return [write_segmentation(labels, reference, brats_segments, "test-model", "1.0", folder / f"seg{n}.dcm")
            for n in range(2)]


def result(seg: Path) -> Callable[[Path], Outcome]:
    """An ok outcome whose output folder holds ``seg`` and a report.json listing it, as a run writes them."""
    def write(output: Path) -> Outcome:
        output.mkdir(parents=True)
        shutil.copy(seg, output / "segmentation.dcm")
        (output / "report.json").write_text(json.dumps({"outputs": [{"kind": "seg", "files": ["segmentation.dcm"]}]}))
        return Outcome("ok", files={"segmentation": str(output / "segmentation.dcm"),
                                    "report": str(output / "report.json")}, stage_times={"infer": 2.5, "write": 0.5})
    return write


def test_a_permanent_failure_fails_the_job_with_its_reason_and_keeps_the_input(bench: Bench) -> None:
    executor = Scripted(Outcome(PERMANENT, "study has no FLAIR series\nTraceback ...", "StudyError"))
    assert bench.worker(executor).run_one()
    job = bench.job()
    assert (job["state"], job["attempts"]) == (JobState.FAILED, 1)
    assert job["reason"] == "StudyError: study has no FLAIR series", "the type and the message's first line"
    assert executor.calls[0]["input"] == bench.spool.study_dir(bench.study)
    assert executor.calls[0]["ids"] == {"study_uid": bench.study, "job_id": bench.job_id}
    assert len(list(bench.spool.study_dir(bench.study).iterdir())) == 1, "the input stays for inspection"
    assert bench.outbox() == []
    assert not bench.worker(executor).run_one(), "a failed job is not run again by itself"


def test_a_transient_failure_is_retried_after_a_growing_delay_then_fails(bench: Bench) -> None:
    boom = Outcome(TRANSIENT, "worker timed out", "TimeoutError")
    worker = bench.worker(Scripted(boom, boom, boom), retries=2, retry_delay=5.0)
    for attempt, delay in ((1, 5.0), (2, 10.0)):
        assert worker.run_one()
        job = bench.job()
        assert (job["state"], job["attempts"], job["reason"]) == (JobState.READY, attempt,
                                                                  "TimeoutError: worker timed out")
        assert job["not_before"] == bench.clock.now + delay, f"retry {attempt} waits retry_delay x {attempt}"
        bench.clock.now += delay - 1
        assert not worker.run_one(), "not run again before its delay"
        bench.clock.now += 1
    assert worker.run_one()
    job = bench.job()
    assert (job["state"], job["attempts"]) == (JobState.FAILED, 3)
    assert job["reason"] == "TimeoutError: worker timed out (after 3 attempts)"


def test_out_of_memory_retries_at_once_with_half_the_batch_then_on_the_cpu(bench: Bench) -> None:
    def oom(batch: int, device: str) -> Outcome:
        return Outcome(OOM, "CUDA out of memory", "OutOfMemoryError", sw_batch_size=batch, device=device)

    executor = Scripted(oom(4, "cuda:0"), oom(2, "cuda:0"), oom(1, "cuda:0"), oom(1, "cpu"))
    worker = bench.worker(executor, retries=2)
    for _ in range(3):
        assert worker.run_one(), "an out-of-memory retry is due at once"
        job = bench.job()
        assert (job["state"], job["attempts"]) == (JobState.READY, 0), "smaller settings cost no attempt"
        assert job["not_before"] == bench.clock.now
    assert [call["overrides"] for call in executor.calls] == [
        {}, {"sw_batch_size": 2, "device": "cuda:0"}, {"sw_batch_size": 1, "device": "cuda:0"}]
    assert worker.run_one()
    assert executor.calls[3]["overrides"] == {"sw_batch_size": 1, "device": "cpu"}
    job = bench.job()
    assert (job["state"], job["attempts"]) == (JobState.READY, 1), "out of memory on the CPU is a counted failure"
    assert job["not_before"] == bench.clock.now + 5.0
    assert job["reason"] == "OutOfMemoryError: CUDA out of memory"


def test_an_ok_outcome_finishes_the_job_and_queues_its_sends(bench: Bench, segs: list[Path]) -> None:
    executor = Scripted(Outcome(TRANSIENT, "boom", "RuntimeError"), result(segs[0]))
    worker = bench.worker(executor, retry_delay=0.0)
    assert worker.run_one() and worker.run_one()
    job = bench.job()
    assert (job["state"], job["reason"], job["attempts"]) == (JobState.DONE, None, 1)
    output = bench.spool.job_dir(bench.job_id) / "output"
    assert executor.calls[1]["output"] == output
    assert json.loads(job["outputs"]) == {"segmentation": str(output / "segmentation.dcm"),
                                          "report": str(output / "report.json")}
    assert json.loads(job["stage_times"]) == {"infer": 2.5, "write": 0.5}
    seg = pydicom.dcmread(output / "segmentation.dcm")
    assert job["seg_series_uid"] == seg.SeriesInstanceUID
    assert bench.outbox() == [(d.name, seg.SOPInstanceUID, OutboxState.PENDING) for d in DESTINATIONS]
    rows = bench.journal.query("SELECT path, kind, sop_class FROM outbox")
    assert {(r["path"], r["kind"], r["sop_class"]) for r in rows} == {(str(output / "segmentation.dcm"), "seg",
                                                                       SEG_CLASS)}


def test_a_reopened_studys_result_supersedes_the_previous_one(bench: Bench, segs: list[Path]) -> None:
    executor = Scripted(result(segs[0]), result(segs[1]))
    worker = bench.worker(executor)
    assert worker.run_one()
    first = pydicom.dcmread(bench.spool.job_dir(bench.job_id) / "output" / "segmentation.dcm")
    bench.receive()  # an instance arrives after the result: the study receives again
    assert bench.job()["state"] == JobState.REOPENED and bench.job()["revision"] == 1
    assert bench.journal.queue_study(bench.study, "quiet") == bench.job_id
    assert worker.run_one()

    revised = bench.spool.job_dir(bench.job_id) / "output-r1"
    assert executor.calls[1]["output"] == revised, "each revision writes its own folder"
    assert (bench.spool.job_dir(bench.job_id) / "output" / "segmentation.dcm").is_file(), "the first stays"
    seg = pydicom.dcmread(revised / "segmentation.dcm")
    assert seg.SOPInstanceUID == pydicom.dcmread(segs[1]).SOPInstanceUID != first.SOPInstanceUID
    assert seg.SeriesInstanceUID == first.SeriesInstanceUID, "the new SEG joins the first result's series"
    assert seg.InstanceNumber == 2
    assert seg.ContentDescription == "Revision 2: supersedes instance 1 of this series"
    report = json.loads((revised / "report.json").read_text())
    assert report["revision"] == 2
    assert report["supersedes"]["sop_instance_uid"] == first.SOPInstanceUID
    assert report["supersedes"]["series_instance_uid"] == first.SeriesInstanceUID
    job = bench.job()
    assert (job["state"], job["seg_series_uid"]) == (JobState.DONE, first.SeriesInstanceUID)
    assert bench.outbox() == [(d.name, first.SOPInstanceUID, OutboxState.SUPERSEDED) for d in DESTINATIONS] + \
        [(d.name, seg.SOPInstanceUID, OutboxState.PENDING) for d in DESTINATIONS], \
        "the unsent first result is never sent; the revision goes to every destination"


def test_a_job_that_never_reaches_an_outcome_is_given_up(bench: Bench) -> None:
    for _ in range(2):  # e.g. it took the node down twice: released without an outcome
        claimed = bench.journal.claim_job()
        assert claimed is not None
        bench.journal.release_job(bench.job_id, "node restarted", 0.0, claimed["runs"])
    executor = Scripted()
    worker = Worker(bench.journal, bench.spool, executor, [], 60, 2, max_runs=2)  # type: ignore[arg-type]
    assert worker.run_one()
    job = bench.job()
    assert job["state"] == JobState.FAILED and executor.calls == [], "the third run is not started"
    assert job["reason"] == "gave up after 2 runs without an outcome: node restarted"
