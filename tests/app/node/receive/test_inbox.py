"""The watched inbox (app/node/receive/inbox.py): a dropped file enters the intake once it has stopped
changing for ``settle`` seconds and leaves the inbox; a refused one is quarantined with its inbox name and
deleted while the others still go in; a duplicate is acknowledged and deleted; a file the node cannot
store for lack of disk stays and is tried again later; hidden names are left alone; subfolders and files
present at start are taken."""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

import app.node.receive.inbox as inbox_module
from app.node.receive.inbox import Inbox
from app.node.receive.intake import Intake, Limits
from app.node.state.journal import Journal
from app.node.state.spool import Spool
from tests.support.node_peers import Clock, wait_for, write_instance

SETTLE = 2.0


@pytest.fixture()
def intake(tmp_path: Path) -> Intake:
    spool = Spool(tmp_path / "spool")
    return Intake(spool, Journal(spool.journal_path))


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The inbox's monotonic clock, set by the test (the stability rule without waiting)."""
    now = Clock()
    monkeypatch.setattr(inbox_module, "time", types.SimpleNamespace(monotonic=now))
    return now


@pytest.fixture()
def inbox(tmp_path: Path, intake: Intake, clock: Clock) -> Inbox:
    """An inbox driven by the test: ``notice`` (what the watchdog events call) and ``poll``."""
    return Inbox(tmp_path / "inbox", intake, settle=SETTLE)


def _instance(path: Path, study_uid: str | None = None) -> pydicom.Dataset:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_instance(path, study_uid or generate_uid())


def _sources(intake: Intake) -> dict[str, str]:
    """SOP Instance UID -> the calling AE the journal recorded (``inbox:<file name>``)."""
    return {row["sop_uid"]: row["calling_ae"] for row in intake.journal.query("SELECT * FROM instances")}


def _quarantined(intake: Intake) -> list[dict[str, str]]:
    return [json.loads(p.read_text()) for p in sorted(intake.quarantine.folder.glob("*.json"))]


def test_a_settled_file_is_stored_journalled_and_removed(intake: Intake, inbox: Inbox, clock: Clock) -> None:
    path = inbox.folder / "ct1.dcm"
    dataset = _instance(path)
    data = path.read_bytes()
    inbox.notice(path)
    clock.now += SETTLE
    inbox.poll()
    sop, study = str(dataset.SOPInstanceUID), str(dataset.StudyInstanceUID)
    assert _sources(intake) == {sop: "inbox:ct1.dcm"}
    assert intake.spool.instance_path(study, sop).read_bytes() == data, "the spool holds the file as dropped"
    assert not path.exists(), "a stored file leaves the inbox"
    assert _quarantined(intake) == []


