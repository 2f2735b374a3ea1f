"""Benchmark delivery: J jobs x K outputs to a PACS with Storage Commitment (C-STORE, N-ACTION,
N-EVENT-REPORT) and to a DICOMweb archive (STOW-RS), both Orthanc, with the PACS stopped for a while
mid-way.

    .venv/bin/python benchmarks/bench_delivery.py --jobs 20 --outputs 4 --outage 5

The journal, the result sender and the node's SCP run in this process (no model). Jobs are added
one every ``--every`` seconds; after half of them the PACS is killed, ``--outage`` seconds later
restarted. Reports: instances each destination holds and how many of them were committed more than
once (must be 0), resends (instances stored more than once), latency from job done to committed
(PACS) / delivered (archive), and the time from the PACS restart to the last commitment.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.node.send.destinations import STOW, Destination  # noqa: E402 - after the path set-up
from tests.support.node_peers import NODE_AET, DeliveryBench, Orthanc, free_port  # noqa: E402


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--outputs", type=int, default=4, help="DICOM outputs per job (SEG, SR, RTSTRUCT, SC)")
    parser.add_argument("--every", type=float, default=0.25, help="seconds between two finished jobs")
    parser.add_argument("--outage", type=float, default=5.0, help="seconds the PACS is down")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the sender's retry warnings are expected during the outage
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # connection refused while the PACS is down
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as folder:
        root = Path(folder)
        node_port = free_port()
        pacs = Orthanc(root / "pacs", modalities={"node": (NODE_AET, node_port)}).start()
        archive = Orthanc(root / "archive", aet="ARCHIVE", dicomweb=True).start()
        bench = DeliveryBench(root / "node", [
            Destination("PACS", pacs.aet, "127.0.0.1", pacs.dicom_port, storage_commitment=True),
            Destination("ARCHIVE", type=STOW, url=archive.stow_url)], node_port, commitment_timeout=30)
        bench.scp.start()
        uids: list[str] = []
        restarted_at = down_until = 0.0
        try:
            for number in range(args.jobs):
                uids += [str(ds.SOPInstanceUID) for ds in bench.add_job(args.outputs)]
                bench.sender.send_due()
                if number == args.jobs // 2:
                    pacs.stop()
                    down_until = time.time() + args.outage
                time.sleep(args.every)
                if pacs.process is None and time.time() >= down_until:
                    pacs.start()
                    restarted_at = time.time()
            if pacs.process is None:
                time.sleep(max(0.0, down_until - time.time()))
                pacs.start()
                restarted_at = time.time()
            bench.deliver(120, "every result delivered")
        finally:
            bench.scp.stop()
        done_at = {int(r["job_id"]): float(r["at"]) for r in bench.journal.query(
            "SELECT job_id, at FROM audit WHERE event = 'job-done'")}
        rows = bench.journal.query("SELECT * FROM outbox")
        committed = bench.audit("result-committed")
        stored = bench.audit("result-stored")
        pacs_uids, archive_uids = Counter(pacs.sop_instance_uids()), Counter(archive.sop_instance_uids())
        pacs.stop()
        archive.stop()

    def latency(name: str, column: str, before: int | None = None) -> list[float]:
        return [float(r[column]) - done_at[int(r["job_id"])] for r in rows
                if r["destination"] == name and (before is None or int(r["job_id"]) <= before)]

    pacs_latency, archive_latency = latency("PACS", "committed_at"), latency("ARCHIVE", "sent_at")
    print(f"{args.jobs} jobs x {args.outputs} outputs = {len(uids)} instances per destination; "
          f"PACS down {args.outage:.0f} s after job {args.jobs // 2 + 1}")
    print(f"PACS (C-STORE + storage commitment): holds {sum(1 for u in uids if pacs_uids[u] == 1)}/{len(uids)} "
          f"once, {sum(1 for u in pacs_uids if pacs_uids[u] > 1)} twice or more; committed "
          f"{sum(1 for u in uids if committed[('PACS', u)] == 1)} exactly once, "
          f"{sum(1 for u in uids if committed[('PACS', u)] > 1)} more than once; "
          f"{sum(1 for u in uids if stored[('PACS', u)] > 1)} instances stored again (resends)")
    print(f"ARCHIVE (STOW-RS): holds {sum(1 for u in uids if archive_uids[u] == 1)}/{len(uids)} once")
    print(f"job done -> committed at the PACS: median {statistics.median(pacs_latency):.2f} s, "
          f"p95 {percentile(pacs_latency, 0.95):.2f} s, max {max(pacs_latency):.2f} s (outage included)")
    calm = latency("PACS", "committed_at", args.jobs // 2)
    print(f"job done -> committed, jobs before the outage: median {statistics.median(calm):.2f} s, "
          f"p95 {percentile(calm, 0.95):.2f} s")
    print(f"job done -> delivered to the archive: median {statistics.median(archive_latency):.2f} s, "
          f"p95 {percentile(archive_latency, 0.95):.2f} s")
    last = max(float(r["committed_at"]) for r in rows if r["destination"] == "PACS")
    print(f"PACS restart -> last result committed: {last - restarted_at:.2f} s (back-off 0.2 s doubling to 1 s)")


if __name__ == "__main__":
    main()
