"""The one exception type the application reports as a failed study (not a crash)."""

from __future__ import annotations


class StudyError(Exception):
    """A study that cannot be processed; the message names the study and the reason."""

    def __init__(self, study: str, reason: str) -> None:
        self.study = study
        self.reason = reason
        super().__init__(f"study {study}: {reason}")
