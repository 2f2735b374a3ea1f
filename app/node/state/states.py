"""The closed sets of states the journal (app.node.state.journal) keeps, one enum per table.

- ``studies``: receiving -> queued; a late instance (or a resend of a failed study) makes a queued
  study receive again.
- ``jobs``: ready -> processing -> done | failed (a study that cannot be processed is failed at
  once); a retry, a release or a restart puts a processing job back to ready; a done or failed job
  whose study receives again is reopened, and reopened -> ready when the study is queued anew.
- ``outbox`` (one row per result file and destination): pending -> sent | superseded; for a
  destination that requires Storage Commitment pending -> committing -> sent, or back to pending
  when the PACS reports a failure or no report comes in time.

The values are what the journal's SQL stores; a ``StrEnum`` member equals its string, so rows read
back compare with the members directly.
"""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    RECEIVING = "receiving"
    QUEUED = "queued"


class JobState(StrEnum):
    READY = "ready"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    REOPENED = "reopened"


class OutboxState(StrEnum):
    PENDING = "pending"
    COMMITTING = "committing"
    SENT = "sent"
    SUPERSEDED = "superseded"
