"""The fuzz corpus (tests/support/fuzz_corpus.py) through the real node: every hostile file is refused or
fails its own study, good studies sent among them still end as one SEG each, the node stays
healthy, nothing stays receiving or processing. (All of it, >= 500 cases: benchmarks/soak_node.py.)"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.support.fuzz_corpus import KINDS, fuzz_cases
from tests.support.node_peers import NodeProcess, Orthanc, copy_as_new_study, send_study, wait_for, write_small_study

FAST_CASES = 3 * len(KINDS)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "study"
    write_small_study(folder, seed=501)
    return folder


def test_corpus_is_seeded_and_covers_every_kind(source: Path) -> None:
    files = sorted(source.iterdir())
    first = list(fuzz_cases(files, len(KINDS), seed=9))
    again = list(fuzz_cases(files, len(KINDS), seed=9))
    assert [c.data for c in first] == [c.data for c in again], "same seed, same bytes"
    assert [c.kind for c in first] == list(KINDS)
    assert [c.data for c in fuzz_cases(files, len(KINDS), seed=10)] != [c.data for c in first]


def test_hostile_files_fail_alone_among_good_studies(source: Path, tmp_path: Path) -> None:
    orthanc = Orthanc(tmp_path / "orthanc").start()
    inbox = tmp_path / "inbox"
    node = NodeProcess(tmp_path / "node", orthanc, inbox=inbox, stable_seconds=2).start()
    try:
        good = [copy_as_new_study(source, tmp_path / f"good{n}", 40 + n) for n in range(2)]
        cases = list(fuzz_cases(sorted(source.iterdir()), FAST_CASES, seed=13))

        def drop() -> None:
            for case in cases:
                (inbox / f".{case.name}").write_bytes(case.data)
                (inbox / f".{case.name}").rename(inbox / case.name)

        dropper = threading.Thread(target=drop)
        dropper.start()
        assert send_study(tmp_path / "good0", node.port)
        dropper.join()
        assert send_study(tmp_path / "good1", node.port)
        wait_for(lambda: set(good) <= {s["StudyInstanceUID"] for s in orthanc.segs()}, 180, "both good SEGs")
        wait_for(lambda: not any(p.is_file() for p in inbox.iterdir()), 60, "the inbox to be drained")

        def settled() -> bool:
            return node.journal_rows("SELECT COUNT(*) FROM studies WHERE state = 'receiving'") == [(0,)] and \
                node.journal_rows("SELECT COUNT(*) FROM jobs WHERE state IN ('ready', 'processing')") == [(0,)]

        wait_for(settled, 60, "every study decided")
        states = Counter(state for (uid, state) in node.journal_rows("SELECT study_uid, state FROM jobs")
                         if uid not in good)
        assert set(states) <= {"failed"}, states
        quarantine = tmp_path / "node" / "spool" / "quarantine"  # every refused object, with its reason
        refused = len(list(quarantine.glob("*.json"))) if quarantine.exists() else 0
        assert refused + states["failed"] == FAST_CASES, "each hostile file refused or failed as its own study"
        assert Counter(s["StudyInstanceUID"] for s in orthanc.segs()) == Counter(dict.fromkeys(good, 1))
        assert node.alive() and (node.ready() or {}).get("status") == "ok"
    finally:
        node.kill()
        orthanc.stop()


def test_an_undecodable_recorded_attribute_is_refused_not_retried(source: Path, tmp_path: Path) -> None:
    """A flipped VR in PatientID (found by the soak): refused as 0xC000, not 0xA700 ('try again') forever."""
    from dataclasses import replace

    from app.config import Settings
    from app.node.service import Node
    from tests.support.node_peers import free_port

    data = sorted(source.iterdir())[0].read_bytes()
    at = data.index(b"\x10\x00\x20\x00LO")
    corrupted = data[:at + 4] + b"\x4c\xcf" + data[at + 6:]
    node = Node(replace(Settings(), spool=tmp_path / "spool", port=free_port(), http_port=0))
    try:
        result = node.intake.accept(corrupted, "MOD")
        assert (result.status, result.transient) == (0xC000, False)
        assert "PatientID cannot be decoded" in result.reason
        assert node.intake.accept(data, "MOD").ok, "the intact object is accepted"
    finally:
        node.web.httpd.server_close()
        node.journal.close()
