"""Full-size SegMamba on one 1x4x128^3 window beside MONAI SwinUNETR-48 and DynUNet, on the CPU.

Each network runs in each precision (float32, and the fast path: bfloat16 autocast, as
operators.precision runs it) with each memory allocator (the system's malloc, and jemalloc keeping
freed pages as app/allocator.py starts the application) in its own child process (same input, torch
threads as given), so each peak RSS is its own; times are the median of the timed repeats after one
warm-up.

    .venv/bin/python benchmarks/bench_network.py [--size 128] [--repeats 1] [--threads 2]
        [--precisions float32 bfloat16] [--allocators system jemalloc]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the repo's packages
from app import allocator  # noqa: E402 - after the path

NETWORKS = ("SegMamba (BraTS, 67.4 M)", "SwinUNETR feature_size=48", "DynUNet (nnU-Net-like)")


def build(name: str) -> torch.nn.Module:
    if name.startswith("SegMamba"):
        from segmamba import SegMamba

        return SegMamba(in_chans=4, out_chans=4, depths=[2, 2, 2, 2], feat_size=[48, 96, 192, 384])
    if name.startswith("SwinUNETR"):
        from monai.networks.nets import SwinUNETR

        return SwinUNETR(in_channels=4, out_channels=4, feature_size=48)
    from monai.networks.nets import DynUNet

    return DynUNet(
        spatial_dims=3, in_channels=4, out_channels=4, kernel_size=[[3, 3, 3]] * 6,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * 5, upsample_kernel_size=[[2, 2, 2]] * 5,
        filters=[32, 64, 128, 256, 320, 320], norm_name="instance", res_block=False,
    )


def measure(name: str, precision: str, size: int, repeats: int, threads: int, queue: mp.Queue) -> None:
    from operators.precision import autocast

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(name).eval()
    x = torch.randn(1, 4, size, size, size, generator=torch.Generator().manual_seed(1))
    params = sum(p.numel() for p in model.parameters())
    times = []
    with torch.inference_mode(), autocast(precision, torch.device("cpu")):
        for i in range(repeats + 1):
            started = time.perf_counter()
            y = model(x)
            if i:
                times.append(time.perf_counter() - started)
    assert y.shape == (1, 4, size, size, size)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((name, f"{precision} {allocator.in_use()}", statistics.median(times), peak_mib, params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    parser.add_argument("--allocators", nargs="+", choices=("system", "jemalloc"), default=["system", "jemalloc"])
    args = parser.parse_args()
    context = mp.get_context("spawn")
    rows = []
    for name in NETWORKS:
        for precision in args.precisions:
            for chosen in args.allocators:
                queue = context.Queue()
                with allocator.for_children(chosen):
                    child = context.Process(target=measure,
                                            args=(name, precision, args.size, args.repeats, args.threads, queue))
                    child.start()
                child.join()
                if child.exitcode != 0:
                    raise SystemExit(f"{name} {precision} {chosen}: the measuring process failed "
                                     f"(exit code {child.exitcode})")
                rows.append(queue.get())
    base_seconds, base_rss = rows[0][2], rows[0][3]
    own_float32: dict[str, float] = {}  # the network's first float32 run (first allocator)
    for name, run, seconds, _, _ in rows:
        if run.startswith("float32"):
            own_float32.setdefault(name, seconds)
    print(f"\n1x4x{args.size}^3 window, CPU, {args.threads} threads, median of {args.repeats}; "
          f"ratios vs {rows[0][0]} {rows[0][1]}, speed-up vs the network's own float32")
    ratio = "vs first"
    print(f"{'network':28s} {'precision allocator':>19s} {'params':>8s} {'seconds':>8s} {ratio:>9s} {'speed-up':>9s} "
          f"{'peak RSS MiB':>13s} {ratio:>9s}")
    for name, precision, seconds, rss, params in rows:
        speedup = f"{own_float32[name] / seconds:8.2f}x" if name in own_float32 else f"{'-':>9s}"
        print(f"{name:28s} {precision:>19s} {params / 1e6:7.1f}M {seconds:8.2f} {seconds / base_seconds:8.2f}x "
              f"{speedup} {rss:13.0f} {rss / base_rss:8.2f}x")


if __name__ == "__main__":
    main()
