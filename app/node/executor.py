"""Run jobs in a child process that keeps the model loaded, and abandon it when a job overruns.

A Python thread cannot be stopped, and a stuck CUDA kernel or a runaway job must not hold the
node, so the operator chain runs in one spawned child process: it loads the model once, then
segments one study per request. If a job exceeds its timeout, or the child dies, the child is
killed and a fresh one (which loads the model again) serves the next job. The parent process
(DICOM, journal, web) never imports torch or monai.

The two talk over a Pipe in the frozen dataclasses of app/node/worker_messages.py: the child sends
``Ready`` once its model is loaded, then answers each ``JobRequest`` with ``JobDone`` or
``JobFailed``. Anything else the parent receives is a protocol error, handled like the child dying:
the child is killed and the job's outcome is CRASHED (``WorkerUnavailable`` while it loads).

The child dies with its parent, SIGKILL of the node included: on Linux the kernel sends it SIGKILL
when the parent goes (``PR_SET_PDEATHSIG``), and on every system a watch thread ends it once its
parent process is gone, so it never writes into a spool a restarted node reuses.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from app import allocator
from app.config import Settings
from app.node.worker_messages import JobDone, JobFailed, JobRequest, Ready

log = logging.getLogger(__name__)
PERMANENT, TRANSIENT, OOM, TIMEOUT, CRASHED = "permanent", "transient", "oom", "timeout", "crashed"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class WorkerUnavailable(RuntimeError):
    """The worker process could not be started or did not load the model (not the job's fault)."""


class WorkerStopped(WorkerUnavailable):
    """The node is stopping: the running job was abandoned and goes back to the queue."""


@dataclass(frozen=True)
class Outcome:
    """What became of one job run: ``kind`` is 'ok' or a failure kind (permanent, transient, oom, ...)."""

    kind: str
    message: str = ""
    error_type: str = ""
    files: dict[str, str] = field(default_factory=dict)
    stage_times: dict[str, float] = field(default_factory=dict)
    sw_batch_size: int | None = None
    device: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA (or other accelerator) out-of-memory, by type or message."""
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def classify(error: BaseException) -> str:
    """PERMANENT for bad input (StudyError: the same input fails again), OOM, else TRANSIENT
    (ConfigurationError: fixed by the installer; any other exception is a bug: a retry may help)."""
    from operators.errors import StudyError

    if is_out_of_memory(error):
        return OOM
    if isinstance(error, StudyError):
        return PERMANENT
    return TRANSIENT


def after_out_of_memory(sw_batch_size: int | None, device: str) -> dict[str, Any] | None:
    """Settings for the next try after an out-of-memory failure: halve the sliding-window batch, then
    run on the CPU; None when already on the CPU (nothing smaller to try)."""
    if not device or device.startswith("cpu"):
        return None
    if sw_batch_size and sw_batch_size > 1:
        return {"sw_batch_size": sw_batch_size // 2, "device": device}
    return {"sw_batch_size": 1, "device": "cpu"}


def die_with_parent(parent_pid: int, every: float = 0.5) -> None:
    """End this process when ``parent_pid`` is gone (PR_SET_PDEATHSIG on Linux, plus a watch thread)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            log.warning("PR_SET_PDEATHSIG unavailable; relying on the parent watch thread")
    if os.getppid() != parent_pid:  # the parent died before the call above
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child_main(connection: Connection, settings: Settings, parent_pid: int | None = None) -> None:
    """The child: load the model once, then answer JobRequests with JobDone or JobFailed until closed."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    from app.batch import load_model, process_study
    from app.logs import log_context, setup_logging

    setup_logging(settings, "segmamba-worker.log")
    log.info("worker memory allocator: %s", allocator.in_use())
    current = settings
    card, segmenter = load_model(current)
    connection.send(Ready())
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        if not isinstance(request, JobRequest):  # the parent sees the child die: CRASHED
            raise TypeError(f"the worker expected a JobRequest, not {request!r}")
        try:
            wanted = dataclasses.replace(settings, **request.overrides) if request.overrides else settings
            if wanted != current:
                current = wanted
                card, segmenter = load_model(current)
            with log_context(**request.ids):
                files, times = process_study(current, card, segmenter, Path(request.input_dir),
                                             Path(request.output_dir))
            connection.send(JobDone({"segmentation": str(files.segmentation), "report": str(files.report),
                                     "preview": str(files.preview)}, times))
        except Exception as error:
            device = str(getattr(segmenter, "device", current.device))
            connection.send(JobFailed(classify(error), type(error).__name__, str(error).strip() or repr(error),
                                      getattr(segmenter, "sw_batch_size", None), device))
        finally:
            allocator.release_kept_memory()  # an idle node does not hold the study's peak memory


class JobExecutor:
    """The parent's handle on the child process (see the module docstring)."""

    def __init__(
        self, settings: Settings, start_timeout: float = 300.0, child: Callable[..., None] | None = None,
    ) -> None:
        self.settings = settings
        self.start_timeout = start_timeout
        self._child = child or _child_main  # the child's main function (importable: spawn pickles it)
        self._closed = threading.Event()  # close() was called: the node is stopping
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._connection: Connection | None = None
        self.model_loaded = False  # a child is up with its model loaded

    def start(self, on_wait: Callable[[], None] | None = None) -> None:
        """Start the child and wait until its model is loaded (``on_wait`` called about once a second)."""
        parent, child = self._context.Pipe()
        self.model_loaded = False
        if self._closed.is_set():
            raise WorkerStopped("the node is stopping")
        self._process = self._context.Process(target=self._child, args=(child, self.settings, os.getpid()),
                                              name="segmamba-worker", daemon=True)
        with allocator.for_children(self.settings.allocator):  # the worker runs the network: jemalloc preloaded
            self._process.start()
        child.close()
        self._connection = parent
        deadline = time.monotonic() + self.start_timeout
        while not parent.poll(1.0):
            if on_wait is not None:
                on_wait()
            if not self._process.is_alive():
                code = self._process.exitcode
                self.stop()
                raise WorkerUnavailable(f"the worker process died while loading the model (exit code {code}; "
                                        "see its log)")
            if time.monotonic() > deadline:
                self.stop()
                raise WorkerUnavailable(f"the worker process did not load the model within {self.start_timeout:.0f} s")
        try:
            message = parent.recv()
        except (EOFError, OSError) as error:
            self.stop()
            raise WorkerUnavailable("the worker process died while loading the model (see its log)") from error
        if not isinstance(message, Ready):
            self.stop()
            raise WorkerUnavailable(f"the worker process sent {type(message).__name__} instead of Ready while "
                                    "loading the model")
        self.model_loaded = True
        log.info("worker process %d ready", self._process.pid)

    def close(self) -> None:
        """Stop for good (the node is stopping): a job running in another thread ends with WorkerStopped."""
        self._closed.set()
        self.stop()

    def stop(self) -> None:
        self.model_loaded = False
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._process is not None:
            self._process.kill()
            self._process.join(timeout=10)
            self._process = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def alive(self) -> bool:
        """Whether the child is up with its model loaded."""
        return self.model_loaded and self._process is not None and self._process.is_alive()

    def run(
        self, input_dir: Path, output_dir: Path, timeout: float, overrides: dict[str, Any] | None = None,
        on_wait: Callable[[], None] | None = None, ids: dict[str, Any] | None = None,
    ) -> Outcome:
        """Segment one study; kills and forgets the child on timeout or death. ``on_wait`` is called about
        once a second while the job runs (the worker's heartbeat). Raises WorkerUnavailable when no
        child can be started. ``ids`` (study_uid, job_id) go into the child's log records."""
        if not self.alive():
            self.stop()
            self.start(on_wait)
        # Local references: close() from another thread (the node stopping) clears the attributes.
        connection, process = self._connection, self._process
        if connection is None or process is None:
            raise WorkerStopped("the node is stopping")
        try:
            connection.send(JobRequest(str(input_dir), str(output_dir), dict(overrides or {}), dict(ids or {})))
            deadline = time.monotonic() + timeout
            while not connection.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                if on_wait is not None:
                    on_wait()
                if time.monotonic() >= deadline:
                    self.stop()
                    return Outcome(TIMEOUT, f"job exceeded its timeout of {timeout:.0f} s; worker abandoned",
                                   "TimeoutError")
                if not process.is_alive():
                    break
            answer = connection.recv()
        except (EOFError, OSError):
            if self._closed.is_set():
                raise WorkerStopped("the node is stopping; the job was abandoned") from None
            code = process.exitcode
            self.stop()
            return Outcome(CRASHED, f"worker process died (exit code {code})", "WorkerCrashed")
        if isinstance(answer, JobDone):
            return Outcome("ok", files=answer.files, stage_times=answer.stage_times)
        if isinstance(answer, JobFailed):
            return Outcome(answer.kind, answer.message, answer.error_type, sw_batch_size=answer.sw_batch_size,
                           device=answer.device)
        self.stop()  # a protocol error: the child is in no known state, like one that died
        return Outcome(CRASHED, f"worker process sent an unexpected message ({type(answer).__name__}); "
                                "worker abandoned", "WorkerProtocolError")