def test_a_file_still_being_written_is_taken_only_once_it_has_settled(intake: Intake, inbox: Inbox,
                                                                      clock: Clock) -> None:
    folder = inbox.folder
    complete = folder.parent / "complete.dcm"
    dataset = _instance(complete)
    data = complete.read_bytes()
    growing = folder / "growing.dcm"
    folder.mkdir()
    growing.write_bytes(data[: len(data) // 2])  # the writer has written half so far
    inbox.notice(growing)
    clock.now += 1.5
    inbox.poll()
    assert growing.exists() and _sources(intake) == {} and _quarantined(intake) == [], \
        "a file that changed less than settle seconds ago is not read"
    growing.write_bytes(data)  # the rest arrives: each change starts the wait anew
    inbox.notice(growing)
    clock.now += 1.5
    inbox.poll()
    assert growing.exists() and _sources(intake) == {} and _quarantined(intake) == [], \
        "settle counts from the last change, not the first"
    clock.now += 0.5  # settle (2 s) after the last change
    inbox.poll()
    sop = str(dataset.SOPInstanceUID)
    assert _sources(intake) == {sop: "inbox:growing.dcm"} and not growing.exists()
    assert intake.spool.instance_path(str(dataset.StudyInstanceUID), sop).read_bytes() == data, "stored whole"
    assert _quarantined(intake) == [], "never refused as truncated"


def test_a_non_dicom_file_is_quarantined_and_deleted_while_the_others_go_in(intake: Intake, inbox: Inbox,
                                                                            clock: Clock) -> None:
    folder = inbox.folder
    good = [_instance(folder / f"good{n}.dcm") for n in range(2)]
    garbage = b"this is a scanned PDF, not DICOM\n" * 40
    (folder / "notes.pdf").write_bytes(garbage)
    for name in ("good0.dcm", "notes.pdf", "good1.dcm"):
        inbox.notice(folder / name)
    clock.now += SETTLE
    inbox.poll()
    assert _sources(intake) == {str(d.SOPInstanceUID): f"inbox:good{n}.dcm" for n, d in enumerate(good)}
    assert list(folder.iterdir()) == [], "stored and refused files alike leave the inbox"
    [kept] = _quarantined(intake)
    assert (kept["status"], kept["source"], kept["bytes"]) == ("0xC000", "inbox:notes.pdf", len(garbage))
    assert "not a DICOM file" in kept["reason"]
    assert (intake.quarantine.folder / kept["data"]).read_bytes() == garbage, "the refused bytes are kept"


def test_duplicates_are_acknowledged_and_a_conflicting_instance_is_refused(intake: Intake, inbox: Inbox,
                                                                           clock: Clock) -> None:
    folder = inbox.folder
    first = _instance(folder / "a.dcm")
    (folder / "a-again.dcm").write_bytes((folder / "a.dcm").read_bytes())
    inbox.notice(folder / "a.dcm")
    clock.now += SETTLE
    inbox.poll()
    conflicting = copy.deepcopy(first)
    conflicting.PatientID = "SOMEONE-ELSE"
    conflicting.save_as(folder / "a-edited.dcm", enforce_file_format=True)
    for name in ("a-again.dcm", "a-edited.dcm"):
        inbox.notice(folder / name)
    clock.now += SETTLE
    inbox.poll()
    sop = str(first.SOPInstanceUID)
    assert _sources(intake) == {sop: "inbox:a.dcm"}, "one row, from the first file"
    assert list(folder.iterdir()) == [], "the duplicate and the refused file are deleted too"
    assert pydicom.dcmread(intake.spool.instance_path(str(first.StudyInstanceUID), sop)).PatientID == first.PatientID
    [kept] = _quarantined(intake)
    assert (kept["status"], kept["source"]) == ("0xC001", "inbox:a-edited.dcm"), "only the conflict is refused"


def test_a_file_the_node_has_no_disk_for_stays_and_is_retried(intake: Intake, inbox: Inbox, clock: Clock) -> None:
    folder = inbox.folder
    path = folder / "mr.dcm"
    dataset = _instance(path)
    intake.limits = Limits(min_free_bytes=1 << 60)  # the spool's disk is "full"
    inbox.notice(path)
    clock.now += SETTLE
    inbox.poll()
    assert path.exists() and _sources(intake) == {} and _quarantined(intake) == [], \
        "a shortage is not the file's fault: it is neither refused nor lost"
    intake.limits = Limits()  # space returns
    clock.now += SETTLE
    inbox.poll()
    assert path.exists(), "the retry waits longer than settle (no tight loop on a full disk)"
    clock.now += 10 * SETTLE
    inbox.poll()
    assert _sources(intake) == {str(dataset.SOPInstanceUID): "inbox:mr.dcm"} and not path.exists()


def test_the_running_inbox_takes_subfolders_and_renamed_files_but_not_hidden_ones(tmp_path: Path,
                                                                                  intake: Intake) -> None:
    folder = tmp_path / "inbox"
    before = _instance(folder / "site-a" / "day1" / "old.dcm")  # present at start, in a subfolder
    hidden = [folder / ".writing.dcm", folder / ".partial" / "x.dcm"]
    for path in hidden:
        _instance(path)
    inbox = Inbox(folder, intake, settle=0.2)
    inbox.start()
    try:
        wait_for(lambda: str(before.SOPInstanceUID) in _sources(intake), 30, "the file present at start")
        dropped = _instance(folder / ".new.dcm")  # the writer's protocol: a hidden name, then a rename
        (folder / ".new.dcm").rename(folder / "new.dcm")
        wait_for(lambda: str(dropped.SOPInstanceUID) in _sources(intake), 30, "the renamed file")
    finally:
        inbox.stop()
    assert _sources(intake) == {str(before.SOPInstanceUID): "inbox:old.dcm",
                                str(dropped.SOPInstanceUID): "inbox:new.dcm"}
    assert not (folder / "site-a" / "day1" / "old.dcm").exists() and not (folder / "new.dcm").exists()
    assert all(path.exists() for path in hidden), "hidden files and folders are the writers' own"
