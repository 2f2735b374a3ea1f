"""Isolation: whatever is wrong in one study fails that study with its reason and never stops or
delays another; the completion loop survives bad headers and bugs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from app.node.completion import CompletionChecker, CompletionPolicy
from app.node.receive.intake import Intake
from app.node.state.journal import Journal
from app.node.state.spool import Spool
from tests.support.node_peers import (
    Clock,
    NodeProcess,
    Orthanc,
    copy_as_new_study,
    send_study,
    wait_for,
    write_small_study,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("isolation") / "study"
    write_small_study(folder, seed=401)
    return folder


def _with_one_bad_position(source: Path, target: Path, number: int) -> str:
    """A copy of the study in which one instance has an ImagePositionPatient of one value."""
    uid = copy_as_new_study(source, target, number)
    victim = sorted(target.iterdir())[3]
    dataset = pydicom.dcmread(victim)
    dataset.ImagePositionPatient = [12.5]
    dataset.save_as(victim)
    return uid


def _receive(intake: Intake, folder: Path) -> None:
    for path in sorted(folder.iterdir()):
        assert intake.accept(path.read_bytes(), "MOD").ok


def test_a_malformed_instance_fails_its_study_and_the_loop_goes_on(source: Path, tmp_path: Path) -> None:
    clock = Clock()
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path, clock=clock)
    intake = Intake(spool, journal)
    bad = _with_one_bad_position(source, tmp_path / "bad", 1)
    good = copy_as_new_study(source, tmp_path / "good", 2)
    _receive(intake, tmp_path / "bad")
    _receive(intake, tmp_path / "good")
    checker = CompletionChecker(journal, CompletionPolicy(quiet=2, stable=10, forced=100), clock=clock)
    clock.now += 3
    assert [uid for uid, _job, _rule in checker.check()] == [good]
    [(state, reason)] = journal.query("SELECT state, reason FROM jobs WHERE study_uid = ?", (bad,))
    assert state == "failed"
    assert reason.startswith(f"study {bad} (") and "ImagePositionPatient has 1 value(s), 3 expected" in reason
    assert "\n" not in reason
    assert journal.receiving_studies() == [], "the bad study does not stay receiving"


def test_a_bug_while_judging_one_study_does_not_stop_the_others(source: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path, clock=clock)
    intake = Intake(spool, journal)
    first = copy_as_new_study(source, tmp_path / "a", 3)
    second = copy_as_new_study(source, tmp_path / "b", 4)
    _receive(intake, tmp_path / "a")
    _receive(intake, tmp_path / "b")
    checker = CompletionChecker(journal, CompletionPolicy(quiet=2, stable=10, forced=100), clock=clock)
    judge = checker.judge

    def buggy(study_uid: str, instances: int) -> Any:
        if study_uid == first:
            raise KeyError("a bug")
        return judge(study_uid, instances)

    monkeypatch.setattr(checker, "judge", buggy)
    clock.now += 3
    assert [uid for uid, _job, _rule in checker.check()] == [second]
    [(state, reason)] = journal.query("SELECT state, reason FROM jobs WHERE study_uid = ?", (first,))
    assert state == "failed" and "internal error judging completeness (KeyError" in reason


def test_node_answers_success_then_fails_only_the_bad_study(source: Path, tmp_path: Path) -> None:
    """The issue's reproduction through the real node: the bad study fails with its reason, a good
    study sent after it still gets its SEG, /healthz stays ok."""
    orthanc = Orthanc(tmp_path / "orthanc").start()
    node = NodeProcess(tmp_path / "node", orthanc).start()
    try:
        bad = _with_one_bad_position(source, tmp_path / "bad", 5)
        good = copy_as_new_study(source, tmp_path / "good", 6)
        assert send_study(tmp_path / "bad", node.port)
        assert send_study(tmp_path / "good", node.port)
        wait_for(lambda: any(s["StudyInstanceUID"] == good for s in orthanc.segs()), 120, "the good study's SEG")
        jobs = {job["study_uid"]: job for job in node.jobs()}
        assert jobs[bad]["state"] == "failed" and "ImagePositionPatient" in jobs[bad]["reason"]
        assert not any(s["StudyInstanceUID"] == bad for s in orthanc.segs())
        assert node.journal_rows("SELECT COUNT(*) FROM studies WHERE state = 'receiving'") == [(0,)]
        assert (node.ready() or {}).get("status") == "ok"
    finally:
        node.kill()
        orthanc.stop()



def test_a_journal_that_cannot_be_written_fails_no_study(source: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while a study becomes complete: the study stays receiving and is queued once the
    journal takes writes again (it is not failed as if its input were bad)."""
    import sqlite3

    clock = Clock()
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path, clock=clock)
    intake = Intake(spool, journal)
    study = copy_as_new_study(source, tmp_path / "a", 7)
    _receive(intake, tmp_path / "a")
    checker = CompletionChecker(journal, CompletionPolicy(quiet=2, stable=10, forced=100), clock=clock)
    clock.now += 3
    with monkeypatch.context() as patched:
        patched.setattr(journal, "queue_study", lambda *_args: (_ for _ in ()).throw(
            sqlite3.OperationalError("database or disk is full")))
        assert checker.check() == []
    assert [s["study_uid"] for s in journal.receiving_studies()] == [study]
    assert [uid for uid, _job, _rule in checker.check()] == [study]
