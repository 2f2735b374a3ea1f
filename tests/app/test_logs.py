"""Structured logs: JSON lines with study and job ids, and the MAP's HOLOSCAN_LOGS_PATH."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ConfigError, load_settings
from app.logs import configure_logging, log_context
from tests.support.paths import REPO


@pytest.fixture(autouse=True)
def restore_logging() -> object:
    yield
    logging.basicConfig(level=logging.WARNING, force=True)


def test_json_lines_carry_study_and_job_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json", tmp_path / "logs")
    log = logging.getLogger("app.node.worker")
    log.info("node started")
    with log_context(study_uid="1.2.826.0.1.3680043.2.1125.1", job_id=7):
        log.warning("study %s job %d: processing", "1.2.826.0.1.3680043.2.1125.1", 7)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines] == ["node started", "study 1.2.826.0.1.3680043.2.1125.1 job 7: "
                                                   "processing"]
    first, second = lines
    assert {"time", "level", "logger", "process", "thread"} <= set(first) and "study_uid" not in first
    assert (second["level"], second["logger"]) == ("WARNING", "app.node.worker")
    assert (second["study_uid"], second["job_id"]) == ("1.2.826.0.1.3680043.2.1125.1", 7)
    assert not {"job", "args", "msg", "levelno"} & set(second)
    written = [json.loads(line) for line in (tmp_path / "logs" / "segmamba.log").read_text().splitlines()]
    assert written == lines


def test_text_format_names_the_job_and_an_unwritable_log_folder_is_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    configure_logging("INFO", "text", blocker / "logs")
    with log_context(study_uid="1.2.3", job_id=4):
        logging.getLogger("x").info("hello")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert "WARNING" in err[0] and "logging to stderr only" in err[0]
    assert err[1].endswith("[study_uid=1.2.3 job_id=4]: hello")


def test_log_settings_come_from_the_map_environment(tmp_path: Path) -> None:
    settings = load_settings(environ={"HOLOSCAN_LOGS_PATH": str(tmp_path / "logs"), "SEGMAMBA_LOG_FORMAT": "JSON"})
    assert (settings.logs, settings.log_format) == (tmp_path / "logs", "json")
    assert load_settings(environ={}).logs is None
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(environ={"SEGMAMBA_LOG_FORMAT": "xml"})


def test_batch_run_logs_json_lines_into_holoscan_logs_path(tmp_path: Path) -> None:
    """The application itself (python -m app) on an empty study folder: every stderr line but the final
    ERROR summary is JSON, and the same records are in HOLOSCAN_LOGS_PATH/segmamba.log."""
    (tmp_path / "in").mkdir()
    env = dict(os.environ, HOLOSCAN_LOGS_PATH=str(tmp_path / "logs"), SEGMAMBA_LOG_FORMAT="json")
    result = subprocess.run([sys.executable, "-m", "app", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                             "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("ERROR study") and "no files" in lines[-1]
    records = [json.loads(line) for line in lines[:-1] if line.startswith("{")]
    assert records and all(line.startswith("{") for line in lines[:-1] if line.strip()), lines
    written = (tmp_path / "logs" / "segmamba.log").read_text().splitlines()
    assert [json.loads(line)["message"] for line in written] == [r["message"] for r in records]
