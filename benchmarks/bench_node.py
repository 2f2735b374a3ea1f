"""Benchmark the DICOM node end to end: N studies from S concurrent senders -> SEGs in Orthanc.

    .venv/bin/python benchmarks/bench_node.py --studies 20 --senders 4 [--model tests/models/threshold]

Starts Orthanc (Debian) and ``python -m app serve`` on free ports in a temporary folder, sends
synthetic four-sequence studies with pynetdicom, waits for every SEG in Orthanc, then reads the
node's journal. Reports: lost and duplicated SEGs; end-to-end latency per study (last instance
received -> SEG acknowledged by Orthanc, minus the quiet period); throughput (studies/hour, first
instance received -> last SEG acknowledged); the share of non-inference time in each job and in
the end-to-end latency.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.node_peers import (  # noqa: E402 - after the path set-up
    THRESHOLD_MODEL,
    NodeProcess,
    Orthanc,
    copy_as_new_study,
    send_study,
    wait_for,
    write_small_study,
)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(studies: int, senders: int, quiet: float, model: Path, root: Path) -> dict[str, object]:
    source = root / "source"
    write_small_study(source, seed=401)
    folders = [root / f"s{n}" for n in range(studies)]
    uids = [copy_as_new_study(source, folder, n) for n, folder in enumerate(folders)]
    orthanc = Orthanc(root / "orthanc").start()
    node = NodeProcess(root / "node", orthanc, quiet_seconds=quiet, stable_seconds=max(10.0, 4 * quiet))
    node.model = model
    node.start()
    try:
        started = time.time()

        def sender(index: int) -> None:
            for n in range(index, studies, senders):
                assert send_study(folders[n], node.port, calling=f"BENCH{index}"), f"study {n} refused"

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent_done = time.time()

        def delivered() -> bool:
            return node.journal_rows("SELECT COUNT(*) FROM outbox WHERE state = 'sent'")[0][0] >= studies

        wait_for(delivered, 120 + 30 * studies, "every SEG acknowledged", every=0.5)
        counts = Counter(tag["StudyInstanceUID"] for tag in orthanc.segs())
        rows = node.journal_rows(
            "SELECT s.study_uid, s.first_at, s.last_at, j.stage_times, o.sent_at FROM studies s "
            "JOIN jobs j ON j.study_uid = s.study_uid JOIN outbox o ON o.job_id = j.id WHERE o.state = 'sent'")
    finally:
        node.stop()
        orthanc.stop()
    latencies, job_seconds, infer_seconds = [], [], []
    stage_totals: Counter[str] = Counter()
    for _uid, _first, last, stage_json, sent_at in rows:
        stages = json.loads(stage_json)
        latencies.append(sent_at - last - quiet)
        job_seconds.append(sum(stages.values()))
        infer_seconds.append(stages.get("infer", 0.0))
        stage_totals.update(stages)
    span = max(r[4] for r in rows) - min(r[1] for r in rows)
    return {
        "studies": studies, "senders": senders, "quiet_seconds": quiet, "model": str(model),
        "instances_per_study": len(list(folders[0].iterdir())),
        "lost": sum(1 for uid in uids if counts[uid] == 0),
        "duplicated": sum(max(0, counts[uid] - 1) for uid in uids),
        "sending_seconds": round(sent_done - started, 1),
        "latency_seconds": {"median": round(statistics.median(latencies), 2),
                            "p95": round(percentile(latencies, 0.95), 2), "max": round(max(latencies), 2),
                            "min": round(min(latencies), 2)},
        "throughput_studies_per_hour": round(studies / span * 3600, 1),
        "job_seconds_mean": round(statistics.mean(job_seconds), 2),
        "stage_seconds_mean": {k: round(v / len(rows), 3) for k, v in stage_totals.items()},
        "non_inference_share_of_job": round(1 - sum(infer_seconds) / sum(job_seconds), 3),
        "non_inference_share_of_latency": round(1 - sum(infer_seconds) / sum(latencies), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--quiet", type=float, default=1.0, help="quiet period (s) of the study completion rule")
    parser.add_argument("--model", type=Path, default=THRESHOLD_MODEL, help="model folder (default: threshold)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_node_") as folder:
        result = run(args.studies, args.senders, args.quiet, args.model, Path(folder))
    print(json.dumps(result, indent=2))
    return 0 if result["lost"] == result["duplicated"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
