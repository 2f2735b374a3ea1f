"""Wall time per stage of the batch application on a 4-series 240x240x155 study.

Writes a synthetic study (four 240x240x155 1 mm series plus a localizer), then runs the whole
operator chain (load, select, volume, infer, write) with SegMamba model folders of the full
BraTS size and of a small configuration (random weights: speed does not depend on them), in each
precision (float32 and the CPU fast path, bfloat16 autocast) and with each memory allocator (the
system's malloc and jemalloc keeping freed pages, app/allocator.py), each run in its own child process
so that its peak RSS is its own; prints seconds per stage, each stage's share of the total, the
speed-up over float32 of the same configuration, the window count and the peak RSS.

``--inputs`` compares the model inputs: ``head`` (a card without ``input_convention``: the native
grid cropped to the head) and ``brain`` (the BraTS convention of the exported checkpoints:
registration, deepbet brain extraction, reorientation, the input cropped to the brain), so the
work the brain crop saves shows in the ``infer`` column and the window count, and what the
extra steps cost shows in ``volume``.

    .venv/bin/python benchmarks/bench_app.py [--configs full small] [--precisions float32 bfloat16]
        [--inputs head brain] [--allocators system jemalloc] [--baseline-inputs head] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo's packages
from app import allocator
from app.batch import load_model, process_study
from app.config import load_settings
from app.synthetic_study import SeriesSpec, write_study
from segmamba import SegMamba
from segmamba.export import brats_convention
from segmamba.synthetic import Lesion, Phantom

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "full": {"in_chans": 4, "out_chans": 4, "feat_size": [48, 96, 192, 384], "hidden_size": 768},
    "small": {"in_chans": 4, "out_chans": 4, "feat_size": [16, 32, 64, 128], "hidden_size": 256},
}
STAGES = ("load", "select", "volume", "infer", "write")


def brats_size_study(folder: Path) -> None:
    """Four axial 240x240x155 series at 1 mm (the BraTS grid), plus a localizer to ignore."""
    grid = dict(orientation="axial", rows=240, columns=240, slices=155, pixel_spacing=(1.0, 1.0), slice_thickness=1.0)
    specs = [SeriesSpec(role, description, **grid) for role, description in
             (("t1n", "t1_mprage_tra"), ("t1c", "t1_mprage_tra POST GAD"), ("t2w", "t2_tse_tra"),
              ("t2f", "t2_tirm_tra_dark-fluid"))]
    specs.append(SeriesSpec("t1n", "localizer", kind="localizer", rows=128, columns=128, pixel_spacing=(2.0, 2.0)))
    phantom = Phantom(center=(0.0, -10.0, 20.0), lesion=Lesion(center=(-25.0, 0.0, 35.0), radius=22.0, seed=3))
    write_study(folder, phantom, specs, seed=1)


def model_folder(folder: Path, args: dict, inputs: str) -> Path:
    """A segmamba folder with random weights; ``inputs`` brain: the card declares the BraTS convention."""
    card = json.loads((REPO / "tests" / "models" / "threshold" / "metadata.json").read_text())
    card.update(name=f"segmamba-{folder.name}", version="bench", network={"type": "segmamba", "args": args,
                "weights": "model.pt"}, preprocessing={"spacing_mm": 1.0, "crop_foreground": True,
                "normalize": "zscore_nonzero"})
    if inputs == "brain":
        card["input_convention"] = brats_convention(["S", "P", "L"], mirror_tta=False)
    folder.mkdir(parents=True)
    torch.save(SegMamba(**args).state_dict(), folder / "model.pt")
    (folder / "metadata.json").write_text(json.dumps(card))
    return folder


def measure(models: Path, study: Path, out: Path, precision: str, threads: int, queue: mp.Queue) -> None:
    """One configuration and precision: model load, then the whole chain on the study (child process)."""
    torch.set_num_threads(threads)
    settings = load_settings(environ={}, overrides={"models": models, "progress": False, "device": "cpu",
                                                    "precision": precision})
    started = time.perf_counter()
    card, segmenter = load_model(settings)
    model_seconds = time.perf_counter() - started
    files, times = process_study(settings, card, segmenter, study, out)
    windows = json.loads(files.report.read_text())["inference"]["windows_run"]
    queue.put((allocator.in_use(), model_seconds, times, windows,
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def run_child(context: Any, models: Path, study: Path, out: Path, precision: str, chosen: str,
              threads: int) -> tuple[Any, ...]:
    """`measure` in a child process started with allocator ``chosen``; its row."""
    queue = context.Queue()
    with allocator.for_children(chosen):
        child = context.Process(target=measure, args=(models, study, out, precision, threads, queue))
        child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"{models.name} {precision} {chosen}: the measuring process failed (exit code "
                         f"{child.exitcode})")
    return queue.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["small", "full"])
    parser.add_argument("--precisions", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    parser.add_argument("--inputs", nargs="+", choices=("head", "brain"), default=["head"])
    parser.add_argument("--allocators", nargs="+", choices=("system", "jemalloc"), default=["system", "jemalloc"],
                        help="memory allocator of the measuring process (app/allocator.py)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--baseline-inputs", choices=("head", "brain"),
                        help="inputs of the float32 run the speed-ups are against (default: the first of --inputs; "
                             "run first if not among them)")
    args = parser.parse_args()
    base_inputs = args.baseline_inputs or args.inputs[0]
    context = mp.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        brats_size_study(root / "study")
        print(f"wrote the 240x240x155 study in {time.perf_counter() - started:.1f} s")
        for name in args.configs:
            runs = [(inputs, precision, chosen) for inputs in args.inputs for precision in args.precisions
                    for chosen in args.allocators]
            if (base_inputs, "float32", args.allocators[0]) not in runs:
                runs.insert(0, (base_inputs, "float32", args.allocators[0]))
            for inputs, precision, chosen in runs:
                models = root / f"{name}-{inputs}"
                if not models.exists():
                    model_folder(models, CONFIGS[name], inputs)
                rows.append(((name, inputs), precision, *run_child(
                    context, models, root / "study", root / f"out-{name}-{inputs}-{precision}-{chosen}",
                    precision, chosen, args.threads)))
    print(f"\nstage seconds (share of the chain), CPU, {args.threads} threads; model loading is once per process; "
          f"speed-up = the float32 total of the same config on {base_inputs} inputs with the "
          f"{args.allocators[0]} allocator / this total")
    print(f"{'config':6s} {'inputs':>6s} {'precision':>9s} {'allocator':>9s} {'load model':>10s} "
          + " ".join(f"{s:>14s}" for s in STAGES) + f" {'total':>7s} {'speed-up':>8s} {'windows':>7s} "
          f"{'peak RSS MiB':>12s}")
    baseline: dict[str, float] = {}
    for key, precision, _used, _, times, _, _ in rows:
        if precision == "float32" and key[1] == base_inputs:
            baseline.setdefault(key[0], sum(times[s] for s in STAGES))
    for (name, inputs), precision, used, model_seconds, times, windows, rss in rows:
        total = sum(times[s] for s in STAGES)
        cells = " ".join(f"{times[s]:7.1f} ({times[s] / total:4.0%})" for s in STAGES)
        speedup = f"{baseline[name] / total:7.2f}x" if name in baseline else f"{'-':>8s}"
        print(f"{name:6s} {inputs:>6s} {precision:>9s} {used:>9s} {model_seconds:10.1f} {cells} {total:7.1f} "
              f"{speedup} {windows:7d} {rss:12.0f}")


if __name__ == "__main__":
    main()
