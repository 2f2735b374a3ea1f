"""Soak the DICOM node: good studies, the whole fuzz corpus and SIGKILLs at once; then a mid-series
pause; then memory and file descriptors over many studies.

    .venv/bin/python benchmarks/soak_node.py [--studies 20 --senders 4 --fuzz 504 --kills 10 --memory-studies 100]

Phase ``soak``: ``--studies`` good studies from ``--senders`` modalities (each resends a study until
every instance is answered Success, as modalities do), ``--fuzz`` hostile files
(tests/support/fuzz_corpus.py; the parseable ones by C-STORE, the rest through the inbox) interleaved, and
``--kills`` SIGKILLs of the node process alone (its worker child must die with it) at random
moments, each followed by a restart. /healthz is polled while the node runs. Reports SEGs, lost,
duplicated, hostile studies that produced a result (must be 0), orphaned workers, health.
Phase ``pause``: a FLAIR whose second half arrives after 3 x the stable period: jobs before the
rest arrived (must be 0), then the SEG. Phase ``memory``: ``--memory-studies`` studies through a
fresh node; RSS and open fds of the node and its worker at the start, half way, and the end.
Threshold model; Orthanc as the PACS; everything in a temporary folder.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pydicom  # noqa: E402

from tests.support.fuzz_corpus import fuzz_cases  # noqa: E402
from tests.support.node_peers import (  # noqa: E402 - after the path set-up
    NodeProcess,
    Orthanc,
    copy_as_new_study,
    http_json,
    send_study,
    wait_for,
    write_small_study,
)


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    except FileNotFoundError:
        pass
    return found


def workers_of(pid: int) -> list[int]:
    """The node's worker processes (multiprocessing spawn children; not its resource tracker)."""
    found = []
    for child in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except FileNotFoundError:
            pass
    return found


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def usage(pid: int) -> dict[str, int]:
    """Resident memory (MiB) and open file descriptors of a process."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return {"rss_mib": rss // 1024, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def send_each(folders: list[Path], port: int) -> None:
    for folder in folders:
        while not send_study(folder, port):
            time.sleep(0.3)


def seg_counts(orthanc: Orthanc) -> Counter[str]:
    return Counter(tag["StudyInstanceUID"] for tag in orthanc.segs())


def store_bytes(data: bytes, port: int) -> str | None:
    """C-STORE one object given as file bytes: the status answered ('0xC000', 'none' ...); None when
    it cannot be parsed to send."""
    from pynetdicom import AE
    from pynetdicom.presentation import build_context

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        context = build_context(str(dataset.SOPClassUID))
    except Exception:
        return None
    ae = AE("FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    status = "none"
    try:
        assoc = ae.associate("127.0.0.1", port, [context], ae_title="SEGMAMBA")
        status = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else status
        if assoc.is_established:
            try:
                answer = assoc.send_c_store(dataset)
                status = f"{int(answer.Status):#06x}" if answer and "Status" in answer else "none"
            finally:
                assoc.release()
    except Exception as error:  # node killed meanwhile, unencodable dataset: all fine for a fuzzer
        status = type(error).__name__
    return status


def soak(root: Path, source: Path, studies: int, senders: int, fuzz: int, kills: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    folders = [root / f"s{n}" for n in range(studies)]
    uids = [copy_as_new_study(source, folder, n) for n, folder in enumerate(folders)]
    cases = list(fuzz_cases(sorted(source.iterdir()), fuzz, seed=seed))
    orthanc = Orthanc(root / "orthanc").start()
    inbox = root / "inbox"
    node = NodeProcess(root / "node", orthanc, inbox=inbox, quiet_seconds=1.0, stable_seconds=3)
    node.start()
    done = threading.Event()
    health = Counter[str]()
    orphans: list[int] = []
    lock = threading.Lock()

    def modality(index: int) -> None:
        for n in range(index, studies, senders):
            while not send_study(folders[n], node.port, calling=f"SENDER{index}"):
                time.sleep(0.3)

    def fuzzer() -> None:
        inbox.mkdir(exist_ok=True)
        for case in cases:
            if case.kind in ("wrong_vr", "wrong_vm", "hostile_uid"):
                status = store_bytes(case.data, node.port)
                if status is not None:
                    health[f"fuzz_c_store_status_{status}"] += 1
                    continue
            hidden = inbox / f".{case.name}"
            hidden.write_bytes(case.data)
            hidden.rename(inbox / case.name)
            health["fuzz_by_inbox"] += 1
            time.sleep(0.01)

    serving = threading.Event()  # between a restart answering /healthz and the next kill
    serving.set()

    def monitor() -> None:
        while not done.is_set():
            with lock:
                up = serving.is_set() and node.alive()
                answer = http_json(node.url + "/healthz") if up else None
            if up:
                health["healthz_ok" if answer and answer.get("status") == "ok" else "healthz_not_ok"] += 1
            time.sleep(0.5)

    threads = [threading.Thread(target=modality, args=(i,)) for i in range(senders)]
    threads.append(threading.Thread(target=fuzzer))
    watcher = threading.Thread(target=monitor)
    started = time.time()
    for thread in [*threads, watcher]:
        thread.start()
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(1.0, 6.0))
            with lock:
                serving.clear()
                assert node.process is not None
                workers = workers_of(node.process.pid)
                os.kill(node.process.pid, signal.SIGKILL)  # the node alone: its worker must follow
                node.process.wait(timeout=10)
                node.process = None
            deadline = time.monotonic() + 5
            while any(running(w) for w in workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            orphans += [w for w in workers if running(w)]
            for pid in orphans:
                os.kill(pid, signal.SIGKILL)
            with lock:
                node.start(wait=False)
            node.wait_healthy()
            serving.set()
        for thread in threads:
            thread.join(timeout=600)
        wait_for(lambda: set(uids) <= set(seg_counts(orthanc)), 600, "every good SEG", every=1.0)

        def settled() -> bool:
            return node.journal_rows("SELECT COUNT(*) FROM studies WHERE state = 'receiving'") == [(0,)] and \
                node.journal_rows("SELECT COUNT(*) FROM jobs WHERE state IN ('ready', 'processing')") == [(0,)] and \
                not any(p.is_file() for p in inbox.iterdir())

        wait_for(settled, 300, "every study decided", every=1.0)
        time.sleep(3)  # a duplicate send would arrive now
        counts = seg_counts(orthanc)
        jobs = node.journal_rows("SELECT study_uid, state FROM jobs")
        hostile = [(uid, state) for uid, state in jobs if uid not in uids]
        rejected = len(list((inbox / ".rejected").glob("*.dcm"))) if (inbox / ".rejected").exists() else 0
        ready = node.ready() or {}
        return {
            "good_studies": studies, "senders": senders, "fuzz_cases": len(cases), "kills": kills,
            "segs": sum(counts[uid] for uid in uids), "lost": sum(1 for uid in uids if counts[uid] == 0),
            "duplicated": sum(max(0, counts[uid] - 1) for uid in uids),
            "hostile_with_result": sum(1 for uid in counts if uid not in uids),
            "hostile_jobs": dict(Counter(state for _uid, state in hostile)),
            "hostile_refused_by_inbox": rejected,
            "orphaned_workers": len(orphans), "health": dict(health),
            "ready_at_end": ready.get("status"), "seconds": round(time.time() - started, 1),
        }
    finally:
        done.set()
        watcher.join()
        node.kill()
        orthanc.stop()


def pause(root: Path, source: Path) -> dict[str, Any]:
    orthanc = Orthanc(root / "orthanc-pause").start()
    node = NodeProcess(root / "node-pause", orthanc, quiet_seconds=1.0, stable_seconds=3).start()
    try:
        folder = root / "paused"
        study = copy_as_new_study(source, folder, 900)
        headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()}
        flair = sorted((p for p, h in headers.items() if h.SeriesDescription == "Ax T2 FLAIR"),
                       key=lambda p: int(headers[p].InstanceNumber))
        for path in flair:
            dataset = pydicom.dcmread(path)
            dataset.ImagesInAcquisition = len(flair)
            dataset.save_as(path)
        later = root / "paused-later"
        later.mkdir()
        for path in flair[len(flair) // 2:]:
            path.rename(later / path.name)
        assert send_study(folder, node.port)
        time.sleep(9)  # 3 x stable
        jobs_during_pause = node.journal_rows("SELECT COUNT(*) FROM jobs")[0][0]
        segs_during_pause = len(orthanc.segs())
        resumed = time.time()
        assert send_study(later, node.port)
        wait_for(lambda: seg_counts(orthanc)[study] >= 1, 120, "the SEG after the pause")
        return {"flair_instances": len(flair), "held_back": len(flair) - len(flair) // 2, "pause_seconds": 9,
                "jobs_during_pause": jobs_during_pause, "segs_during_pause": segs_during_pause,
                "seconds_from_resume_to_seg": round(time.time() - resumed, 1), "segs_after": seg_counts(orthanc)[study]}
    finally:
        node.kill()
        orthanc.stop()


def memory(root: Path, source: Path, studies: int, senders: int) -> dict[str, Any]:
    orthanc = Orthanc(root / "orthanc-memory").start()
    node = NodeProcess(root / "node-memory", orthanc, quiet_seconds=0.5, stable_seconds=3).start()
    samples: dict[str, Any] = {}
    try:
        wait_for(lambda: (node.ready() or {}).get("status") == "ok", 120, "the node ready")
        assert node.process is not None
        pid = node.process.pid

        def sample(label: str) -> None:
            worker = [c for c in workers_of(pid) if running(c)]
            samples[label] = {"node": usage(pid), "worker": usage(worker[0]) if worker else None}

        sample("start")
        folders = [root / f"m{n}" for n in range(studies)]
        for n, folder in enumerate(folders):
            copy_as_new_study(source, folder, 5000 + n)

        def sent() -> int:
            return int(node.journal_rows("SELECT COUNT(*) FROM outbox WHERE state = 'sent'")[0][0])

        half = studies // 2
        for batch, target in ((folders[:half], half), (folders[half:], studies)):
            threads = [threading.Thread(target=send_each, args=(batch[i::senders], node.port)) for i in range(senders)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wait_for(lambda target=target: sent() >= target, 60 + 10 * studies, f"{target} SEGs", every=1.0)
            time.sleep(1)
            sample(f"after_{target}")
        samples["studies_sent"] = sent()
        return samples
    finally:
        node.kill()
        orthanc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--fuzz", type=int, default=504, help="hostile files (72 of each of the 7 kinds)")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--memory-studies", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--phases", default="soak,pause,memory")
    args = parser.parse_args()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="soak_node_") as folder:
        root = Path(folder)
        source = root / "source"
        write_small_study(source, seed=401)
        phases = args.phases.split(",")
        if "soak" in phases:
            result["soak"] = soak(root, source, args.studies, args.senders, args.fuzz, args.kills, args.seed)
            print(json.dumps({"soak": result["soak"]}), flush=True)
        if "pause" in phases:
            result["pause"] = pause(root, source)
            print(json.dumps({"pause": result["pause"]}), flush=True)
        if "memory" in phases:
            result["memory"] = memory(root, source, args.memory_studies, args.senders)
    print(json.dumps(result, indent=2))
    soaked = result.get("soak", {})
    ok = soaked.get("lost", 0) == soaked.get("duplicated", 0) == soaked.get("hostile_with_result", 0) == 0
    return 0 if ok and soaked.get("orphaned_workers", 0) == 0 and result.get("pause", {}).get(
        "jobs_during_pause", 0) == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
