"""Idle connections against intake: how long a real sender takes while others hold connections open.

    .venv/bin/python benchmarks/bench_idle_connections.py [--rounds 5] [--idle 8] [--flood 40]

Starts ``python -m app serve`` (threshold model) on free ports, writes one small study (20
instances of one series) and times dcmtk ``storescu`` sending it: with no other connection,
with ``--idle`` TCP connections from the same address that never send a byte, and with ``--flood``
such connections from another address (127.0.0.2). ``--legacy`` runs the node with the old
settings (8 association slots, 30 s before A-ASSOCIATE-RQ, no per-peer limit) for comparison.
Prints the median and worst seconds per scenario and the extra time against the baseline.
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.node_peers import NodeProcess, copy_as_new_study, storescu, write_small_study  # noqa: E402 - after the path set-up

_COPIES = itertools.count(1)
LEGACY = {"max_associations": 8, "association_request_timeout": 30, "max_associations_per_peer": 100000}


def _idle(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _send_seconds(folder: Path, port: int) -> float:
    started = time.monotonic()
    result = storescu(folder, port)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        print(f"  storescu failed after {elapsed:.2f} s: {(result.stdout + result.stderr).strip()[-200:]}")
    return elapsed


def _scenario(folder: Path, port: int, rounds: int, idle: int, source: str) -> list[float]:
    times = []
    for _ in range(rounds):
        number = next(_COPIES)
        study = folder.parent.parent / f"copy{number}"
        copy_as_new_study(folder, study, number)  # new UIDs: every round stores, none is a duplicate
        with ExitStack() as stack:
            for _n in range(idle):
                stack.enter_context(_idle(port, source))
            time.sleep(0.3)  # let the node accept them all
            times.append(_send_seconds(study, port))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle", type=int, default=8)
    parser.add_argument("--flood", type=int, default=40)
    parser.add_argument("--legacy", action="store_true", help="the node's old intake settings, for comparison")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as temporary:
        root = Path(temporary)
        info = write_small_study(root / "study", seed=77, roles=("t1c",))
        folder = info.series[0].files[0].parent
        node = NodeProcess(root / "node", None, quiet_seconds=3600, stable_seconds=3600, forced_seconds=3600,
                           **(LEGACY if args.legacy else {}))
        node.start()
        try:
            results = {
                "baseline": _scenario(folder, node.port, args.rounds, 0, "127.0.0.1"),
                f"{args.idle} idle, same address": _scenario(folder, node.port, args.rounds, args.idle, "127.0.0.1"),
                f"{args.flood} idle from 127.0.0.2": _scenario(folder, node.port, args.rounds, args.flood,
                                                               "127.0.0.2"),
            }
        finally:
            node.stop()
    base = statistics.median(results["baseline"])
    summary = {name: {"median_s": round(statistics.median(t), 3), "max_s": round(max(t), 3),
                      "extra_median_s": round(statistics.median(t) - base, 3)} for name, t in results.items()}
    print(json.dumps({"legacy": args.legacy, "instances": len(list(folder.iterdir())), **summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
