"""Intake statuses a sender relies on (PS3.4), the quarantine, duplicates under one SOP Instance UID,
and a full disk (0xA700 while it lasts, Success again once space returns)."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from app.node.receive import intake as intake_module
from app.node.receive.intake import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    SUCCESS,
    UID_CONFLICT,
    Expected,
    Intake,
    Limits,
)
from app.node.receive.quarantine import Quarantine
from app.node.state.journal import Journal
from app.node.state.spool import Spool
from tests.support.node_peers import write_small_study

MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def instance_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("one") / "study"
    write_small_study(folder, seed=301, roles=("t1c",))
    return sorted(folder.iterdir())[0].read_bytes()


@pytest.fixture()
def intake(tmp_path: Path) -> Any:
    spool = Spool(tmp_path / "spool")
    journal = Journal(spool.journal_path)
    yield Intake(spool, journal, Limits(quarantine_bytes=64 << 20))
    journal.close()


def _encode(dataset: pydicom.Dataset, syntax: str | None = None) -> bytes:
    buffer = io.BytesIO()
    if syntax:
        dataset.file_meta.TransferSyntaxUID = syntax
    dataset.save_as(buffer, implicit_vr=dataset.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian,
                    little_endian=True, enforce_file_format=True)
    return buffer.getvalue()


def _variant(data: bytes, **changes: Any) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    return _encode(dataset)


def _wrong_vr_rows(data: bytes) -> bytes:
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset[0x00280010] = pydicom.DataElement(0x00280010, "LO", "abc")  # Rows as text
    return _encode(dataset)


def _deflated_garbage() -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MR, "1.2.3"
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO(b"\0" * 128 + b"DICM")
    buffer.seek(0, io.SEEK_END)
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue() + bytes(range(256)) * 2  # not a deflate stream


def _bad_inputs(data: bytes) -> dict[str, tuple[bytes, int, str]]:
    return {
        "garbage": (os.urandom(3000), CANNOT_UNDERSTAND, "not a DICOM file"),
        "truncated pixels": (data[: len(data) - 100], CANNOT_UNDERSTAND, "PixelData truncated"),
        "cut in the header": (data[:400], DATASET_MISMATCH, "lacks StudyInstanceUID"),
        "corrupt deflate": (_deflated_garbage(), CANNOT_UNDERSTAND, "unreadable dataset (error)"),
        "no SOP Instance UID": (_variant(data, SOPInstanceUID=None), DATASET_MISMATCH, "lacks SOPInstanceUID"),
        "no pixel data": (_variant(data, PixelData=None), DATASET_MISMATCH, "image without PixelData"),
        "hostile UID": (_variant(data, SOPInstanceUID="1.2.3.../../x"), CANNOT_UNDERSTAND,
                        "SOPInstanceUID is not a valid DICOM UID"),
        "wrong VR rows": (_wrong_vr_rows(data), DATASET_MISMATCH, "unusable Rows/Columns"),
    }


def test_bad_inputs_get_ps34_statuses_with_a_reason_that_fits_the_comment(intake: Intake,
                                                                         instance_bytes: bytes) -> None:
    for name, (data, status, words) in _bad_inputs(instance_bytes).items():
        result = intake.accept(data, "MOD@127.0.0.1:1")
        assert (result.status, name) == (status, name), result.reason
        assert words in result.comment and len(result.comment) <= 64, (name, result.comment)
        assert "1.2.826" not in result.comment, "the comment says the reason, not the UID"
        assert result.status != OUT_OF_RESOURCES and not result.transient, "bad data must not invite retries"
        assert result.quarantined is not None
        record = json.loads(result.quarantined.read_text())
        assert record["status"] == f"0x{status:04X}" and words in record["reason"]
        assert record["source"] == "MOD@127.0.0.1:1"
        assert (result.quarantined.parent / record["data"]).read_bytes() == data, "the refused bytes are kept"
    assert intake.journal.query("SELECT COUNT(*) FROM instances")[0][0] == 0


def test_the_request_must_match_the_dataset(intake: Intake, instance_bytes: bytes) -> None:
    sop_uid = str(pydicom.dcmread(io.BytesIO(instance_bytes)).SOPInstanceUID)
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assert intake.accept(instance_bytes, "MOD", Expected(ct, sop_uid)).status == DATASET_MISMATCH
    other = intake.accept(instance_bytes, "MOD", Expected(MR, "1.2.3.4"))
    assert other.status == DATASET_MISMATCH and "differs from the C-STORE request" in other.comment
    assert intake.accept(instance_bytes, "MOD", Expected(MR, sop_uid)).status == SUCCESS


def test_quarantine_is_bounded_and_keeps_the_newest(tmp_path: Path) -> None:
    quarantine = Quarantine(tmp_path / "q", max_bytes=20_000)
    kept = [quarantine.keep(bytes([n]) * 3000, CANNOT_UNDERSTAND, f"reason {n}", "MOD") for n in range(20)]
    size = sum(p.stat().st_size for p in (tmp_path / "q").iterdir())
    assert size <= 20_000 and quarantine.total == size
    assert kept[-1].exists() and not kept[0].exists(), "the oldest go first"
    assert json.loads(kept[-1].read_text())["reason"] == "reason 19"
    huge = quarantine.keep(b"x" * 50_000, CANNOT_UNDERSTAND, "huge", "MOD")
    assert json.loads(huge.read_text())["data"].startswith("not kept"), "too big: only the reason is kept"
    assert Quarantine(tmp_path / "q", max_bytes=20_000).total == quarantine.total, "the bound survives a restart"


def test_identical_resend_is_success_and_a_different_instance_is_refused(intake: Intake,
                                                                        instance_bytes: bytes) -> None:
    first = intake.accept(instance_bytes, "MOD")
    assert first.ok and not first.duplicate
    again = intake.accept(instance_bytes, "OTHER")
    assert again.ok and again.duplicate
    implicit = _encode(pydicom.dcmread(io.BytesIO(instance_bytes)), ImplicitVRLittleEndian)
    assert implicit != instance_bytes
    same = intake.accept(implicit, "OTHER")
    assert same.ok and same.duplicate, "the same instance in another transfer syntax is the same instance"

    different = _variant(instance_bytes, SeriesDescription="something else")
    refused = intake.accept(different, "OTHER@10.0.0.9:104")
    assert refused.status == UID_CONFLICT
    assert refused.comment == "SOP Instance UID already used, SeriesDescription differs"
    [stored] = list(intake.spool.studies.rglob("*.dcm"))
    assert stored.read_bytes() == instance_bytes, "the first is kept"
    [audit] = intake.journal.query("SELECT * FROM audit WHERE event = 'instance-conflict'")
    assert audit["actor"] == "OTHER@10.0.0.9:104" and "first, from MOD, is kept" in audit["detail"]
    assert intake.journal.study_totals(str(pydicom.dcmread(stored).StudyInstanceUID))[0] == 1


def test_concurrent_duplicates_leave_file_and_row_from_the_same_sender(intake: Intake, instance_bytes: bytes,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    senders = 6
    contents = {f"SENDER{n}": _variant(instance_bytes, SeriesDescription=f"variant {n}") for n in range(senders)}
    write = intake.spool.store_instance

    def slow_write(study: str, sop: str, data: bytes) -> Path:
        time.sleep(0.05)  # widen the window between the check and the write
        return write(study, sop, data)

    monkeypatch.setattr(intake.spool, "store_instance", slow_write)
    barrier = threading.Barrier(senders)
    results: dict[str, int] = {}

    def send(name: str) -> None:
        barrier.wait()
        results[name] = intake.accept(contents[name], name).status

    threads = [threading.Thread(target=send, args=(name,)) for name in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(results.values()) == {SUCCESS: 1, UID_CONFLICT: senders - 1}
    [winner] = [name for name, status in results.items() if status == SUCCESS]
    [row] = intake.journal.query("SELECT * FROM instances")
    assert row["calling_ae"] == winner and Path(row["path"]).read_bytes() == contents[winner]


def test_full_disk_answers_out_of_resources_until_space_returns(intake: Intake, instance_bytes: bytes,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    intake.limits = Limits(min_free_bytes=100 << 20)
    real_usage = intake_module.shutil.disk_usage
    monkeypatch.setattr(intake_module.shutil, "disk_usage", lambda path: real_usage(path)._replace(free=50 << 20))
    full = intake.accept(instance_bytes, "MOD")
    assert (full.status, full.transient) == (OUT_OF_RESOURCES, True) and "disk full" in full.comment
    assert full.quarantined is None and not list(intake.spool.studies.rglob("*.dcm"))
    monkeypatch.undo()

    def no_space(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    assert intake.accept(instance_bytes, "MOD").comment == "node disk full, retry later"
    monkeypatch.undo()

    def journal_full(_record: Any) -> bool:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(intake.journal, "record_instance", journal_full)
    journal_failed = intake.accept(instance_bytes, "MOD")
    assert journal_failed.status == OUT_OF_RESOURCES and "disk full" in journal_failed.comment
    assert not list(intake.spool.studies.rglob("*.dcm")), "no file without its journal row"
    monkeypatch.undo()

    recovered = intake.accept(instance_bytes, "MOD")
    assert recovered.ok and not recovered.duplicate, "recovers by itself once space returns"


def test_a_purged_instance_resent_is_acknowledged(intake: Intake, instance_bytes: bytes) -> None:
    assert intake.accept(instance_bytes, "MOD").ok
    for path in intake.spool.studies.rglob("*.dcm"):
        path.unlink()  # retention removed the spool files of the finished study
    resent = intake.accept(instance_bytes, "MOD")
    assert resent.ok and resent.duplicate

