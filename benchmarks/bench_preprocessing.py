"""Brain extraction and registration on synthetic heads with skull and scalp, against the truth.

    python benchmarks/bench_preprocessing.py --heads 5 [--seed 9100] [--json out.json]

Per head (MNI152-anatomy template head with a tumour, random pose, `segmamba.synthetic`):

- brain extraction (deepbet, operators.brain_extraction) of the T1 on a 1 mm grid in the BraTS
  orientation (S, P, L): Dice against the generator's brain (intracranial) mask, the fraction of the
  true tumour inside the mask (target >= 0.99) and seconds;
- registration (operators.registration, SimpleITK rigid Mattes MI) of a 2D FLAIR (0.9 x 0.9 mm,
  4 mm slices) taken after a random patient motion (up to 5 mm and 5 degrees) onto the 1 mm T1c:
  the residual of the recovered motion against the applied one (mm at the head centre and at worst
  over the head's bounding-box corners, degrees) and seconds (wall and CPU).

The machine is shared: compare seconds within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo's packages

from app.evaluation import motion_residual
from app.synthetic_study import MovedHead, random_motion, rigid_motion
from operators.brain_extraction import extract_brain, fraction_inside
from operators.registration import register_rigid
from operators.reorientation import REFERENCE_ORIENTATION, model_grid
from operators.volume import ImageVolume
from segmamba.synthetic import CaseConfig
from segmamba.synthetic.phantom import grid_points
from segmamba.synthetic.template import random_template_head


def _scan(head: Any, contrast: str, shape: tuple[int, int, int], affine: np.ndarray, rng: np.random.Generator,
          noise: float = 0.01) -> tuple[ImageVolume, dict[str, np.ndarray]]:
    """The head (skull and scalp kept) imaged with one contrast, with Rician noise; and its fields."""
    fields = head.fields(grid_points(shape, affine))
    signal = np.where(fields["head"] >= 0.5, fields[contrast], 0.0)
    noisy = np.hypot(signal + rng.normal(0.0, noise, signal.shape), rng.normal(0.0, noise, signal.shape))
    return ImageVolume(array=noisy.astype(np.float32), affine=affine), fields


def _box_volume(head: Any, spacing: tuple[float, float, float]) -> tuple[tuple[int, int, int], np.ndarray]:
    box = head.bounds()
    shape = tuple(int(n) for n in np.ceil((box[1] - box[0] + 12.0) / np.asarray(spacing)))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = box.mean(axis=0) - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return shape, affine  # type: ignore[return-value]


def bench_head(seed: int, max_mm: float, max_deg: float) -> dict[str, Any]:
    """Brain-extraction and registration figures of one synthetic head."""
    rng = np.random.default_rng([seed, 3])
    base = random_template_head(seed, CaseConfig(tumour_probability=1.0))
    pose = random_motion(rng, 10.0, 15.0)
    head = MovedHead(base, rigid_motion(pose, base.center))
    t1c_shape, t1c_affine = _box_volume(head, (1.0, 1.0, 1.0))
    t1c, _ = _scan(head, "t1c", t1c_shape, t1c_affine, rng)
    grid_shape, grid_affine = model_grid(t1c, REFERENCE_ORIENTATION, 1.0)
    t1, fields = _scan(head, "t1n", grid_shape, grid_affine, rng)
    brain = fields["intracranial"] >= 0.5
    tumour = np.where(brain, fields["label"], 0)
    mask = extract_brain(t1)
    dice = 2.0 * float((mask.mask & brain).sum()) / float(mask.mask.sum() + brain.sum())

    motion = random_motion(rng, max_mm, max_deg)
    applied = rigid_motion(motion, head.center)
    moved = MovedHead(head, applied)
    flair_shape, flair_affine = _box_volume(moved, (0.9, 0.9, 4.0))
    flair, _ = _scan(moved, "t2f", flair_shape, flair_affine, rng)
    result = register_rigid(t1c, flair)
    centre = np.asarray(head.center)
    residual_mm, residual_deg = motion_residual(result.matrix, applied, centre)
    box = head.bounds()
    corners = np.array([[x, y, z, 1.0] for x in box[:, 0] for y in box[:, 1] for z in box[:, 2]])
    worst_mm = float(np.linalg.norm((corners @ (result.matrix - applied).T)[:, :3], axis=1).max())
    before_mm, before_deg = motion_residual(np.eye(4), applied, centre)
    return {
        "seed": seed, "brain_dice": dice, "tumour_inside": fraction_inside(mask.mask, tumour),
        "tumour_ml": float((tumour > 0).sum()) / 1000.0, "brain_ml": float(brain.sum()) / 1000.0,
        "mask_ml": mask.volume_ml, "bet_s": mask.seconds,
        "motion_mm": before_mm, "motion_deg": before_deg, "residual_mm": residual_mm,
        "residual_worst_mm": worst_mm, "residual_deg": residual_deg, "accepted": result.success,
        "registration_s": result.seconds, "registration_cpu_s": result.cpu_seconds,
    }


COLUMNS = (("brain_dice", 4), ("tumour_inside", 4), ("tumour_ml", 1), ("bet_s", 1), ("motion_mm", 2),
           ("motion_deg", 2), ("residual_mm", 2), ("residual_worst_mm", 2), ("residual_deg", 2),
           ("registration_s", 1))


def table(rows: list[dict[str, Any]]) -> str:
    """The rows, their mean and the worst value of each column, as text."""
    def line(label: str, values: dict[str, float]) -> str:
        return f"{label:>6}" + "".join(f"{values[name]:>{len(name) + 2}.{digits}f}" for name, digits in COLUMNS)

    lines = [f"{'seed':>6}" + "".join(f"{name:>{len(name) + 2}}" for name, _ in COLUMNS)]
    lines += [line(str(row["seed"]), row) for row in rows]
    lines.append(line("mean", {name: float(np.mean([row[name] for row in rows])) for name, _ in COLUMNS}))
    lines.append(line("worst", {name: float((min if name in ("brain_dice", "tumour_inside") else max)(
        row[name] for row in rows)) for name, _ in COLUMNS}))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=5)
    parser.add_argument("--seed", type=int, default=9100)
    parser.add_argument("--max-mm", type=float, default=5.0, help="largest applied translation (default 5 mm)")
    parser.add_argument("--max-deg", type=float, default=5.0, help="largest applied rotation (default 5 degrees)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    rows = []
    for seed in range(args.seed, args.seed + args.heads):
        started = time.perf_counter()
        rows.append(bench_head(seed, args.max_mm, args.max_deg))
        print(f"head {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
