"""Stopping the node while a job runs: the job goes back to the queue, no traceback is logged."""

from __future__ import annotations

import logging
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from app.config import Settings
from app.node.executor import JobExecutor, WorkerStopped
from app.node.state.journal import InstanceRecord, Journal
from app.node.state.spool import Spool
from app.node.worker import Worker
from app.node.worker_messages import Ready


def hanging_child(connection: Connection, _settings: Settings, _parent_pid: int | None = None) -> None:
    """A worker child that loads nothing and never finishes its job (a long inference)."""
    connection.send(Ready())
    connection.recv()
    time.sleep(600)


def test_closing_the_executor_during_a_job_ends_it_with_worker_stopped() -> None:
    executor = JobExecutor(Settings(), start_timeout=60, child=hanging_child)
    errors: list[BaseException] = []

    def job() -> None:
        try:
            executor.run(Path("/nonexistent/in"), Path("/nonexistent/out"), timeout=120)
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 60
    while not executor.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert executor.alive()
    time.sleep(0.5)  # the job is in the parent's wait loop
    executor.close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], WorkerStopped), errors
    with pytest.raises(WorkerStopped):  # a closed executor starts no new child
        executor.start()


def test_stopping_the_worker_mid_job_requeues_it_without_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.record_instance(InstanceRecord("1.1", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.4", "MR",
                                           tmp_path / "x.dcm", 10, "MOD"))
    job_id = journal.queue_study("1.2.3", "quiet")
    executor = JobExecutor(Settings(), start_timeout=60, child=hanging_child)
    worker = Worker(journal, Spool(tmp_path / "spool"), executor, [], timeout=120, retries=2)
    caplog.set_level(logging.INFO)
    thread = threading.Thread(target=worker.run_one)
    thread.start()
    deadline = time.monotonic() + 60
    while worker.current_job is None or not executor.alive():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    worker.stop_event.set()
    executor.close()  # what Node.stop does
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], caplog.text
    assert "interrupted by the node stopping; back to the queue" in caplog.text
    job = journal.job(job_id)
    assert (job["state"], job["attempts"]) == ("ready", 0)  # no attempt used: the next start runs it
    journal.close()
