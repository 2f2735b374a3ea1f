"""Idle connections against intake: how long a real sender takes while others hold connections open.

    .venv/bin/python benchmarks/bench_idle_connections.py [--rounds 5] [--idle 8] [--flood 40] [--repo PATH]

Starts ``python -m app serve`` (threshold model) on free ports, writes one small study (20
instances of one series) and times dcmtk ``storescu`` sending it: with no other connection,
with ``--idle`` TCP connections from the same address that never send a byte, and with ``--flood``
such connections from another address (127.0.0.2). ``--repo`` runs the node (and the test
helpers) of another checkout, e.g. an older commit, for comparison. Prints the median and worst
seconds per scenario and the extra time against the baseline; a failed send counts its time
and is reported.
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

_COPIES = itertools.count(1)


def _idle(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def _send_seconds(folder: Path, port: int, label: str) -> tuple[float, bool]:
    from tests.support.node_peers import storescu

    started = time.monotonic()
    result = storescu(folder, port)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        print(f"  {label}: storescu failed after {elapsed:.2f} s: {(result.stdout + result.stderr).strip()[-200:]}")
    return elapsed, result.returncode == 0


def _scenario(folder: Path, port: int, rounds: int, idle: int, source: str) -> list[tuple[float, bool]]:
    times = []
    for _ in range(rounds):
        from tests.support.node_peers import copy_as_new_study

        number = next(_COPIES)
        study = folder.parent.parent / f"copy{number}"
        copy_as_new_study(folder, study, number)  # new UIDs: every round stores, none is a duplicate
        with ExitStack() as stack:
            for _n in range(idle):
                stack.enter_context(_idle(port, source))
            time.sleep(0.3)  # let the node accept them all
            times.append(_send_seconds(study, port, f"{idle} idle from {source}"))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--idle", type=int, default=8)
    parser.add_argument("--flood", type=int, default=40)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose node is measured (default: this one)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo.resolve()))
    from tests.support.node_peers import NodeProcess, write_small_study
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as temporary:
        root = Path(temporary)
        info = write_small_study(root / "study", seed=77, roles=("t1c",))
        folder = info.series[0].files[0].parent
        node = NodeProcess(root / "node", None, quiet_seconds=3600, stable_seconds=3600, forced_seconds=3600)
        node.start()
        instances = len(list(folder.iterdir()))
        try:
            results = {
                "baseline": _scenario(folder, node.port, args.rounds, 0, "127.0.0.1"),
                f"{args.idle} idle, same address": _scenario(folder, node.port, args.rounds, args.idle, "127.0.0.1"),
                f"{args.flood} idle from 127.0.0.2": _scenario(folder, node.port, args.rounds, args.flood,
                                                               "127.0.0.2"),
            }
        finally:
            node.stop()
            refusals = [line for line in node.log().splitlines() if "closed" in line or "rejected" in line]
            print("\n".join(refusals[-5:]), file=sys.stderr)
    base = statistics.median(t for t, ok in results["baseline"] if ok)
    summary = {}
    for name, runs in results.items():
        times = [t for t, ok in runs if ok]
        summary[name] = {"sent": len(times), "failed": len(runs) - len(times),
                         "median_s": round(statistics.median(times), 3) if times else None,
                         "max_s": round(max(times), 3) if times else None,
                         "extra_median_s": round(statistics.median(times) - base, 3) if times else None}
    print(json.dumps({"repo": str(args.repo), "instances": instances, **summary}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
