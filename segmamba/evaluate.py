"""Dice and HD95 per BraTS region, sliding-window prediction, and the evaluation CLI.

Regions: WT = labels {1, 2, 3}, TC = {1, 3}, ET = {3}. Convention for empty masks (as in the
BraTS challenge): prediction and truth both empty -> Dice 1, HD95 0; exactly one empty ->
Dice 0, HD95 = ``EMPTY_HD95_MM`` (373.13 mm, the diagonal of the BraTS 240 x 240 x 155 mm grid).
HD95 is the 95th percentile of the symmetric surface distances (MONAI), in mm.

    python -m segmamba.evaluate --pred PRED_DIR --truth BRATS_DIR [--csv per_case.csv]
    python -m segmamba.evaluate --model MODEL_FOLDER --data BRATS_DIR [--split split.json --subset val]

Prediction files: ``PRED_DIR/<case>.nii.gz``, ``<case>-seg.nii.gz`` or ``<case>/<case>-seg.nii.gz``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmamba.card import Card, CardError, read_card

REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
EMPTY_HD95_MM = 373.13


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile Hausdorff distance (mm) of two boolean masks, BraTS convention when empty."""
    from monai.metrics import compute_hausdorff_distance

    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return EMPTY_HD95_MM
    p = torch.from_numpy(pred)[None, None].float()
    t = torch.from_numpy(truth)[None, None].float()
    value = compute_hausdorff_distance(p, t, include_background=True, percentile=95,
                                       spacing=[float(s) for s in spacing])
    return float(value.item())


