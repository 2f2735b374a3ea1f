"""The journal: one SQLite database (WAL) holding every state the node must not forget.

Tables: ``instances`` (one row per received SOP Instance UID), ``studies`` (receiving -> queued),
``jobs`` (ready -> processing -> done | failed, reopened -> ready; one job per study), ``outbox``
(one row per result file and destination: pending -> sent | superseded; for a destination that
requires Storage Commitment pending -> committing -> sent, or back to pending when the PACS
reports a failure or no report comes by ``commit_due``), ``audit`` (who sent what,
where results went) and ``node_state`` (the writability probe).

Every state change is one transaction, so after a crash the journal shows a consistent state;
``recover()`` puts jobs that were running back to ready. A job's ``attempts`` count only failures
the job caused (bad luck of the node - a restart, a lost heartbeat, a worker that could not start -
uses ``release_job`` and costs nothing); ``runs`` counts every claim and doubles as the claim token:
a worker's updates apply only while the job is still its own run. ``revision`` numbers results:
instances arriving after a result make the study receive again and the next result supersedes it.
Methods are safe to call from several threads (one connection, one lock).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.node.state.states import JobState, OutboxState, StudyState
from operators.errors import ConfigurationError

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY, state TEXT NOT NULL DEFAULT '{StudyState.RECEIVING}', patient_id TEXT, accession TEXT,
    calling_ae TEXT, first_at REAL NOT NULL, last_at REAL NOT NULL, instances INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0, trigger TEXT);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL, sop_class TEXT,
    modality TEXT, path TEXT NOT NULL, bytes INTEGER NOT NULL, calling_ae TEXT, received_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS instances_by_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, study_uid TEXT NOT NULL UNIQUE, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, reason TEXT, trigger TEXT, created_at REAL NOT NULL,
    not_before REAL NOT NULL DEFAULT 0, started_at REAL, finished_at REAL, stage_times TEXT,
    outputs TEXT, settings TEXT);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL, destination TEXT NOT NULL,
    path TEXT NOT NULL, sop_uid TEXT NOT NULL, state TEXT NOT NULL DEFAULT '{OutboxState.PENDING}',
    attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0, last_error TEXT, sent_at REAL,
    UNIQUE (job_id, destination, sop_uid));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, event TEXT NOT NULL, study_uid TEXT,
    job_id INTEGER, actor TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS node_state (key TEXT PRIMARY KEY, value TEXT);
"""
# Job columns added after the first release (journals written by it gain them on open).
JOB_COLUMNS = {"runs": "INTEGER NOT NULL DEFAULT 0", "heartbeat_at": "REAL", "revision": "INTEGER NOT NULL DEFAULT 0",
               "stale": "INTEGER NOT NULL DEFAULT 0", "seg_series_uid": "TEXT"}
# Outbox columns of the delivery work (issue 14): the output's kind and SOP class, when the peer stored
# it, the storage commitment transaction, its deadline and when the PACS committed it.
OUTBOX_COLUMNS = {"kind": "TEXT", "sop_class": "TEXT", "stored_at": "REAL", "transaction_uid": "TEXT",
                  "commit_due": "REAL", "committed_at": "REAL"}
# Schema version (SQLite ``PRAGMA user_version``): 0 = journals of releases before versioning, whose
# missing columns the additive steps above bring in; 1 = the first versioned schema; 2 = the outbox
# delivery columns (OUTBOX_COLUMNS). Raise it with each change and add the step to ``_migrate``; a
# journal newer than this code is refused (downgrade).
SCHEMA_VERSION = 2
# Outbox rows not yet settled (neither delivered nor superseded).
UNSETTLED = (OutboxState.PENDING, OutboxState.COMMITTING)


@dataclass(frozen=True)
class InstanceRecord:
    """What the journal keeps of one received instance."""

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class: str
    modality: str
    path: Path
    size: int
    calling_ae: str
    patient_id: str = ""
    accession: str = ""


