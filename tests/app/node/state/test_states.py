"""The journal writes only states its enums name (app.node.state.states), and its counts are keyed by them."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from app.node.state.journal import InstanceRecord, Journal
from app.node.state.states import JobState, OutboxState, StudyState
from tests.support.node_peers import Clock

TABLES: dict[str, type[StrEnum]] = {"studies": StudyState, "jobs": JobState, "outbox": OutboxState}


def _record(sop: str, study: str) -> InstanceRecord:
    return InstanceRecord(sop, study, f"{study}.1", "1.2.840.10008.5.1.4.1.1.4", "MR", Path(f"/x/{sop}"), 10, "MOD")


def _states(journal: Journal) -> dict[str, set[str]]:
    return {table: {row["state"] for row in journal.query(f"SELECT DISTINCT state FROM {table}")}
            for table in TABLES}


def _drive(journal: Journal, clock: Clock) -> dict[str, set[str]]:
    """A study's life (received, queued, processed, sent; stored awaiting commitment; a late instance
    reopens it and the next result supersedes the first) and a failing study; every state seen."""
    seen: dict[str, set[str]] = {table: set() for table in TABLES}

    def look() -> None:
        for table, states in _states(journal).items():
            seen[table] |= states

    journal.record_instance(_record("1.1", "1.2.3"))
    journal.record_instance(_record("2.1", "1.2.4"))
    look()
    job_id = journal.queue_study("1.2.3", "quiet")
    failing = journal.queue_study("1.2.4", "quiet")
    assert job_id is not None and failing is not None
    look()
    job = journal.claim_job()
    assert job is not None and job["id"] == job_id
    look()
    assert journal.finish_job(job_id, {"segmentation": "/s.dcm"}, {"infer": 1.0},
                              [("PACS", "/s.dcm", "9.9"), ("COMMIT", "/c.dcm", "9.8")], int(job["runs"]))
    look()
    sends = {row["destination"]: row["id"] for row in journal.due_sends()}
    journal.mark_sent(sends["PACS"], "status 0x0000")
    journal.mark_stored([sends["COMMIT"]], "2.25.1", 60.0, "status 0x0000")
    look()

    clock.now += 10
    journal.record_instance(_record("1.2", "1.2.3"))  # after the result: reopened as the next revision
    look()
    assert journal.queue_study("1.2.3", "quiet") == job_id
    job = journal.claim_job()
    assert job is not None and job["id"] == job_id
    assert journal.finish_job(job_id, {"segmentation": "/s2.dcm"}, {"infer": 1.0}, [("COMMIT", "/s2.dcm", "9.7")],
                              int(job["runs"]))
    look()

    failed = journal.claim_job()
    assert failed is not None and failed["id"] == failing
    assert journal.fail_job(failing, "SeriesSelectionError: no t2f series", int(failed["runs"]))
    look()
    return seen


def test_every_state_the_journal_writes_is_a_member_of_its_enum(tmp_path: Path) -> None:
    clock = Clock()
    journal = Journal(tmp_path / "journal.sqlite3", clock=clock)
    seen = _drive(journal, clock)
    for table, states in seen.items():
        members = {member.value for member in TABLES[table]}
        assert states and states <= members, (table, states - members)
    assert {"reopened", "failed", "done"} <= seen["jobs"]
    assert {"sent", "committing", "superseded", "pending"} <= seen["outbox"]
    journal.close()


def test_counts_are_keyed_by_enum_values(tmp_path: Path) -> None:
    clock = Clock()
    journal = Journal(tmp_path / "journal.sqlite3", clock=clock)
    _drive(journal, clock)
    counts = journal.counts()
    allowed = {f"{table}_{member.value}" for table, enum in TABLES.items() for member in enum}
    assert counts and set(counts) <= allowed, set(counts) - allowed
    assert counts[f"jobs_{JobState.FAILED}"] == 1 and counts[f"studies_{StudyState.QUEUED}"] == 2
    assert counts[f"outbox_{OutboxState.SENT}"] == 1
    journal.close()
