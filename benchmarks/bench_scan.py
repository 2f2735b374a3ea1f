"""Selective-scan timings on the CPU: `.venv/bin/python benchmarks/bench_scan.py [--only SECTION]`.

Each measurement runs in its own subprocess (so peak RSS is that path's own), float32,
torch.set_num_threads(2) (--threads), with D, z, delta_bias and softplus, and realistic steps
(delta_bias from dt in [1e-3, 0.1], A = -(1..N)). Times are the best of `--repeats` calls after
one warm-up call (which includes numba's JIT compile or cache load); "CPU s" is the process CPU
time of that call, all threads together. Sections:

* forward: under torch.no_grad(); the reference loop is timed on a prefix of the sequence and
  extrapolated linearly; the token-major kernel (segmamba/scan/token_major.py) takes (batch, L, E)
  operands, as the ToM layer's CPU inference holds them, with the step's softplus in torch;
* grad: forward + backward (every input requires grad), the numba kernels against the chunked
  torch autograd path (timed once after the warm-up: it is slow), at L = 32,768 and at the demo
  model's per-stage scan sizes (patch 48, batch 2: L = 24^3 .. 3^3, E = 2 x feat);
* train: one training iteration (forward, cross-entropy, backward, SGD step) of the demo network
  (feat 8 16 32 64, hidden 128, patch 48, batch 2, nslices 24 12 6 3) on 1 thread, with the
  Mamba encoder frozen, unfrozen (numba backward) and unfrozen on the torch path.
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
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SIZES = [(262_144, 96, 16), (32_768, 96, 16)]
PATHS = {
    "reference": "reference (sequential loop)",
    "kernel": "chunked, auto = numba kernel (default)",
    "torch": "chunked, torch path (no numba)",
    "token_major": "token-major kernel (ToM CPU inference)",
}
REFERENCE_PREFIX = 8192
# (batch, L, E, N) for the grad section: a long sequence, then the demo model's four stages.
GRAD_SIZES = [(1, 32_768, 96, 16), (2, 13_824, 16, 16), (2, 1_728, 32, 16), (2, 216, 64, 16), (2, 27, 128, 16)]
GRAD_PATHS = {"kernel": "numba forward + backward (default)", "torch": "chunked torch autograd"}
TRAIN_MODES = {"frozen": "encoder frozen (scans without autograd)", "kernel": "unfrozen, numba backward (default)",
               "torch": "unfrozen, torch autograd scan"}


def make_inputs(length: int, dim: int, n_state: int, batch: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    dt = torch.exp(torch.rand(dim, generator=g) * math.log(100.0) + math.log(1e-3))
    return {
        "u": torch.randn(batch, dim, length, generator=g),
        "delta": 0.5 * torch.randn(batch, dim, length, generator=g),
        "A": -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, n_state, length, generator=g),
        "C": torch.randn(batch, n_state, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(batch, dim, length, generator=g),
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
    elif path == "token_major":
        fn = token_major_scan(inputs)
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


def token_major_scan(inputs: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    """The same scan as TriOrientedMamba's CPU inference runs it: (batch, L, channels) operands, the
    softplus of the step in torch, `token_major.scan_accumulate` adding into the output."""
    from segmamba.scan import token_major

    u = inputs["u"].transpose(1, 2).contiguous()
    delta = (inputs["delta"] + inputs["delta_bias"][:, None]).transpose(1, 2).contiguous()
    x_dbl = torch.cat([inputs["B"], inputs["C"]], dim=1).transpose(1, 2).contiguous()  # B then C columns
    xz = torch.cat([inputs["u"], inputs["z"]], dim=1).transpose(1, 2).contiguous()  # z: the channels E..2E
    order = token_major.direction_order(u.shape[1], "forward", 1)
    out = torch.empty_like(u)

    def fn() -> torch.Tensor:
        out.zero_()
        token_major.scan_accumulate(u, torch.nn.functional.softplus(delta), x_dbl, 0, inputs["A"], inputs["D"], xz,
                                    order, out)
        return out
    return fn


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """One warm-up call, then the best wall and CPU time of `repeats` calls, and peak RSS."""
    times, cpu_times = [], []
    for _ in range(repeats + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    return {"first": times[0], "best": min(times[1:]), "cpu": min(cpu_times[1:]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure_grad(path: str, batch: int, length: int, dim: int, n_state: int, repeats: int,
                 threads: int) -> dict[str, float]:
    """Forward + backward of one scan, every input requiring grad."""
    sys.path.insert(0, str(ROOT))
    from segmamba.scan.chunked import chunked_scan

    torch.set_num_threads(threads)
    inputs = {k: v.requires_grad_(True) for k, v in make_inputs(length, dim, n_state, batch).items()}
    upstream = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(1))

    def step() -> None:
        for v in inputs.values():
            v.grad = None
        chunked_scan(**inputs, delta_softplus=True, use_kernel=path == "kernel").backward(upstream)

    return timed(step, repeats)


def measure_train(mode: str, repeats: int) -> dict[str, float]:
    """One training iteration of the demo network on 1 thread."""
    sys.path.insert(0, str(ROOT))
    from segmamba.model import SegMamba
    from segmamba.scan import cpu_kernel

    # After the imports: set before them, this step ran ~10x slower here (torch 2.13, oneDNN).
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if mode == "torch":
        cpu_kernel.kernel_available = lambda: False  # this subprocess only
    model = SegMamba(in_chans=4, out_chans=4, feat_size=[8, 16, 32, 64], hidden_size=128, nslices=[24, 12, 6, 3])
    if mode == "frozen":
        model.vit.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.99, nesterov=True)
    g = torch.Generator().manual_seed(0)
    image, label = torch.randn(2, 4, 48, 48, 48, generator=g), torch.randint(0, 4, (2, 48, 48, 48), generator=g)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(image), label).backward()
        optimizer.step()

    return timed(step, repeats)


def run_one(args: argparse.Namespace, *spec: object) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--one", *map(str, spec)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def grad_section(args: argparse.Namespace) -> None:
    header = f"{'batch':>5} {'L':>7} {'E':>3} {'N':>3}  {'path (forward + backward)':<36} {'seconds':>8} " \
             f"{'x torch':>7} {'CPU s':>7} {'first call':>10} {'peak RSS MB':>11}"
    print(header)
    print("-" * len(header))
    for batch, length, dim, n_state in GRAD_SIZES:
        results = {}
        for path in ("torch", "kernel"):
            repeats = 1 if path == "torch" else args.repeats
            results[path] = run_one(argparse.Namespace(repeats=repeats, threads=args.threads),
                                    "grad", path, batch, length, dim, n_state)
        for path, r in results.items():
            print(f"{batch:>5} {length:>7} {dim:>3} {n_state:>3}  {GRAD_PATHS[path]:<36} {r['best']:>8.3f} "
                  f"{results['torch']['best'] / r['best']:>7.1f} {r['cpu']:>7.3f} {r['first']:>10.3f} "
                  f"{r['peak_rss_mb']:>11.0f}")


def train_section(args: argparse.Namespace) -> None:
    header = f"{'demo network, one training iteration (1 thread)':<48} {'seconds':>8} {'x frozen':>8} {'CPU s':>7} " \
             f"{'peak RSS MB':>11}"
    print(header)
    print("-" * len(header))
    results = {}
    for mode, label in TRAIN_MODES.items():
        repeats = 1 if mode == "torch" else args.repeats
        r = results[mode] = run_one(argparse.Namespace(repeats=repeats, threads=1), "train", mode)
        print(f"{label:<48} {r['best']:>8.3f} {r['best'] / results['frozen']['best']:>8.2f} {r['cpu']:>7.3f} "
              f"{r['peak_rss_mb']:>11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch (and numba) threads")
    parser.add_argument("--only", choices=("forward", "grad", "train"), help="run one section")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, path, *dims = args.one
        if kind == "grad":
            result = measure_grad(path, *map(int, dims), repeats=args.repeats, threads=args.threads)
        elif kind == "train":
            result = measure_train(path, repeats=args.repeats)
        else:
            result = measure(path, *map(int, dims), repeats=args.repeats, threads=args.threads)
        print(json.dumps(result))
        return
    print(f"threads: {args.threads}; load average at start: {os.getloadavg()[0]:.2f} "
          "(other processes skew wall times, tiny multi-threaded torch ops most)")
    if args.only in (None, "grad"):
        grad_section(args)
    if args.only in (None, "train"):
        train_section(args)
    if args.only not in (None, "forward"):
        return
    header = f"{'L':>8} {'E':>3} {'N':>3}  {'path':<48} {'seconds':>8} {'x ref':>7} {'CPU s':>7} {'first call':>10} " \
             f"{'inputs MB':>9} {'peak RSS MB':>11}"
    print(header)
    print("-" * len(header))
    for length, dim, n_state in SIZES:
        ref_best = None
        for path, label in PATHS.items():
            repeats = 1 if path == "reference" else args.repeats
            cmd = [sys.executable, __file__, "--repeats", str(repeats), "--threads", str(args.threads), "--one",
                   "forward", path, str(length), str(dim), str(n_state)]
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