class Journal:
    """The node's durable state (see the module docstring)."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, kind in JOB_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        present = {row["name"] for row in self._db.execute("PRAGMA table_info(outbox)")}
        for column, kind in OUTBOX_COLUMNS.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_by_transaction ON outbox (transaction_uid)")
        self._migrate()

    def _migrate(self) -> None:
        """Bring the journal to SCHEMA_VERSION on open, keeping every queued study and pending send."""
        found = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            self._db.close()
            raise ConfigurationError(f"journal {self.path} has schema version {found}, newer than this node's "
                                     f"{SCHEMA_VERSION}: run the newer node, or restore the journal's backup")
        if found == SCHEMA_VERSION:
            return
        with self.transaction() as db:  # 0 -> 1 -> 2: the additive columns above; nothing else changes
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if db.execute("SELECT 1 FROM studies LIMIT 1").fetchone():  # not a journal created just now
                self._audit(db, "journal-migrated", None, None, "node", f"schema {found} -> {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    # --- intake ---------------------------------------------------------------------------------

    def has_instance(self, sop_uid: str) -> bool:
        return bool(self.query("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)))

    def study_totals(self, study_uid: str) -> tuple[int, int]:
        """(instances, bytes) received so far for a study."""
        rows = self.query("SELECT instances, bytes FROM studies WHERE study_uid = ?", (study_uid,))
        return (int(rows[0]["instances"]), int(rows[0]["bytes"])) if rows else (0, 0)

    def record_instance(self, record: InstanceRecord) -> bool:
        """Journal a received instance (already on disk); False when its SOP Instance UID was known."""
        now = self.clock()
        with self.transaction() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.sop_uid, record.study_uid, record.series_uid, record.sop_class, record.modality,
                 str(record.path), record.size, record.calling_ae, now),
            ).rowcount
            if not inserted:
                return False
            study = db.execute("SELECT state FROM studies WHERE study_uid = ?", (record.study_uid,)).fetchone()
            if study is None:
                db.execute(
                    "INSERT INTO studies (study_uid, patient_id, accession, calling_ae, first_at, last_at, instances,"
                    " bytes) VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
                    (record.study_uid, record.patient_id, record.accession, record.calling_ae, now, now, record.size),
                )
                self._audit(db, "study-first-instance", record.study_uid, None, record.calling_ae,
                            f"patient {record.patient_id!r} accession {record.accession!r}")
            else:
                db.execute(
                    "UPDATE studies SET last_at = ?, instances = instances + 1, bytes = bytes + ? WHERE study_uid = ?",
                    (now, record.size, record.study_uid),
                )
                if study["state"] != StudyState.RECEIVING:
                    self._late_instance(db, record)
        return True

    def _late_instance(self, db: sqlite3.Connection, record: InstanceRecord) -> None:
        """An instance for a study that already has a job.

        - failed job: reopened (the missing part of the study may just have arrived, e.g. a sender
          resuming after an outage); the study receives again and is queued anew;
        - done job (a result was made, perhaps sent): reopened as the next revision; the new result
          supersedes the old one (same SEG series, next instance; see app/node/worker.py);
        - processing job: marked stale; when it finishes, its result goes out and the study is
          reopened as the next revision at once;
        - ready job: nothing to do, the job reads the spool when it runs (audited).
        """
        job = db.execute("SELECT id, state FROM jobs WHERE study_uid = ?", (record.study_uid,)).fetchone()
        state = job["state"] if job is not None else None
        if state == JobState.FAILED:
            self._reopen(db, record.study_uid, job["id"], record.calling_ae,
                         f"{record.sop_uid} arrived after the job failed; the study will be processed again")
        elif state == JobState.DONE:
            self._reopen(db, record.study_uid, job["id"], record.calling_ae,
                         f"{record.sop_uid} arrived after the result; the study will be processed again and the new "
                         "result supersedes the old one", supersede=True)
        elif state == JobState.PROCESSING:
            db.execute("UPDATE jobs SET stale = 1 WHERE id = ?", (job["id"],))
            self._audit(db, "late-instance", record.study_uid, job["id"], record.calling_ae,
                        f"{record.sop_uid} arrived while the job ran; a superseding result follows")
        else:
            self._audit(db, "late-instance", record.study_uid, None, record.calling_ae,
                        f"{record.sop_uid} arrived after the study was queued; the queued job includes it")

    def _reopen(self, db: sqlite3.Connection, study_uid: str, job_id: int, actor: str, detail: str,
                supersede: bool = False) -> None:
        """The study receives again; its job waits ('reopened') to be queued anew by the completion rules."""
        db.execute("UPDATE studies SET state = ?, last_at = ? WHERE study_uid = ?",
                   (StudyState.RECEIVING, self.clock(), study_uid))
        db.execute("UPDATE jobs SET state = ?, stale = 0, revision = revision + ? WHERE id = ?",
                   (JobState.REOPENED, 1 if supersede else 0, job_id))
        self._audit(db, "study-reopened", study_uid, job_id, actor, detail)

    def touch_receiving(self, study_uid: str) -> bool:
        """A known instance was sent again: a study still being received is not quiet yet (a modality
        resending after an interruption goes through what it sent before reaching what is missing)."""
        with self.transaction() as db:
            return db.execute("UPDATE studies SET last_at = ? WHERE study_uid = ? AND state = ?",
                              (self.clock(), study_uid, StudyState.RECEIVING)).rowcount > 0

    def reopen_failed(self, study_uid: str, actor: str, detail: str) -> bool:
        """Reopen the study of a failed job (e.g. a modality resending it); False when its job has not failed."""
        if not self.query("SELECT 1 FROM jobs WHERE study_uid = ? AND state = ?", (study_uid, JobState.FAILED)):
            return False  # the common case (a resend of a done study) costs no write
        with self.transaction() as db:
            job = db.execute("SELECT id FROM jobs WHERE study_uid = ? AND state = ?",
                             (study_uid, JobState.FAILED)).fetchone()
            if job is None:
                return False
            self._reopen(db, study_uid, job["id"], actor, detail)
        return True

    def requeue(self, study_uid: str, actor: str) -> str:
        """Process a study again now (operator's command): its failed or done job becomes ready with
        no attempts used; a done job's next result supersedes the last one. Returns what was done."""
        with self.transaction() as db:
            job = db.execute("SELECT id, state FROM jobs WHERE study_uid = ?", (study_uid,)).fetchone()
            if job is None:
                known = db.execute("SELECT state FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
                return "unknown study" if known is None else "still receiving; it is queued when complete"
            if job["state"] in (JobState.READY, JobState.PROCESSING, JobState.REOPENED):
                return f"job {job['id']} is already {job['state']}"
            db.execute("UPDATE studies SET state = ? WHERE study_uid = ?", (StudyState.QUEUED, study_uid))
            db.execute(
                "UPDATE jobs SET state = ?, attempts = 0, reason = NULL, not_before = 0, stale = 0,"
                " revision = revision + ?, trigger = 'requeued' WHERE id = ?",
                (JobState.READY, 1 if job["state"] == JobState.DONE else 0, job["id"]),
            )
            self._audit(db, "job-requeued", study_uid, job["id"], actor, f"{job['state']} job queued again")
        return f"job {job['id']} ({job['state']}) queued again"

    def receiving_studies(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM studies WHERE state = ? ORDER BY first_at", (StudyState.RECEIVING,))

    def study_instances(self, study_uid: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM instances WHERE study_uid = ? ORDER BY series_uid, sop_uid", (study_uid,))

    # --- jobs -----------------------------------------------------------------------------------

    def queue_study(self, study_uid: str, trigger: str) -> int | None:
        """Close a receiving study and create its job (ready); None when it was not receiving."""
        with self.transaction() as db:
            return self._close_study(db, study_uid, trigger, JobState.READY, None)

    def fail_study(self, study_uid: str, trigger: str, reason: str) -> int | None:
        """Close a receiving study whose input cannot be judged or processed: its job is failed at once
        with ``reason`` (a resend or ``requeue`` reopens it); None when it was not receiving."""
        with self.transaction() as db:
            return self._close_study(db, study_uid, trigger, JobState.FAILED, reason)

    def _close_study(self, db: sqlite3.Connection, study_uid: str, trigger: str, state: JobState,
                     reason: str | None) -> int | None:
        now = self.clock()
        changed = db.execute(
            "UPDATE studies SET state = ?, trigger = ? WHERE study_uid = ? AND state = ?",
            (StudyState.QUEUED, trigger, study_uid, StudyState.RECEIVING),
        ).rowcount
        if not changed:
            return None
        finished = now if state == JobState.FAILED else None
        reopened = db.execute("SELECT id FROM jobs WHERE study_uid = ?", (study_uid,)).fetchone()
        if reopened is not None:
            job_id = reopened["id"]
            db.execute(
                "UPDATE jobs SET state = ?, attempts = 0, reason = ?, trigger = ?, created_at = ?, not_before = 0,"
                " started_at = NULL, finished_at = ?, stale = 0 WHERE id = ?",
                (state, reason, trigger, now, finished, job_id),
            )
        else:
            job_id = db.execute(
                "INSERT INTO jobs (study_uid, state, reason, trigger, created_at, finished_at)"
                " VALUES (?, ?, ?, ?, ?, ?)", (study_uid, state, reason, trigger, now, finished),
            ).lastrowid
        if state == JobState.FAILED:
            self._audit(db, "job-failed", study_uid, job_id, "node", str(reason))
        else:
            self._audit(db, "job-queued", study_uid, job_id, "node", trigger)
        return int(job_id or 0)

    def claim_job(self) -> sqlite3.Row | None:
        """Atomically take the oldest ready job that is due: it becomes 'processing', runs + 1 (its token)."""
        now = self.clock()
        with self.transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = ? AND not_before <= ? ORDER BY id LIMIT 1", (JobState.READY, now)
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, runs = runs + 1, started_at = ?, heartbeat_at = ? WHERE id = ?",
                (JobState.PROCESSING, now, now, row["id"]),
            )
            return db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()

    def job(self, job_id: int) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    @staticmethod
    def _owned(db: sqlite3.Connection, job_id: int, run: int | None) -> sqlite3.Row | None:
        """The job row if it is still processing under claim ``run`` (None: any run)."""
        row = db.execute("SELECT * FROM jobs WHERE id = ? AND state = ?", (job_id, JobState.PROCESSING)).fetchone()
        if row is None or (run is not None and int(row["runs"]) != int(run)):
            return None
        return row

    def beat(self, job_id: int, run: int) -> bool:
        """The worker's heartbeat for a running job; False when the job is no longer its own."""
        with self.transaction() as db:
            return bool(db.execute("UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND state = ? AND runs = ?",
                                   (self.clock(), job_id, JobState.PROCESSING, run)).rowcount)

    def finish_job(
        self, job_id: int, outputs: Mapping[str, str], stage_times: Mapping[str, float],
        sends: Iterable[tuple[str, ...]], run: int | None = None, seg_series_uid: str | None = None,
    ) -> bool:
        """Mark a job done and put its results in the outbox: ``sends`` = (destination, path, sop_uid[, kind,
        sop_class]).

        Pending sends of an earlier revision, and those awaiting a commitment report, are superseded
        (never sent again). When instances arrived while the job ran (stale), the study is reopened as
        the next revision. False (nothing changed) when the job is no longer this run's."""
        now = self.clock()
        sends = list(sends)
        with self.transaction() as db:
            job = self._owned(db, job_id, run)
            if job is None:
                return False
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, reason = NULL, outputs = ?, stage_times = ?,"
                " seg_series_uid = COALESCE(seg_series_uid, ?) WHERE id = ?",
                (JobState.DONE, now, json.dumps(dict(outputs)), json.dumps(dict(stage_times)), seg_series_uid, job_id),
            )
            new_uids = {send[2] for send in sends}
            for old in db.execute("SELECT id, sop_uid FROM outbox WHERE job_id = ? AND state IN (?, ?)",
                                  (job_id, *UNSETTLED)).fetchall():
                if old["sop_uid"] not in new_uids:
                    db.execute("UPDATE outbox SET state = ? WHERE id = ?", (OutboxState.SUPERSEDED, old["id"]))
            for destination, path, sop_uid, *more in sends:
                kind, sop_class = [*more, "seg", ""][:2]
                db.execute(
                    "INSERT OR IGNORE INTO outbox (job_id, destination, path, sop_uid, kind, sop_class)"
                    " VALUES (?, ?, ?, ?, ?, ?)", (job_id, destination, path, sop_uid, kind, sop_class or None),
                )
            self._audit(db, "job-done", job["study_uid"], job_id, "node", json.dumps(dict(outputs)))
            if job["stale"]:
                self._reopen(db, job["study_uid"], job_id, "node", "instances arrived while the job ran; the study "
                             "will be processed again and the new result supersedes this one", supersede=True)
        return True

    def retry_job(self, job_id: int, reason: str, delay: float, settings: Mapping[str, Any] | None = None,
                  run: int | None = None, counted: bool = True) -> bool:
        """Put a job back to ready after a transient failure, not before ``delay`` seconds; ``counted``:
        the failure was the job's (attempts + 1). False when the job is no longer this run's."""
        with self.transaction() as db:
            job = self._owned(db, job_id, run)
            if job is None:
                return False
            db.execute(
                "UPDATE jobs SET state = ?, reason = ?, not_before = ?, settings = ?, attempts = attempts + ?"
                " WHERE id = ?", (JobState.READY, reason, self.clock() + delay,
                                  json.dumps(dict(settings)) if settings else None, 1 if counted else 0, job_id),
            )
            self._audit(db, "job-retry" if counted else "job-released", job["study_uid"], job_id, "node", reason)
        return True

    def release_job(self, job_id: int, reason: str, delay: float, run: int | None = None) -> bool:
        """Back to ready after a failure that was not the job's (no attempt used)."""
        return self.retry_job(job_id, reason, delay, None, run, counted=False)

    def fail_job(self, job_id: int, reason: str, run: int | None = None) -> bool:
        """A permanent failure: the job stays with its reason, its input stays in the spool."""
        with self.transaction() as db:
            job = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None or (run is not None and self._owned(db, job_id, run) is None):
                return False
            db.execute("UPDATE jobs SET state = ?, reason = ?, finished_at = ?, attempts = attempts + 1"
                       " WHERE id = ?", (JobState.FAILED, reason, self.clock(), job_id))
            self._audit(db, "job-failed", job["study_uid"], job_id, "node", reason)
        return True

    def reap_stale(self, timeout: float) -> list[int]:
        """Jobs 'processing' without a heartbeat for ``timeout`` seconds (their worker died, or could not
        write) go back to ready, no attempt used. Returns their ids."""
        with self.transaction() as db:
            rows = db.execute("SELECT id, study_uid FROM jobs WHERE state = ? AND"
                              " COALESCE(heartbeat_at, started_at, 0) < ?",
                              (JobState.PROCESSING, self.clock() - timeout)).fetchall()
            for row in rows:
                db.execute("UPDATE jobs SET state = ?, not_before = 0 WHERE id = ?", (JobState.READY, row["id"]))
                self._audit(db, "job-released", row["study_uid"], row["id"], "node",
                            f"no worker heartbeat for {timeout:.0f} s; back to the queue")
        return [int(row["id"]) for row in rows]

    def recover(self) -> int:
        """At startup: jobs left 'processing' by a crash go back to ready (no attempt used). Returns how many."""
        with self.transaction() as db:
            count = db.execute("UPDATE jobs SET state = ?, not_before = 0 WHERE state = ?",
                               (JobState.READY, JobState.PROCESSING)).rowcount
            if count:
                self._audit(db, "recovered", None, None, "node", f"{count} interrupted job(s) back to ready")
        return int(count)

    def probe(self) -> None:
        """Write one row (raises sqlite3.Error when the journal cannot be written, e.g. disk full)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO node_state (key, value) VALUES ('probe', ?)", (str(self.clock()),))

    # --- outbox ---------------------------------------------------------------------------------

    def due_sends(self) -> list[sqlite3.Row]:
        return self.query("SELECT o.*, j.study_uid FROM outbox o JOIN jobs j ON j.id = o.job_id"
                          " WHERE o.state = ? AND o.next_at <= ? ORDER BY o.id", (OutboxState.PENDING, self.clock()))

    def mark_sent(self, send_id: int, detail: str, committed: bool = False) -> None:
        """Delivered: the peer acknowledged (and, with ``committed``, committed) the instance."""
        with self.transaction() as db:
            now = self.clock()
            db.execute("UPDATE outbox SET state = ?, sent_at = ?, stored_at = COALESCE(stored_at, ?),"
                       " committed_at = CASE WHEN ? THEN ? ELSE committed_at END, last_error = NULL WHERE id = ?",
                       (OutboxState.SENT, now, now, committed, now, send_id))
            row = db.execute("SELECT o.*, j.study_uid FROM outbox o JOIN jobs j ON j.id = o.job_id WHERE o.id = ?",
                             (send_id,)).fetchone()
            self._audit(db, "result-committed" if committed else "result-sent", row["study_uid"], row["job_id"],
                        row["destination"], f"{row['sop_uid']}: {detail}")

    @staticmethod
    def _back_to_pending(db: sqlite3.Connection, send_id: int, error: str, next_at: float, *,
                         only_unsettled: bool = False) -> None:
        """Put an outbox row back to pending, one attempt more, to be sent again at ``next_at`` (its
        commitment transaction forgotten); with ``only_unsettled``, only while it is pending or committing."""
        db.execute("UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?, next_at = ?,"
                   " transaction_uid = NULL, commit_due = NULL WHERE id = ? AND (? OR state IN (?, ?))",
                   (OutboxState.PENDING, error, next_at, send_id, not only_unsettled, *UNSETTLED))

    def mark_send_failed(self, send_id: int, error: str, retry_in: float) -> None:
        with self.transaction() as db:
            self._back_to_pending(db, send_id, error, self.clock() + retry_in, only_unsettled=True)

    def mark_stored(self, send_ids: Iterable[int], transaction_uid: str, wait: float, detail: str) -> None:
        """Stored by the peer, commitment to be requested under ``transaction_uid``: 'committing' until the
        PACS reports, at the latest ``wait`` seconds from now (journalled before the N-ACTION goes out, so a
        report that comes at once finds its rows, also after a restart)."""
        now = self.clock()
        with self.transaction() as db:
            for send_id in send_ids:
                db.execute("UPDATE outbox SET state = ?, stored_at = ?, sent_at = ?, transaction_uid = ?,"
                           " commit_due = ?, last_error = NULL WHERE id = ?",
                           (OutboxState.COMMITTING, now, now, transaction_uid, now + wait, send_id))
                row = db.execute("SELECT o.*, j.study_uid FROM outbox o JOIN jobs j ON j.id = o.job_id"
                                 " WHERE o.id = ?", (send_id,)).fetchone()
                self._audit(db, "result-stored", row["study_uid"], row["job_id"], row["destination"],
                            f"{row['sop_uid']}: {detail}; commitment requested ({transaction_uid})")

    def committing(self, transaction_uid: str) -> list[sqlite3.Row]:
        return self.query("SELECT o.*, j.study_uid FROM outbox o JOIN jobs j ON j.id = o.job_id"
                          " WHERE o.transaction_uid = ? AND o.state = ?", (transaction_uid, OutboxState.COMMITTING))

    def record_commitment(self, transaction_uid: str, committed: Iterable[str], failed: Mapping[str, str],
                          retry_in: Callable[[int], float], actor: str) -> tuple[list[str], list[str]]:
        """A Storage Commitment report: committed instances of the transaction are delivered ('sent'); failed
        ones (and any the report does not name) go back to pending, resent after ``retry_in(attempts)``.
        Returns the destinations of the rows (committed, to resend); both empty for an unknown or
        already settled transaction."""
        committed = set(committed)
        now = self.clock()
        done: list[str] = []
        again: list[str] = []
        with self.transaction() as db:
            rows = db.execute("SELECT o.*, j.study_uid FROM outbox o JOIN jobs j ON j.id = o.job_id"
                              " WHERE o.transaction_uid = ? AND o.state = ?",
                              (transaction_uid, OutboxState.COMMITTING)).fetchall()
            for row in rows:
                if row["sop_uid"] in committed:
                    db.execute("UPDATE outbox SET state = ?, committed_at = ?, last_error = NULL WHERE id = ?",
                               (OutboxState.SENT, now, row["id"]))
                    self._audit(db, "result-committed", row["study_uid"], row["job_id"], row["destination"],
                                f"{row['sop_uid']}: committed by {actor} ({transaction_uid})")
                    done.append(str(row["destination"]))
                    continue
                reason = failed.get(row["sop_uid"], "not named in the report")
                error = f"{row['destination']}: storage commitment failed: {reason}"
                self._back_to_pending(db, row["id"], error, now + retry_in(int(row["attempts"])))
                self._audit(db, "result-not-committed", row["study_uid"], row["job_id"], row["destination"],
                            f"{row['sop_uid']}: {reason}; sent again")
                again.append(str(row["destination"]))
        return done, again

    def expire_commitments(self, retry_in: Callable[[int], float]) -> list[sqlite3.Row]:
        """Rows still 'committing' past their ``commit_due`` (no report came): back to pending, to be
        resent after ``retry_in(attempts)``. Returns the expired rows."""
        now = self.clock()
        with self.transaction() as db:
            rows = db.execute("SELECT o.*, j.study_uid FROM outbox o JOIN jobs j ON j.id = o.job_id"
                              " WHERE o.state = ? AND o.commit_due < ?", (OutboxState.COMMITTING, now)).fetchall()
            for row in rows:
                error = f"{row['destination']}: no storage commitment report by the deadline"
                self._back_to_pending(db, row["id"], error, now + retry_in(int(row["attempts"])))
        return list(rows)

    def deliveries(self, job_ids: Iterable[int]) -> dict[int, list[sqlite3.Row]]:
        """Every outbox row of the jobs: which output went where, when stored, committed, delivered."""
        ids = [int(job_id) for job_id in job_ids]
        if not ids:
            return {}
        rows = self.query(f"SELECT * FROM outbox WHERE job_id IN ({','.join('?' * len(ids))}) ORDER BY job_id, id",
                          ids)
        found: dict[int, list[sqlite3.Row]] = {}
        for row in rows:
            found.setdefault(int(row["job_id"]), []).append(row)
        return found

    # --- audit, status and retention ------------------------------------------------------------

    def audit(self, event: str, study_uid: str | None, job_id: int | None, actor: str, detail: str) -> None:
        with self.transaction() as db:
            self._audit(db, event, study_uid, job_id, actor, detail)

    def _audit(self, db: sqlite3.Connection, event: str, study_uid: str | None, job_id: int | None,
               actor: str, detail: str) -> None:
        db.execute("INSERT INTO audit (at, event, study_uid, job_id, actor, detail) VALUES (?, ?, ?, ?, ?, ?)",
                   (self.clock(), event, study_uid, job_id, actor, detail))

    def counts(self) -> dict[str, int]:
        """Numbers for metrics and the status page."""
        rows = self.query(
            "SELECT 'jobs_' || state AS key, COUNT(*) AS n FROM jobs GROUP BY state "
            "UNION ALL SELECT 'outbox_' || state, COUNT(*) FROM outbox GROUP BY state "
            "UNION ALL SELECT 'studies_' || state, COUNT(*) FROM studies GROUP BY state"
        )
        return {row["key"]: int(row["n"]) for row in rows}

    def recent_jobs(self, limit: int = 50) -> list[sqlite3.Row]:
        return self.query(
            "SELECT j.*, s.instances, s.calling_ae, s.first_at, s.last_at, s.patient_id, s.accession,"
            " (SELECT COUNT(*) FROM outbox o WHERE o.job_id = j.id AND o.state = ?) AS sent,"
            " (SELECT COUNT(*) FROM outbox o WHERE o.job_id = j.id) AS sends,"
            " (SELECT MAX(COALESCE(o.committed_at, o.sent_at)) FROM outbox o WHERE o.job_id = j.id"
            "  AND o.state = ?) AS delivered_at,"
            " (SELECT COUNT(*) FROM outbox o WHERE o.job_id = j.id AND o.state = ?) AS committing,"
            " (SELECT o.last_error FROM outbox o WHERE o.job_id = j.id AND o.state = ?"
            "  AND o.last_error IS NOT NULL LIMIT 1) AS send_error"
            " FROM jobs j JOIN studies s ON s.study_uid = j.study_uid ORDER BY j.id DESC LIMIT ?",
            (OutboxState.SENT, OutboxState.SENT, OutboxState.COMMITTING, OutboxState.PENDING, limit))

    def finished_before(self, cutoff: float) -> list[sqlite3.Row]:
        """Finished jobs (done and fully sent, or failed) older than ``cutoff``: spool files may go."""
        return self.query(
            "SELECT * FROM jobs j WHERE j.finished_at < ? AND (j.state = ? OR (j.state = ? AND NOT EXISTS"
            " (SELECT 1 FROM outbox o WHERE o.job_id = j.id AND o.state IN (?, ?))))",
            (cutoff, JobState.FAILED, JobState.DONE, *UNSETTLED))

    def forget_study(self, study_uid: str, job_id: int) -> None:
        """Prune the rows of a study whose files retention removed (instances, job, outbox, audit with
        its PHI); one audit line without PHI remains. A later resend of the study is a new study."""
        with self.transaction() as db:
            db.execute("DELETE FROM outbox WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            db.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM studies WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM audit WHERE study_uid = ?", (study_uid,))
            self._audit(db, "study-purged", study_uid, job_id, "node", "retention: files and journal rows removed")
