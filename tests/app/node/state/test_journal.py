"""Upgrading the node keeps queued studies: the journal's schema version and its migration on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.node.state.journal import JOB_COLUMNS, SCHEMA, SCHEMA_VERSION, Journal
from operators.errors import ConfigurationError


def first_release_journal(path: Path) -> None:
    """A journal as the first release wrote it: no schema version, no later job columns, one queued study
    and one pending send."""
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    assert not {row[1] for row in db.execute("PRAGMA table_info(jobs)")} & set(JOB_COLUMNS)
    db.execute("INSERT INTO studies (study_uid, state, first_at, last_at, instances, bytes) "
               "VALUES ('1.2.3', 'queued', 1, 2, 4, 400)")
    db.execute("INSERT INTO jobs (study_uid, state, created_at) VALUES ('1.2.3', 'ready', 3)")
    db.execute("INSERT INTO studies (study_uid, state, first_at, last_at) VALUES ('1.2.4', 'queued', 1, 2)")
    db.execute("INSERT INTO jobs (study_uid, state, created_at, outputs) VALUES ('1.2.4', 'done', 3, '{}')")
    db.execute("INSERT INTO outbox (job_id, destination, path, sop_uid) VALUES (2, 'PACS', '/s.dcm', '9.9')")
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()


def test_a_first_release_journal_is_migrated_and_keeps_its_queue(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    first_release_journal(path)
    journal = Journal(path)
    assert journal.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    job = journal.claim_job()
    assert job is not None and job["study_uid"] == "1.2.3" and job["runs"] == 1
    assert [s["sop_uid"] for s in journal.due_sends()] == ["9.9"]
    events = [(r["event"], r["detail"]) for r in journal.query("SELECT event, detail FROM audit")]
    assert events == [("journal-migrated", f"schema 0 -> {SCHEMA_VERSION}")]
    journal.close()

    again = Journal(path)  # opening a current journal changes nothing
    assert [r["event"] for r in again.query("SELECT event FROM audit")] == ["journal-migrated"]
    assert again.job(1)["state"] == "processing"
    again.close()


def test_a_journal_from_a_newer_node_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    fresh = Journal(path)
    assert fresh.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    assert fresh.query("SELECT * FROM audit") == []  # a new journal is not 'migrated'
    fresh.close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(ConfigurationError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        Journal(path)
