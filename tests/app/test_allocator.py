"""The network's processes run with jemalloc keeping freed pages (app/allocator.py), and give them back between jobs."""

from __future__ import annotations

import os
import subprocess
import sys
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from app import allocator
from app.config import Settings
from app.node.executor import PERMANENT, JobExecutor
from app.node.worker_messages import JobFailed, Ready
from operators.errors import ConfigurationError
from tests.support.paths import REPO

# Resident memory around a 512 MiB block freed, then after release_kept_memory (MiB, one line).
RSS_PROBE = """
import os
import torch
from app import allocator
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20
before = rss()
block = torch.ones(512 * 2**20 // 4)
del block
kept = rss()
released = allocator.release_kept_memory()
print(allocator.in_use(), before, kept, rss(), released)
"""


def plain_environment() -> dict[str, str]:
    """This environment without a preload or an allocator configuration of its own."""
    return {key: value for key, value in os.environ.items()
            if key not in ("LD_PRELOAD", "MALLOC_CONF", allocator.RESTARTED)}


def run_app(*options: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``python -m app`` on an empty study folder (it fails with the study's error after the restart)."""
    (tmp_path / "in").mkdir(exist_ok=True)
    command = [sys.executable, "-m", "app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-progress",
               *options]
    return subprocess.run(command, cwd=REPO, env=plain_environment(), capture_output=True, text=True, timeout=300)


def test_the_machine_has_jemalloc() -> None:
    """The setup installs libjemalloc2 (tools/setup, the image); the tests below need it to mean anything."""
    assert allocator.jemalloc_library() is not None


def test_a_batch_run_restarts_itself_with_jemalloc_and_keeps_its_exit_status(tmp_path: Path) -> None:
    result = run_app(tmp_path=tmp_path)
    assert result.stderr.count("memory allocator: jemalloc") == 1, result.stderr[-2000:]
    assert result.stderr.count("ERROR ") == 1 and "no files" in result.stderr  # the study's error, once
    assert result.returncode == 2


def test_allocator_system_keeps_the_system_malloc(tmp_path: Path) -> None:
    result = run_app("--allocator", "system", tmp_path=tmp_path)
    assert "memory allocator: system" in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2


def test_jemalloc_kept_pages_are_reused_then_given_back_after_a_job() -> None:
    environment = allocator.environment_for("jemalloc", plain_environment())
    assert environment is not None
    result = subprocess.run([sys.executable, "-c", RSS_PROBE], cwd=REPO, env=environment, capture_output=True,
                            text=True, timeout=300, check=True)
    name, before, kept, after, released = result.stdout.split()
    assert name == "jemalloc" and released == "True"
    assert int(kept) - int(before) >= 400  # the freed block stays mapped for the next one: no page faults
    assert int(after) - int(before) <= 64  # and goes back to the system once the job is done


def test_the_system_malloc_has_nothing_to_give_back() -> None:
    result = subprocess.run([sys.executable, "-c", RSS_PROBE], cwd=REPO, env=plain_environment(),
                            capture_output=True, text=True, timeout=300, check=True)
    name, _before, _kept, _after, released = result.stdout.split()
    assert (name, released) == ("system", "False")


def reporting_child(connection: Connection, _settings: Settings, _parent_pid: int | None = None) -> None:
    """A worker child that answers its one job with the allocator it runs with (as the message)."""
    connection.send(Ready())
    connection.recv()
    connection.send(JobFailed(PERMANENT, "Probe", allocator.in_use(), None, "cpu"))
    connection.recv()


@pytest.mark.parametrize(("choice", "expected"), [("auto", "jemalloc"), ("system", "system")])
def test_the_node_worker_process_runs_with_the_configured_allocator(choice: str, expected: str) -> None:
    """The node's worker (app/node/executor.py) is started with jemalloc preloaded; the node itself is not."""
    before = {key: os.environ.get(key) for key in ("LD_PRELOAD", "MALLOC_CONF")}
    executor = JobExecutor(Settings(allocator=choice), start_timeout=120, child=reporting_child)
    try:
        outcome = executor.run(Path("/nonexistent/in"), Path("/nonexistent/out"), timeout=120)
    finally:
        executor.close()
    assert outcome.message == expected
    assert {key: os.environ.get(key) for key in before} == before


def test_environment_keeps_other_preloads_and_a_given_malloc_conf() -> None:
    environment = allocator.environment_for("auto", {"LD_PRELOAD": "libother.so", "MALLOC_CONF": "narenas:2"})
    assert environment is not None
    assert environment["LD_PRELOAD"].split() == [allocator.jemalloc_library(), "libother.so"]
    assert environment["MALLOC_CONF"] == "narenas:2"
    assert allocator.environment_for("auto", {})["MALLOC_CONF"] == allocator.JEMALLOC_CONF  # type: ignore[index]
    assert allocator.environment_for("system", {"PATH": "/bin"}) is None


def test_children_with_the_system_malloc_keep_other_preloads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", f"{allocator.jemalloc_library()} libother.so")
    monkeypatch.setenv("MALLOC_CONF", allocator.JEMALLOC_CONF)
    with allocator.for_children("system"):
        assert os.environ["LD_PRELOAD"] == "libother.so" and "MALLOC_CONF" not in os.environ
    assert os.environ["LD_PRELOAD"] == f"{allocator.jemalloc_library()} libother.so"
    assert os.environ["MALLOC_CONF"] == allocator.JEMALLOC_CONF


def test_missing_jemalloc_is_an_error_only_when_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "jemalloc_library", lambda: None)
    assert allocator.environment_for("auto", {}) is None  # auto: the system's malloc
    with pytest.raises(ConfigurationError, match="libjemalloc2"):
        allocator.environment_for("jemalloc", {})
    with pytest.raises(ConfigurationError, match="allocator must be one of"):
        allocator.environment_for("tcmalloc", {})


def test_the_command_line_and_settings_load_without_torch() -> None:
    """A batch run restarts itself under jemalloc after reading its settings: torch must not be loaded
    by then (it would be loaded twice, ~2 s)."""
    probe = "import sys, app.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.strip() == "False"


def test_a_restart_that_cannot_happen_leaves_the_run_going(monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """An interpreter the uid may run but not exec again (a root-owned pyenv under setpriv): warn, go on."""
    def refused(*_args: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(allocator, "jemalloc_active", lambda: False)
    monkeypatch.delenv(allocator.RESTARTED, raising=False)
    monkeypatch.setattr(os, "execve", refused)
    with caplog.at_level("WARNING", logger="app.allocator"):
        allocator.restart_with("auto")
    assert "cannot restart with jemalloc" in caplog.text


@pytest.mark.parametrize("command", [["evaluate", "--dir", "{tmp}/eval", "--cases", "1"],
                                     ["-i", "{tmp}/in", "-o", "{tmp}/out"]])
def test_a_required_jemalloc_that_is_missing_is_one_configuration_error_line(
        command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """``evaluate`` and a batch run, as the process's program: no traceback, exit status 2."""
    from app.cli import main

    monkeypatch.setattr(allocator, "jemalloc_library", lambda: None)
    (tmp_path / "in").mkdir()
    argv = [part.format(tmp=tmp_path) for part in command]
    assert main([*argv, "--allocator", "jemalloc"], program=True) == 2
    assert "ERROR configuration: allocator jemalloc: libjemalloc is not installed" in capsys.readouterr().err
