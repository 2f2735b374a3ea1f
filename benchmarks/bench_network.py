"""Full-size SegMamba on one 1x4x128^3 window beside MONAI SwinUNETR-48 and DynUNet, on the CPU.

Each network runs in its own child process (same input, float32, torch threads as given), so each
peak RSS is its own; times are the median of the timed repeats after one warm-up.

    .venv/bin/python benchmarks/bench_network.py [--size 128] [--repeats 1] [--threads 2]
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


def measure(name: str, size: int, repeats: int, threads: int, queue: mp.Queue) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(name).eval()
    x = torch.randn(1, 4, size, size, size, generator=torch.Generator().manual_seed(1))
    params = sum(p.numel() for p in model.parameters())
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            started = time.perf_counter()
            y = model(x)
            if i:
                times.append(time.perf_counter() - started)
    assert y.shape == (1, 4, size, size, size)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((name, statistics.median(times), peak_mib, params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    context = mp.get_context("spawn")
    rows = []
    for name in NETWORKS:
        queue = context.Queue()
        child = context.Process(target=measure, args=(name, args.size, args.repeats, args.threads, queue))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"{name}: the measuring process failed (exit code {child.exitcode})")
        rows.append(queue.get())
    base_seconds, base_rss = rows[0][1], rows[0][2]
    print(f"\n1x4x{args.size}^3 window, float32, CPU, {args.threads} threads, median of {args.repeats}")
    ratio = "vs SegMamba"
    print(f"{'network':28s} {'params':>10s} {'seconds':>9s} {ratio:>12s} {'peak RSS MiB':>13s} {ratio:>12s}")
    for name, seconds, rss, params in rows:
        print(f"{name:28s} {params / 1e6:9.1f}M {seconds:9.2f} {seconds / base_seconds:11.2f}x {rss:13.0f} "
              f"{rss / base_rss:11.2f}x")


if __name__ == "__main__":
    main()
