"""The error vocabulary of the application: bad input, misconfiguration, and (everything else) bugs.

- ``StudyError``: the study itself cannot be processed (bad or incomplete input). Retrying the
  same input cannot help; the node fails the job at once and keeps the study for inspection.
- ``ConfigurationError``: the installation is wrong (model card, rules, settings, missing model).
  Not the study's fault: the node keeps the job and retries it once the configuration is fixed.
- Any other exception is a bug: logged with its traceback, retried a bounded number of times.

A StudyError renders as one line, ``study <uid> (<accession or folder>): <reason>``, with the
series and the file (relative to the input folder) named where they matter, and the whole
reason on that line (multi-line details are folded into it with "; ").
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` with its lines joined by "; " (blank lines dropped, whitespace trimmed)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


class StudyError(Exception):
    """A study that cannot be processed because of its input; the message names the study and the reason.

    ``study`` is the StudyInstanceUID (or, when no UID is known, the input folder); ``accession``
    the AccessionNumber when known; ``series`` a series label (description and UID); ``file`` the
    offending file's path relative to the input folder; ``details`` an optional multi-line
    explanation for the log (the reason itself must already be complete).
    """

    def __init__(
        self,
        study: str,
        reason: str,
        *,
        accession: str = "",
        folder: str = "",
        series: str = "",
        file: str = "",
        details: str = "",
    ) -> None:
        self.study = str(study)
        self.details = details
        self.reason = one_line(reason)
        self.accession = str(accession or "")
        self.folder = str(folder or "")
        self.series = str(series or "")
        self.file = str(file or "")
        super().__init__(self.line())

    def where(self) -> str:
        """The parenthesised identification: the accession number, else the input folder."""
        return self.accession or self.folder

    def line(self) -> str:
        """``study <uid> (<accession or folder>): <reason>[; series ...][; file ...]``."""
        head = f"study {self.study}"
        if self.where() and self.where() != self.study:
            head += f" ({self.where()})"
        context = []
        if self.series and self.series not in self.reason:
            context.append(f"series {self.series}")
        if self.file and self.file not in self.reason:
            context.append(f"file {self.file}")
        return f"{head}: {'; '.join([self.reason, *context])}"

    def with_context(self, *, accession: str = "", folder: str = "") -> StudyError:
        """The same error with the accession number / input folder filled in where still unknown."""
        self.accession = self.accession or str(accession or "")
        self.folder = self.folder or str(folder or "")
        self.args = (self.line(),)
        return self

    def __str__(self) -> str:
        return self.line()


class ConfigurationError(Exception):
    """The installation is misconfigured (model card, selection rules, settings); not the study's fault."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)
