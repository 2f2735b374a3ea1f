"""Logging of the application: text or JSON lines on stderr, optionally also files in a logs folder.

``log_format: json`` writes one JSON object per line (python-json-logger) with ``time``, ``level``,
``logger``, ``process``, ``thread``, ``message`` and, while a job runs, ``study_uid`` and ``job_id``
(set with ``log_context``; the worker thread and the worker process both set them). ``logs``
(the MAP's HOLOSCAN_LOGS_PATH) adds a size-rotated file per process kind in that folder; a folder
that cannot be written (read-only image) leaves logging on stderr with one warning.
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pythonjsonlogger.json import JsonFormatter

if TYPE_CHECKING:
    from app.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(processName)s/%(threadName)s]%(job)s: %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(threadName)s %(message)s"
JSON_RENAMES = {"asctime": "time", "levelname": "level", "name": "logger", "threadName": "thread"}
CONTEXT_KEYS = ("study_uid", "job_id")
LOG_FILE_BYTES, LOG_FILE_COUNT = 10 << 20, 5
_context: contextvars.ContextVar[tuple[tuple[str, object], ...]] = contextvars.ContextVar("segmamba_log_context",
                                                                                         default=())


@contextmanager
def log_context(**values: object) -> Iterator[None]:
    """Attach ``study_uid`` / ``job_id`` to every record logged in this thread inside the block."""
    merged = {**dict(_context.get()), **{k: v for k, v in values.items() if v is not None}}
    token = _context.set(tuple(merged.items()))
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current log context onto each record (``job`` is its text form for the text format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = dict(_context.get())
        for key in CONTEXT_KEYS:
            if not hasattr(record, key) and key in context:
                setattr(record, key, context[key])
        parts = [f"{key}={getattr(record, key)}" for key in CONTEXT_KEYS if hasattr(record, key)]
        record.job = f" [{' '.join(parts)}]" if parts else ""
        return True


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(JSON_FIELDS, rename_fields=JSON_RENAMES, timestamp=False,
                             reserved_attrs=[*_reserved_attributes(), "job"])
    return logging.Formatter(TEXT_FORMAT)


def _reserved_attributes() -> list[str]:
    """LogRecord's own attributes: only the context keys and ``extra=`` values become JSON fields."""
    return [*vars(logging.LogRecord("", 0, "", 0, "", None, None)), "message", "asctime", "taskName"]


def configure_logging(level: str, log_format: str = "text", logs: Path | None = None,
                      file_name: str = "segmamba.log") -> None:
    """Root logging to stderr in ``log_format``; also to ``logs/file_name`` when that folder is writable."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    problem = None
    if logs is not None:
        try:
            logs.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.handlers.RotatingFileHandler(
                logs / file_name, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_COUNT, encoding="utf-8"))
        except OSError as error:
            problem = f"log folder {logs} cannot be written ({error.strerror or error}); logging to stderr only"
    for handler in handlers:
        handler.setFormatter(formatter(log_format))
        handler.addFilter(ContextFilter())
    logging.basicConfig(level=getattr(logging, level), handlers=handlers, force=True)
    if problem:
        logging.getLogger(__name__).warning(problem)


def setup_logging(settings: Settings, file_name: str = "segmamba.log") -> None:
    """Logging as ``settings`` say (level, format, logs folder), for the CLI and the worker process alike."""
    level = settings.log_level
    configure_logging(level, settings.log_format, settings.logs, file_name)
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
    # holoscan (imported by monai) warns about the stack size at import; it runs fine on CPU
    warnings.filterwarnings("ignore", message="Current stack size", category=RuntimeWarning)