def region_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                   regions: Mapping[str, Sequence[int]] = REGIONS) -> dict[str, float]:
    """``{Dice_WT, HD95_WT, Dice_TC, ...}`` of two label maps."""
    result: dict[str, float] = {}
    for region, labels in regions.items():
        p, t = np.isin(pred, labels), np.isin(truth, labels)
        result[f"Dice_{region}"] = dice(p, t)
        result[f"HD95_{region}"] = hd95(p, t, spacing)
    return result


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, median, std, min and max of each metric column over cases."""
    keys = [k for k in rows[0] if k.startswith(("Dice_", "HD95_"))] if rows else []
    summary: dict[str, dict[str, float]] = {}
    for key in keys:
        values = np.array([float(r[key]) for r in rows])
        summary[key] = {"mean": float(values.mean()), "median": float(np.median(values)),
                        "std": float(values.std()), "min": float(values.min()), "max": float(values.max())}
    return summary


def format_summary(summary: Mapping[str, Mapping[str, float]], cases: int) -> str:
    """A plain-text table: one row per metric, mean/median/std/min/max."""
    lines = [f"{'metric':<10}{'mean':>10}{'median':>10}{'std':>10}{'min':>10}{'max':>10}   (n={cases})"]
    for key, stats in summary.items():
        lines.append(f"{key:<10}" + "".join(f"{stats[s]:>10.4f}" for s in ("mean", "median", "std", "min", "max")))
    return "\n".join(lines)


def sliding_window_predict(model: torch.nn.Module, image: np.ndarray, roi_size: Sequence[int],
                           overlap: float = 0.5, sw_batch_size: int = 1, device: torch.device | None = None,
                           progress: bool = False) -> np.ndarray:
    """Argmax labels (uint8, i, j, k) of a preprocessed (C, i, j, k) image (Gaussian blending)."""
    from monai.inferers import sliding_window_inference

    device = device or next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    was_training = model.training
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
        logits = sliding_window_inference(x, tuple(roi_size), sw_batch_size, model, overlap=overlap,
                                          mode="gaussian", progress=progress)
    model.train(was_training)
    return logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def _read_labels(path: Path) -> tuple[np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    image = nib.load(path)
    return np.asarray(image.dataobj).astype(np.uint8), tuple(float(z) for z in image.header.get_zooms()[:3])


def _find_prediction(pred_dir: Path, name: str) -> Path | None:
    for candidate in (pred_dir / f"{name}.nii.gz", pred_dir / f"{name}-seg.nii.gz",
                      pred_dir / name / f"{name}-seg.nii.gz"):
        if candidate.is_file():
            return candidate
    return None


def evaluate_folders(pred_dir: Path, truth_dir: Path) -> list[dict[str, Any]]:
    """Per-case metrics of predictions against a BraTS-layout truth folder (missing -> error)."""
    from segmamba.data import find_cases

    rows = []
    for case in find_cases(truth_dir):
        path = _find_prediction(pred_dir, case.name)
        if path is None:
            raise FileNotFoundError(f"no prediction for {case.name} in {pred_dir}")
        assert case.seg is not None
        truth, spacing = _read_labels(case.seg)
        pred, _ = _read_labels(path)
        if pred.shape != truth.shape:
            raise ValueError(f"{case.name}: prediction shape {pred.shape} != truth {truth.shape}")
        rows.append({"case": case.name, **region_metrics(pred, truth, spacing)})
    return rows


def load_model_folder(folder: Path, device: torch.device | None = None) -> tuple[torch.nn.Module, Card]:
    """The SegMamba of a model folder (``metadata.json`` + weights) and its card, ready for eval."""
    from segmamba import SegMamba, load_checkpoint

    card = read_card(folder)
    if card.network.weights is None:
        raise CardError(f"{folder}: 'network.weights' is missing")
    model = SegMamba(**(card.network.args or {}))
    load_checkpoint(model, Path(folder) / card.network.weights)
    return model.eval().to(device or torch.device("cpu")), card


def evaluate_model(model_folder: Path, data_dir: Path, names: Sequence[str] | None = None,
                   save_dir: Path | None = None, progress: bool = True,
                   sweep_min_tumour_ml: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Run a model folder on BraTS-layout cases (uncropped grid restored, card postprocessing) and score them.

    Arrays are read in the card's ``input_convention.orientation`` (file voxel order without one); saved
    predictions carry the affine of that orientation.

    ``sweep_min_tumour_ml`` scores each case once per postprocessing threshold instead of the card's
    (rows gain a ``min_tumour_ml`` column): how a card's value is chosen on a validation split.
    """
    from tqdm import tqdm

    from segmamba.data import find_cases, load_case, preprocess
    from segmamba.postprocess import remove_small_tumours

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, card = load_model_folder(model_folder, device)
    inference, min_tumour_ml = card.inference, card.postprocessing.min_tumour_ml
    # The array orientation the network was trained in; a card without an input_convention block
    # (models trained before it existed) was trained in the files' own voxel order.
    orientation = (card.input_convention or {}).get("orientation")
    cases = [c for c in find_cases(data_dir) if names is None or c.name in set(names)]
    rows = []
    for case in tqdm(cases, desc="evaluate", disable=not progress):
        raw = load_case(case, card.channel_order, orientation)
        nonzero = np.any(raw["image"] != 0, axis=0)
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(nonzero))
        image, _ = preprocess(raw["image"])
        pred = np.zeros(raw["image"].shape[1:], dtype=np.uint8)
        pred[box] = sliding_window_predict(model, image, inference.roi_size, inference.overlap,
                                           inference.sw_batch_size, device)
        voxel_ml = float(np.prod(raw["spacing"])) / 1000.0
        if sweep_min_tumour_ml is not None:
            for threshold in sweep_min_tumour_ml:
                cleaned, _ = remove_small_tumours(pred, voxel_ml, float(threshold))
                rows.append({"case": case.name, "min_tumour_ml": float(threshold),
                             **region_metrics(cleaned, raw["label"][0], raw["spacing"])})
            continue
        pred, _ = remove_small_tumours(pred, voxel_ml, float(min_tumour_ml))
        if save_dir is not None:
            import nibabel as nib

            save_dir.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(pred, raw["affine"]), save_dir / f"{case.name}.nii.gz")
        rows.append({"case": case.name, **region_metrics(pred, raw["label"][0], raw["spacing"])})
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Dice and HD95 per BraTS region (WT, TC, ET).")
    parser.add_argument("--pred", type=Path, help="folder of predicted label maps")
    parser.add_argument("--truth", type=Path, help="BraTS-layout folder with <case>-seg.nii.gz")
    parser.add_argument("--model", type=Path, help="model folder (metadata.json + weights) to run")
    parser.add_argument("--data", type=Path, help="BraTS-layout folder to run the model on")
    parser.add_argument("--split", type=Path, help="split.json; with --subset, evaluate only those cases")
    parser.add_argument("--subset", default="test", choices=("train", "val", "test"))
    parser.add_argument("--save-pred", type=Path, help="write the model's predictions here")
    parser.add_argument("--csv", type=Path, help="write per-case metrics to this CSV")
    parser.add_argument("--json", type=Path, help="write the summary to this JSON file")
    parser.add_argument("--sweep-min-tumour-ml", type=float, nargs="+", metavar="ML",
                        help="with --model: score each postprocessing threshold (mL) instead of the card's")
    args = parser.parse_args(argv)
    if args.pred and args.truth:
        rows = evaluate_folders(args.pred, args.truth)
    elif args.model and args.data:
        names = None
        if args.split:
            from segmamba.data import read_split

            names = read_split(args.split)[args.subset]
        rows = evaluate_model(args.model, args.data, names, args.save_pred,
                              sweep_min_tumour_ml=args.sweep_min_tumour_ml)
        if args.sweep_min_tumour_ml:
            for threshold in args.sweep_min_tumour_ml:
                chosen = [{k: v for k, v in r.items() if k != "min_tumour_ml"} for r in rows
                          if r["min_tumour_ml"] == threshold]
                means = summarize(chosen)
                print(f"min_tumour_ml {threshold:g}: mean " + " ".join(
                    f"{k}={means[k]['mean']:.4f}" for k in ("Dice_WT", "Dice_TC", "Dice_ET")))
            return 0
    else:
        parser.error("give --pred and --truth, or --model and --data")
    if not rows:
        print("no cases", file=sys.stderr)
        return 1
    for row in rows:
        print(row["case"], " ".join(f"{k}={v:.4f}" for k, v in row.items() if k != "case"))
    summary = summarize(rows)
    print(format_summary(summary, len(rows)))
    if args.csv:
        write_csv(rows, args.csv)
    if args.json:
        args.json.write_text(json.dumps({"cases": len(rows), "summary": summary}, indent=2) + "\n")
    return 0 if all(math.isfinite(v) for r in rows for k, v in r.items() if k != "case") else 1


if __name__ == "__main__":
    sys.exit(main())
