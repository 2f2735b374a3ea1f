"""Forward selective-scan timings on the CPU: `.venv/bin/python benchmarks/bench_scan.py`.

Each measurement runs in its own subprocess (so peak RSS is that path's own), float32,
torch.set_num_threads(2) (--threads), under torch.no_grad(), with D, z, delta_bias and softplus, and
realistic steps (delta_bias from dt in [1e-3, 0.1], A = -(1..N)). Times are the best of
`--repeats` calls after one warm-up call (which includes numba's JIT compile or cache load);
"CPU s" is the process CPU time of that call, all threads together.
The reference loop is timed on a prefix of the sequence and extrapolated linearly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(262_144, 96, 16), (32_768, 96, 16)]
PATHS = {
    "reference": "reference (sequential loop)",
    "kernel": "chunked, auto = numba kernel (default)",
    "torch": "chunked, torch path (no numba)",
}
REFERENCE_PREFIX = 8192


def make_inputs(length: int, dim: int, n_state: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    dt = torch.exp(torch.rand(dim, generator=g) * math.log(100.0) + math.log(1e-3))
    return {
        "u": torch.randn(1, dim, length, generator=g),
        "delta": 0.5 * torch.randn(1, dim, length, generator=g),
        "A": -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(1, n_state, length, generator=g),
        "C": torch.randn(1, n_state, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(1, dim, length, generator=g),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(path: str, length: int, dim: int, n_state: int, repeats: int, threads: int) -> dict[str, float]:
    """Run one path in this process and return its timings."""
    sys.path.insert(0, str(ROOT))
    from segmamba.scan.chunked import chunked_scan
    from segmamba.scan.reference import reference_scan

    torch.set_num_threads(threads)
    run_len = min(length, REFERENCE_PREFIX) if path == "reference" else length
    inputs = make_inputs(run_len, dim, n_state)
    if path == "reference":
        def fn() -> torch.Tensor:
            return reference_scan(**inputs, delta_softplus=True)
    else:
        def fn() -> torch.Tensor:
            return chunked_scan(**inputs, delta_softplus=True, use_kernel=path == "kernel")
    rss_inputs = rss_mb()
    times, cpu_times = [], []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    scale = length / run_len
    return {"first": times[0] * scale, "best": min(times[1:]) * scale, "cpu": min(cpu_times[1:]) * scale,
            "rss_inputs_mb": rss_inputs,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "scale": scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch (and numba) threads")
    parser.add_argument("--one", nargs=4, metavar=("PATH", "L", "E", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        path, *dims = args.one
        print(json.dumps(measure(path, *map(int, dims), repeats=args.repeats, threads=args.threads)))
        return
    print(f"threads: {args.threads}; load average at start: {os.getloadavg()[0]:.2f} "
          "(other processes skew wall times, tiny multi-threaded torch ops most)")
    header = f"{'L':>8} {'E':>3} {'N':>3}  {'path':<48} {'seconds':>8} {'x ref':>7} {'CPU s':>7} {'first call':>10} " \
             f"{'inputs MB':>9} {'peak RSS MB':>11}"
    print(header)
    print("-" * len(header))
    for length, dim, n_state in SIZES:
        ref_best = None
        for path, label in PATHS.items():
            repeats = 1 if path == "reference" else args.repeats
            cmd = [sys.executable, __file__, "--repeats", str(repeats), "--threads", str(args.threads), "--one", path,
                   str(length), str(dim), str(n_state)]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            ref_best = result["best"] if path == "reference" else ref_best
            if result["scale"] > 1:
                label = f"{label}: {REFERENCE_PREFIX} steps x{result['scale']:g}"
            ratio = f"{ref_best / result['best']:.1f}" if ref_best else "-"
            print(f"{length:>8} {dim:>3} {n_state:>3}  {label:<48} {result['best']:>8.3f} {ratio:>7} "
                  f"{result['cpu']:>7.3f} {result['first']:>10.3f} {result['rss_inputs_mb']:>9.0f} "
                  f"{result['peak_rss_mb']:>11.0f}")


if __name__ == "__main__":
    main()
