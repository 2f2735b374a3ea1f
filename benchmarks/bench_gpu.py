"""SegMamba on one GPU: correctness under autocast, then window/case times, stage breakdown and peak memory.

    python benchmarks/bench_gpu.py            # on an H100: the full check and table (a few minutes)
    python benchmarks/bench_gpu.py --smoke    # tiny network and sizes, CPU or GPU: checks it runs

Full run: the golden SegMamba weights and input (../shared/golden). The float32 reference is the
chunked torch scan with TF32 off (also compared with the golden logits); every scan backend
(chunked torch, triton, mamba_ssm when importable) under fp16 and bf16 autocast must give
relative L2 of logits <= 1e-2 and argmax agreement >= 99% against it (exit status 1 if not).
Then, on the same input in the same process: one 1x4x128^3 window, one 240x240x155 case
(sliding window 128^3, overlap 0.5, gaussian, sw_batch_size 2) and its peak memory, beside MONAI
SwinUNETR(feature_size=48) and DynUNet (nnU-Net-like); per-stage CUDA-event times; the top CUDA
kernels; and the scan alone at the first stage's shape, for a few Triton tile configurations.

--smoke: SegMamba(depths 1, feat 4..32), 32^3 windows, a 32x32x20 case, tiny peers (DynUNet with
5 levels), float32 timings. Under
TRITON_INTERPRET=1 on the CPU the triton rows are the scan alone at a tiny shape (the
interpreter is far too slow for a network); the network rows use the chunked backend.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from segmamba import SegMamba  # noqa: E402
from segmamba.scan import available_backends, selective_scan  # noqa: E402
from segmamba.scan.triton_backend import ScanConfig, interpreting, triton_installed, triton_scan  # noqa: E402
from segmamba.tom import TriOrientedMamba  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
TRITON_CONFIGS = [ScanConfig(), ScanConfig(block_e=16, block_t=16), ScanConfig(block_e=16, block_t=32),
                  ScanConfig(block_e=4, block_t=32, num_warps=4), ScanConfig(block_e=8, block_t=16, num_warps=4),
                  ScanConfig(target_programs=4096)]


@dataclass
class Setup:
    """Sizes of one run (full or smoke)."""

    window: tuple[int, int, int]
    case: tuple[int, int, int]
    repeats: int
    case_repeats: int
    scan_shape: tuple[int, int, int, int]  # batch, channels, states, length
    smoke: bool
    device: torch.device
    peers: dict[str, Callable[[], nn.Module]] = field(default_factory=dict)


def segmamba_model(smoke: bool) -> nn.Module:
    if smoke:
        torch.manual_seed(0)
        return SegMamba(in_chans=4, out_chans=4, depths=[1, 1, 1, 1], feat_size=[4, 8, 16, 32], hidden_size=32,
                        nslices=(16, 8, 8, 8))
    from tests.support.golden import seeded, shapes

    model = SegMamba(in_chans=4, out_chans=4, depths=[2, 2, 2, 2], feat_size=[48, 96, 192, 384])
    model.load_state_dict(seeded().seeded_state_dict(shapes("segmamba_state_dict.json")), strict=True)
    return model


def peers(smoke: bool) -> dict[str, Callable[[], nn.Module]]:
    from monai.networks.nets import DynUNet, SwinUNETR

    feature, filters = (12, [8, 16, 16, 32, 32]) if smoke else (48, [32, 64, 128, 256, 320, 320])
    return {
        f"SwinUNETR-{feature}": lambda: SwinUNETR(in_channels=4, out_channels=4, feature_size=feature),
        "DynUNet": lambda: DynUNet(
            spatial_dims=3, in_channels=4, out_channels=4, kernel_size=[[3, 3, 3]] * len(filters),
            strides=[[1, 1, 1]] + [[2, 2, 2]] * (len(filters) - 1),
            upsample_kernel_size=[[2, 2, 2]] * (len(filters) - 1),
            filters=filters, norm_name="instance", res_block=False,
        ),
    }


def inputs(setup: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    """The window and the case, the same for every network."""
    if setup.smoke:
        g = torch.Generator().manual_seed(1)
        window = torch.randn(1, 4, *setup.window, generator=g)
        case = torch.randn(1, 4, *setup.case, generator=g)
    else:
        from tests.support.golden import seeded

        window = seeded().seeded_input((1, 4, *setup.window), 20261126)
        case = seeded().seeded_input((1, 4, *setup.case), 20261127)
    return window.to(setup.device), case.to(setup.device)


def set_backend(model: nn.Module, name: str) -> None:
    for module in model.modules():
        if isinstance(module, TriOrientedMamba):
            module.scan_backend = name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], repeats: int, device: torch.device, warmup: int = 1) -> float:
    """Median milliseconds of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_case(model: nn.Module, case: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(case, window, 2, model, overlap=0.5, mode="gaussian")


def compare(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Relative L2 of logits and the share of voxels with the same argmax."""
    out, ref = out.float(), ref.float()
    rel = float((out - ref).norm() / ref.norm())
    agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
    return rel, agree


@contextlib.contextmanager
def stage_events(model: SegMamba, device: torch.device) -> Iterator[dict[str, list[Any]]]:
    """Record (start, end) CUDA events, or wall-clock stamps on CPU, around the network's parts."""
    marks: dict[str, list[Any]] = {}
    parts: list[tuple[str, nn.Module]] = []
    vit = model.vit
    for i in range(4):
        parts += [(f"enc{i + 1} downsample", vit.downsample_layers[i]), (f"enc{i + 1} GSC", vit.gscs[i]),
                  (f"enc{i + 1} ToM layers", vit.stages[i]), (f"enc{i + 1} norm+MLP", vit.mlps[i]),
                  (f"enc{i + 1} norm+MLP", getattr(vit, f"norm{i}"))]
    parts += [("UNETR encoder blocks", getattr(model, f"encoder{i}")) for i in range(1, 6)]
    parts += [("decoder", getattr(model, f"decoder{i}")) for i in range(1, 6)] + [("decoder", model.out)]

    def stamp() -> Any:
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    handles = []
    for label, module in parts:
        handles.append(module.register_forward_pre_hook(lambda *_, lb=label: marks.setdefault(lb, []).append(stamp())))
        handles.append(module.register_forward_hook(lambda *_, lb=label: marks[lb].append(stamp())))
    try:
        yield marks
    finally:
        for handle in handles:
            handle.remove()


def stage_breakdown(model: SegMamba, window: torch.Tensor, dtype: torch.dtype | None) -> list[tuple[str, float]]:
    device = window.device
    with torch.inference_mode(), autocast(device, dtype), stage_events(model, device) as marks:
        model(window)
        sync(device)
    rows = []
    for label, stamps in marks.items():
        pairs = zip(stamps[::2], stamps[1::2], strict=True)
        if device.type == "cuda":
            ms = sum(start.elapsed_time(end) for start, end in pairs)
        else:
            ms = sum((end - start) * 1e3 for start, end in pairs)
        rows.append((label, ms))
    return rows


def top_kernels(model: nn.Module, window: torch.Tensor, dtype: torch.dtype | None, top: int) -> list[tuple[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    device = window.device
    activity = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
    with torch.inference_mode(), autocast(device, dtype), profile(activities=[activity]) as prof:
        model(window)
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
    return [(e.key[:70], getattr(e, key) / 1e3) for e in events[:top]]


def scan_inputs(shape: tuple[int, int, int, int], device: torch.device) -> dict[str, Any]:
    batch, dim, n_state, length = shape
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*s: int) -> torch.Tensor:
        return torch.randn(*s, generator=g).to(device)

    return {"u": randn(batch, dim, length), "delta": randn(batch, dim, length) - 3.0,
            "A": -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1).to(device),
            "B": randn(batch, n_state, length), "C": randn(batch, n_state, length), "D": randn(dim),
            "z": randn(batch, dim, length), "delta_bias": torch.full((dim,), -1.0).to(device),
            "delta_softplus": True}


def scan_rows(setup: Setup) -> list[tuple[str, float, float]]:
    """The scan alone: (name, ms, relative error against the chunked torch path)."""
    device = setup.device
    kw = scan_inputs(setup.scan_shape, device)
    rows = []
    with torch.inference_mode():
        ref = selective_scan(**kw, backend="chunked")
        names = ["chunked"] + [n for n in ("mamba_ssm",) if n in available_backends()]
        for name in names:
            ms = timed(lambda n=name: selective_scan(**kw, backend=n), 1 if name == "chunked" else setup.repeats,
                       device)
            rows.append((name, ms, compare(selective_scan(**kw, backend=name)[:, None], ref[:, None])[0]))
        if triton_installed() and (device.type == "cuda" or interpreting()):
            configs = TRITON_CONFIGS if device.type == "cuda" else TRITON_CONFIGS[:1]
            for cfg in configs:
                out = triton_scan(**kw, config=cfg)
                ms = timed(lambda c=cfg: triton_scan(**kw, config=c), setup.repeats, device, warmup=0)
                label = f"triton e{cfg.block_e} t{cfg.block_t} w{cfg.num_warps} p{cfg.target_programs}"
                rows.append((label, ms, compare(out[:, None], ref[:, None])[0]))
    return rows


def network_backends(device: torch.device) -> list[str]:
    names = ["chunked"]
    if device.type == "cuda" and "triton" in available_backends():
        names.append("triton")
    if "mamba_ssm" in available_backends():
        names.append("mamba_ssm")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script runs (CPU is fine)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per window (default 10, smoke 1)")
    parser.add_argument("--no-peers", action="store_true", help="skip SwinUNETR and DynUNet")
    parser.add_argument("--chunked-case", action="store_true", help="also time a whole case with the slow torch scan")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not args.smoke and device.type != "cuda":
        print("the full benchmark needs a CUDA device; use --smoke on the CPU", file=sys.stderr)
        return 2
    smoke = args.smoke
    setup = Setup(
        window=(32, 32, 32) if smoke else (128, 128, 128), case=(32, 32, 20) if smoke else (240, 240, 155),
        repeats=args.repeats or (1 if smoke else 10), case_repeats=1 if smoke else 3,
        scan_shape=(1, 4, 4, 40) if smoke else (2, 96, 16, 64**3), smoke=smoke, device=device,
        peers={} if args.no_peers else peers(smoke),
    )
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {card}; torch {torch.__version__}; backends here: {available_backends()}"
          f"{'; SMOKE sizes' if smoke else ''}")

    model = segmamba_model(smoke).to(device).eval()
    window, case = inputs(setup)
    failures = []

    # correctness: float32 reference (chunked torch scan, TF32 off), then each backend x autocast dtype
    set_backend(model, "chunked")
    with torch.inference_mode():
        ref = model(window)
    if not smoke:
        import numpy as np

        from tests.support.golden import golden_dir

        golden = torch.from_numpy(np.load(golden_dir() / "golden_public.npz")["logits_sub4"]).to(device)
        rel = float((ref[:, :, ::4, ::4, ::4] - golden).norm() / golden.norm())
        print(f"float32 reference vs golden logits: relative L2 {rel:.2e} (bound 1e-3)")
        if rel > 1e-3:
            failures.append("float32 reference vs golden")
    backends = network_backends(device)
    print("\ncorrectness against the float32 reference (bounds: rel L2 <= 1e-2, argmax >= 99%)")
    print(f"{'scan backend':12s} {'autocast':8s} {'rel L2':>9s} {'argmax':>8s}")
    for name in backends:
        set_backend(model, name)
        for dname, dtype in [("fp32", None), *DTYPES.items()]:
            with torch.inference_mode(), autocast(device, dtype):
                rel, agree = compare(model(window), ref)
            ok = rel <= 1e-2 and agree >= 0.99
            failures += [] if ok else [f"{name} {dname}"]
            print(f"{name:12s} {dname:8s} {rel:9.2e} {agree * 100:7.3f}% {'ok' if ok else 'FAIL'}")

    # timings
    rows = []
    nets: list[tuple[str, nn.Module, list[str]]] = [("SegMamba", model, backends)]
    for label, build in setup.peers.items():
        try:  # SwinUNETR needs einops, an optional MONAI dependency
            peer = build().to(device).eval()
            with torch.inference_mode():
                peer(window)
        except Exception as exc:
            print(f"{label}: not timed ({type(exc).__name__}: {str(exc).splitlines()[0]})")
            continue
        nets.append((label, peer, ["-"]))
    # smoke: float32 timings (CPU autocast is slow; both autocast types are checked above)
    timing_dtypes: dict[str, torch.dtype | None] = {"fp32": None} if smoke else dict(DTYPES)
    for label, net, net_backends in nets:
        for name in net_backends:
            if name != "-":
                set_backend(net, name)
            for dname, dtype in timing_dtypes.items():
                with torch.inference_mode(), autocast(device, dtype):
                    slow = name == "chunked" and device.type == "cuda"
                    window_ms = timed(lambda n=net: n(window), 2 if slow else setup.repeats, device,
                                      warmup=0 if smoke else 1)
                    case_ms, peak = float("nan"), float("nan")
                    if not slow or args.chunked_case:
                        if not smoke:  # warm-up: cudnn autotuning for the case's shapes
                            run_case(net, case, setup.window)
                        if device.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(device)
                        case_ms = timed(lambda n=net: run_case(n, case, setup.window), setup.case_repeats, device,
                                        warmup=0)
                        if device.type == "cuda":
                            peak = torch.cuda.max_memory_allocated(device) / 2**30
                rows.append((label, name, dname, window_ms, case_ms, peak))
    shape = "x".join(map(str, setup.window))
    case_shape = "x".join(map(str, setup.case))
    print(f"\n1x4x{shape} window and {case_shape} case (sliding window {shape}, overlap 0.5, gaussian, "
          f"sw_batch_size 2), median ms; peak GiB over the case")
    print(f"{'network':16s} {'scan':10s} {'autocast':8s} {'window ms':>10s} {'case ms':>10s} {'peak GiB':>9s}")
    for label, name, dname, window_ms, case_ms, peak in rows:
        print(f"{label:16s} {name:10s} {dname:8s} {window_ms:10.2f} {case_ms:10.1f} {peak:9.2f}")

    fastest = min((r for r in rows if r[0] == "SegMamba"), key=lambda r: r[3])
    set_backend(model, fastest[1])
    dtype = timing_dtypes[fastest[2]]
    print(f"\nper-stage times of one window, SegMamba {fastest[1]} {fastest[2]} (ms, hooks around modules)")
    stages = stage_breakdown(model, window, dtype)
    total = sum(ms for _, ms in stages)
    for label, ms in stages:
        print(f"  {label:24s} {ms:8.2f}  {ms / total * 100:5.1f}%")
    print(f"\ntop kernels of one window ({fastest[1]} {fastest[2]}, self time ms)")
    for key, ms in top_kernels(model, window, dtype, 5 if smoke else 15):
        print(f"  {key:70s} {ms:8.2f}")

    b, e, n, length = setup.scan_shape
    print(f"\nscan alone, batch {b}, channels {e}, states {n}, length {length} (float32; rel err vs chunked)")
    for label, ms, err in scan_rows(setup):
        print(f"  {label:36s} {ms:9.3f} ms  rel err {err:.1e}")

    if failures:
        print(f"\nFAILED: {', '.join(failures)}")
        return 1
    print("\nall correctness checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
