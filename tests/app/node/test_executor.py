"""app/node/executor.py and its worker child: the messages of app/node/worker_messages.py over the Pipe."""

from __future__ import annotations

from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from app.config import Settings
from app.node.executor import CRASHED, OOM, JobExecutor, WorkerUnavailable
from app.node.worker_messages import JobFailed, JobRequest, Ready


def failing_child(connection: Connection, _settings: Settings, _parent_pid: int | None = None) -> None:
    """A worker child whose every job runs out of memory (the message names the request's input)."""
    connection.send(Ready())
    while True:
        request = connection.recv()
        assert isinstance(request, JobRequest)
        connection.send(JobFailed(OOM, "OutOfMemoryError", f"CUDA out of memory in {request.input_dir}", 4, "cuda:0"))


def confused_child(connection: Connection, _settings: Settings, _parent_pid: int | None = None) -> None:
    """A worker child that answers a job with something that is no message (the old tuple protocol)."""
    connection.send(Ready())
    connection.recv()
    connection.send(("ok", {}, {}))
    connection.recv()


def unready_child(connection: Connection, _settings: Settings, _parent_pid: int | None = None) -> None:
    """A worker child that sends something other than Ready once loaded."""
    connection.send("ready")
    connection.recv()


def test_a_job_failed_from_the_child_becomes_its_outcome() -> None:
    executor = JobExecutor(Settings(), start_timeout=60, child=failing_child)
    try:
        outcome = executor.run(Path("/nonexistent/in"), Path("/nonexistent/out"), timeout=60)
        assert (outcome.kind, outcome.error_type, outcome.message, outcome.sw_batch_size, outcome.device) == (
            OOM, "OutOfMemoryError", "CUDA out of memory in /nonexistent/in", 4, "cuda:0")
        assert not outcome.ok and outcome.files == {} and outcome.stage_times == {}
        assert executor.alive(), "a failed job keeps the child and its model"
    finally:
        executor.close()


def test_an_unexpected_message_from_the_child_is_handled_like_its_death() -> None:
    executor = JobExecutor(Settings(), start_timeout=60, child=confused_child)
    try:
        outcome = executor.run(Path("/nonexistent/in"), Path("/nonexistent/out"), timeout=60)
        assert (outcome.kind, outcome.error_type) == (CRASHED, "WorkerProtocolError")
        assert "unexpected message (tuple)" in outcome.message
        assert not executor.alive() and executor.pid is None, "the child is killed; the next job starts another"
    finally:
        executor.close()


def test_a_child_that_does_not_send_ready_is_unavailable() -> None:
    executor = JobExecutor(Settings(), start_timeout=60, child=unready_child)
    try:
        with pytest.raises(WorkerUnavailable, match="sent str instead of Ready"):
            executor.start()
        assert not executor.alive() and executor.pid is None
    finally:
        executor.close()
