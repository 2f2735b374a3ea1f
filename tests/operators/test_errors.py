"""The error vocabulary: one line per failed study, and the CLI's three kinds of failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from operators.errors import ConfigurationError, StudyError, one_line


def test_study_error_is_one_line_with_accession_series_and_file() -> None:
    error = StudyError(
        "1.2.3", "pixel data does not decode\n  JPEG stream truncated", accession="ACC7",
        series="#5 'FLAIR' (1.2.3.5)", file="DICOM/ST1/SE5/IM12",
    )
    assert str(error) == (
        "study 1.2.3 (ACC7): pixel data does not decode; JPEG stream truncated; series #5 'FLAIR' (1.2.3.5); "
        "file DICOM/ST1/SE5/IM12"
    )
    assert "\n" not in str(error)


def test_study_error_names_the_folder_when_no_accession_is_known() -> None:
    error = StudyError("1.2.3", "no t2f series").with_context(folder="/in/study")
    assert str(error) == "study 1.2.3 (/in/study): no t2f series"
    assert str(StudyError("1.2.3", "x", accession="A1").with_context(folder="/in")) == "study 1.2.3 (A1): x"


def test_one_line_keeps_every_line_of_a_reason() -> None:
    assert one_line("first\n\n  second  \nthird") == "first; second; third"


def test_config_errors_are_configuration_errors_not_bad_input() -> None:
    from app.config import ConfigError
    from operators.model_card import ModelCardError

    assert issubclass(ConfigError, ConfigurationError) and not issubclass(ConfigError, StudyError)
    assert issubclass(ModelCardError, ConfigurationError) and not issubclass(ModelCardError, StudyError)


def test_node_retries_only_what_is_not_bad_input() -> None:
    from app.node.executor import PERMANENT, TRANSIENT, classify

    assert classify(StudyError("1.2", "truncated")) == PERMANENT
    assert classify(ConfigurationError("model folder missing")) == TRANSIENT
    assert classify(ValueError("operands could not be broadcast")) == TRANSIENT  # a bug, not the study's fault


def test_only_study_errors_are_bad_input_whatever_else_they_derive_from() -> None:
    from app.node.executor import PERMANENT, TRANSIENT, classify
    from operators.multiframe import MultiframeError
    from operators.series_selection import SeriesSelectionError
    from operators.volume import VolumeError

    assert classify(SeriesSelectionError("no FLAIR", study_instance_uid="1.2")) == PERMANENT  # also a ValueError
    # ValueErrors of the operators' own helpers that escape unconverted are bugs: retried, never bad input
    assert classify(VolumeError("slices of mixed orientation")) == TRANSIENT
    assert classify(MultiframeError("frame count differs")) == TRANSIENT


def _run_cli_failing_with(error: BaseException, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    import app.batch
    from app.cli import main

    def fail(_settings: object) -> None:
        raise error

    monkeypatch.setattr(app.batch, "run_batch", fail)
    code = main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), "--no-progress"])
    return code, capsys.readouterr().err


def test_cli_prints_bad_input_as_one_line_without_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run_cli_failing_with(StudyError("1.2.3", "no FLAIR\nsecond line"), monkeypatch, tmp_path, capsys)
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("ERROR")] == [
        f"ERROR study 1.2.3 ({tmp_path}): no FLAIR; second line"
    ]
    assert "Traceback" not in err


@pytest.mark.parametrize("error", [ZeroDivisionError("division by zero"), ValueError("division by zero")])
def test_cli_prints_a_bug_with_its_traceback(
    error: Exception, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _run_cli_failing_with(error, monkeypatch, tmp_path, capsys)
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("ERROR")]
    name = type(error).__name__
    assert errors == [f"ERROR study in {tmp_path}: internal error ({name}: division by zero)"]  # not "study <uid>"
    assert "Traceback" in err
