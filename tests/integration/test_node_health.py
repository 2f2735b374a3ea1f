"""Health and attempts: /healthz is liveness, /readyz tells whether the node can do its work (model
loaded, worker heartbeat, journal writable, spool space); jobs never stay 'processing' after their
worker died or a journal update failed; attempts count only failures the job caused; a failed study
is processed again after a resend or ``python -m app requeue``."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from app.config import Settings
from app.node.executor import Outcome, WorkerUnavailable
from app.node.service import Node
from app.node.state.journal import InstanceRecord, Journal
from app.node.state.spool import Spool
from app.node.worker import Worker
from tests.support.node_peers import Clock, NodeProcess, free_port, wait_for, write_small_study


def _record(sop: str, study: str = "1.2.3") -> InstanceRecord:
    return InstanceRecord(sop, study, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.4", "MR", Path(f"/x/{sop}"), 10, "MOD")


def _queued(journal: Journal, study: str = "1.2.3") -> int:
    journal.record_instance(_record(f"{study}.1", study))
    job_id = journal.queue_study(study, "quiet")
    assert job_id is not None
    return job_id


def test_a_job_without_heartbeat_returns_to_the_queue_and_its_old_run_changes_nothing(tmp_path: Path) -> None:
    clock = Clock()
    journal = Journal(tmp_path / "j.sqlite3", clock=clock)
    job_id = _queued(journal)
    run = journal.claim_job()["runs"]
    clock.now += 30
    assert journal.beat(job_id, run) and journal.reap_stale(60) == []
    clock.now += 61
    assert journal.reap_stale(60) == [job_id]
    job = journal.job(job_id)
    assert (job["state"], job["attempts"]) == ("ready", 0), "a lost heartbeat uses no attempt"
    assert not journal.finish_job(job_id, {"segmentation": "/s"}, {}, [("PACS", "/s", "9")], run), \
        "the abandoned run cannot finish the job"
    assert not journal.beat(job_id, run)
    assert journal.claim_job()["runs"] == run + 1


class _Executor:
    """Stands in for the child process: returns a fixed outcome, or raises."""

    def __init__(self, outcome: Outcome | None = None, error: Exception | None = None) -> None:
        self.outcome, self.error = outcome, error

    def run(self, *_args: Any, **_kwargs: Any) -> Outcome:
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


class _FullDiskJournal(Journal):
    """A journal whose job results cannot be written (disk full)."""

    def finish_job(self, *args: Any, **kwargs: Any) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    def fail_job(self, *args: Any, **kwargs: Any) -> bool:
        raise sqlite3.OperationalError("database or disk is full")


def test_a_failed_journal_update_does_not_leave_the_job_processing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    journal = _FullDiskJournal(spool.journal_path)
    job_id = _queued(journal)
    worker = Worker(journal, spool, _Executor(Outcome("permanent", "bad", "StudyError")), [], 60, 2,  # type: ignore[arg-type]
                    retry_delay=0)
    assert worker.run_one()
    job = journal.job(job_id)
    assert (job["state"], job["attempts"]) == ("ready", 0)
    assert "journal update failed" in job["reason"]


def test_a_worker_that_cannot_start_costs_the_job_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path)
    job_id = _queued(journal)
    worker = Worker(journal, spool, _Executor(error=WorkerUnavailable("died while loading the model")), [], 60, 2,  # type: ignore[arg-type]
                    retry_delay=0)
    for _ in range(4):
        assert worker.run_one()
    job = journal.job(job_id)
    assert (job["state"], job["attempts"], job["runs"]) == ("ready", 0, 4)


def test_transient_failures_use_attempts_and_then_fail(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path)
    job_id = _queued(journal)
    worker = Worker(journal, spool, _Executor(Outcome("transient", "boom", "RuntimeError")), [], 60, 1,  # type: ignore[arg-type]
                    retry_delay=0)
    assert worker.run_one() and journal.job(job_id)["state"] == "ready"
    assert worker.run_one()
    job = journal.job(job_id)
    assert job["state"] == "failed" and job["reason"] == "RuntimeError: boom (after 2 attempts)"


@pytest.fixture()
def node(tmp_path: Path) -> Any:
    settings = replace(Settings(), spool=tmp_path / "spool", port=free_port(), http_port=0, models=tmp_path / "none")
    built = Node(settings)
    yield built
    built.web.httpd.server_close()
    built.journal.close()


def test_readiness_names_what_fails(node: Node) -> None:
    parts = node.readiness()
    assert parts["journal"] and parts["spool_space"] and parts["worker_heartbeat"]
    assert parts["model"] is False, "not ready before the model is loaded"
    node.settings = replace(node.settings, min_free_mb=1 << 40)
    assert node.readiness()["spool_space"] is False
    node.journal.close()
    assert node.readiness()["journal"] is False
    node.journal = Journal(node.spool.journal_path)


def test_a_resend_of_a_failed_study_reopens_it(node: Node, tmp_path: Path) -> None:
    study = write_small_study(tmp_path / "study", seed=701, roles=("t1n",))
    files = sorted((tmp_path / "study").iterdir())
    for path in files:
        assert node.intake.accept(path.read_bytes(), "MOD").ok
    job_id = node.journal.fail_study(study.study_instance_uid, "stable", "study ...: t1c missing")
    assert node.intake.accept(files[0].read_bytes(), "MOD").duplicate
    assert node.journal.job(job_id)["state"] == "reopened"
    assert [s["study_uid"] for s in node.journal.receiving_studies()] == [study.study_instance_uid]


def test_requeue_command_processes_a_study_again(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path)
    failed, done = _queued(journal, "1.2.3"), _queued(journal, "1.2.4")
    journal.claim_job()
    journal.fail_job(failed, "StudyError: bad")
    run = journal.claim_job()["runs"]
    journal.finish_job(done, {"segmentation": "/s"}, {}, [], run)
    assert main(["requeue", "1.2.3", "1.2.4", "--spool", str(spool.root)]) == 0
    assert "queued again" in capsys.readouterr().out
    assert [(j["state"], j["attempts"], j["revision"]) for j in (journal.job(failed), journal.job(done))] == \
        [("ready", 0, 0), ("ready", 0, 1)], "the done study's next result supersedes the last"
    assert main(["requeue", "9.9.9", "--spool", str(spool.root)]) == 2


def test_healthz_is_liveness_and_readyz_fails_without_a_model(tmp_path: Path) -> None:
    """A node whose model cannot load is alive (/healthz 200) but not ready (/readyz 503, model false)."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    node = NodeProcess(tmp_path / "node", None, min_free_mb=0)
    node.model = broken
    node.start()
    try:
        answer = wait_for(lambda: node.ready(), 30, "/readyz")
        assert answer["status"] == "unhealthy" and answer["model"] is False and answer["journal"] is True
        wait_for(lambda: "could not load the model" in node.log(), 60, "the model failure in the log")
        assert (node.ready() or {}).get("model") is False
    finally:
        node.kill()
