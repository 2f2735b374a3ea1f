"""Train SegMamba on a BraTS 2023-layout folder with the reference recipe.

    python -m segmamba.train --data BRATS_DIR --out RUN_DIR [--patch 128 --epochs 1000 ...] [--resume]

Recipe (SegMamba, Xing et al. 2024, ``4_train.py`` of ge-xing/SegMamba, and nnU-Net defaults):
crop to nonzero, z-score per channel over nonzero voxels, random patches (1/3 centred on tumour),
nnU-Net-style augmentation, SGD momentum 0.99 Nesterov, lr 1e-2 with poly(0.9) decay per
iteration, weight decay 3e-5, cross-entropy over labels 0-3, AMP on CUDA, gradient-norm clip 12.
Every ``--val-every`` epochs: Dice and HD95 per region (WT, TC, ET) on the validation cases by
sliding-window inference. RUN_DIR gets split.json, last.pt (resumable), best.pt (best mean
Dice), metrics.csv and curves.png.

The whole network trains on CPU too: the scans' gradients come from numba kernels (segmamba.scan).
``--freeze-encoder`` keeps the Mamba encoder (``vit``) at its seeded initialisation and trains the
convolutional encoder/decoder only (about 1.7x faster per step on CPU; not the reference recipe).
``--init-from WEIGHTS`` fine-tunes from an earlier model's weights (same architecture) instead of
a seeded initialisation; the poly schedule then runs over this run's iterations only.
``--thick-slice-prob`` adds an augmentation outside the reference recipe: patches where some
channels look like thick 2D slices resampled to 1 mm, as clinical T2/FLAIR series arrive.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segmamba.checkpoint import load_checkpoint
from segmamba.data import (
    BRATS_ORIENTATION,
    CHANNEL_ORDER,
    PatchDataset,
    find_cases,
    load_preprocessed,
    make_split,
    read_split,
    write_split,
)
from segmamba.evaluate import REGIONS, region_metrics, sliding_window_predict
from segmamba.model import SegMamba

METRIC_KEYS = [f"{m}_{r}" for m in ("Dice", "HD95") for r in REGIONS]


def default_nslices(patch: int) -> list[int]:
    """One inter-slice chunk per slice at every stage: patch / 2^(i+1)."""
    return [patch // 2 ** (i + 1) for i in range(4)]


def network_args(args: argparse.Namespace) -> dict[str, Any]:
    """SegMamba constructor arguments (what the model card stores)."""
    return {"in_chans": 4, "out_chans": 4, "depths": list(args.depths), "feat_size": list(args.feat_size),
            "hidden_size": args.hidden_size, "nslices": list(args.nslices or default_nslices(args.patch))}


def poly_lr(base: float, iteration: int, total: int, exponent: float = 0.9) -> float:
    return base * (1.0 - min(iteration, total) / total) ** exponent


def make_loss(name: str) -> nn.Module:
    """Loss on (logits (B, 4, ...), labels (B, 1, ...) int64)."""
    if name == "dicece":
        from monai.losses import DiceCELoss

        return DiceCELoss(to_onehot_y=True, softmax=True, batch=True)

    class _CrossEntropy(nn.Module):
        def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(logits, label[:, 0])

    return _CrossEntropy()


def seed_everything(seed: int) -> None:
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_determinism(seed=seed)


def validate(model: nn.Module, cases: list[dict[str, Any]], patch: int, overlap: float,
             device: torch.device) -> dict[str, float]:
    """Mean Dice/HD95 per region over the validation cases."""
    rows = []
    for case in cases:
        pred = sliding_window_predict(model, case["image"], [patch] * 3, overlap, 1, device)
        rows.append(region_metrics(pred, case["label"][0], case["spacing"]))
    return {key: float(np.mean([r[key] for r in rows])) for key in METRIC_KEYS}


def write_metrics(history: list[dict[str, Any]], run_dir: Path) -> None:
    """metrics.csv (one row per epoch) and curves.png (loss; Dice per region)."""
    fields = ["epoch", "iteration", "lr", "train_loss", "seconds", *METRIC_KEYS]
    with open(run_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    validated = [h for h in history if h.get("Dice_WT") not in (None, "")]
    for region in REGIONS:
        ax_dice.plot([h["epoch"] for h in validated], [h[f"Dice_{region}"] for h in validated], marker="o",
                     label=f"Dice {region}")
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylim(0, 1)
    ax_dice.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=80)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="BraTS 2023-layout folder")
    p.add_argument("--out", type=Path, required=True, help="run folder (checkpoints, metrics, split)")
    p.add_argument("--split", type=Path, help="use this split.json instead of making one")
    p.add_argument("--patch", type=int, default=128, help="cubic patch / sliding-window size (multiple of 16)")
    p.add_argument("--orientation", nargs=3, default=list(BRATS_ORIENTATION), metavar="CODE",
                   help="array axis codes the network is trained in (default S P L, the BraTS reference's); "
                        "each case is reoriented by its NIfTI affine")
    p.add_argument("--feat-size", type=int, nargs=4, default=[48, 96, 192, 384])
    p.add_argument("--hidden-size", type=int, default=768)
    p.add_argument("--depths", type=int, nargs=4, default=[2, 2, 2, 2])
    p.add_argument("--nslices", type=int, nargs=4, help="default: patch / 2^(stage+1)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--iters-per-epoch", type=int, default=250)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--momentum", type=float, default=0.99)
    p.add_argument("--weight-decay", type=float, default=3e-5)
    p.add_argument("--grad-clip", type=float, default=12.0)
    p.add_argument("--loss", choices=("ce", "dicece"), default="ce",
                   help="ce: cross-entropy (reference); dicece: + soft Dice (nnU-Net), learns small classes sooner")
    p.add_argument("--foreground-fraction", type=float, default=1 / 3)
    p.add_argument("--thick-slice-prob", type=float, default=0.0,
                   help="probability of simulating thick 2D slices in a patch (0: off, as the reference recipe)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (and after the last)")
    p.add_argument("--val-cases", type=int, default=0, help="validate on the first N val cases (0: all)")
    p.add_argument("--val-overlap", type=float, default=0.5)
    p.add_argument("--freeze-encoder", action="store_true", help="train without gradients through the scans")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    p.add_argument("--init-from", type=Path, metavar="WEIGHTS",
                   help="fine-tune: start from these weights (a model folder's model.pt or a state_dict of the "
                        "same architecture, float16 accepted) instead of a seeded initialisation")
    p.add_argument("--no-progress", action="store_true")
    return p


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run (or resume) a training; returns the final history entry."""
    from tqdm import tqdm

    if args.patch % 16:
        raise ValueError("--patch must be a multiple of 16")
    run_dir: Path = args.out
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cases = find_cases(args.data)
    split_path = run_dir / "split.json"
    if args.split:
        split = read_split(args.split)
    elif split_path.is_file():
        split = read_split(split_path)
    else:
        split = make_split([c.name for c in cases], seed=args.seed)
    write_split(split, split_path)
    by_name = {c.name: c for c in cases}
    quiet = args.no_progress
    train_cases = [load_preprocessed(by_name[n], orientation=args.orientation)
                   for n in tqdm(split["train"], desc="load train", disable=quiet)]
    val_names = split["val"][: args.val_cases or None]
    val_cases = [load_preprocessed(by_name[n], orientation=args.orientation)
                 for n in tqdm(val_names, desc="load val", disable=quiet)]

    net_args = network_args(args)
    model = SegMamba(**net_args)
    if args.init_from is not None:
        load_checkpoint(model, args.init_from)  # strict; float16 weights are cast to the float32 network
    model = model.to(device)
    if args.freeze_encoder:
        model.vit.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, nesterov=True,
                                weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    criterion = make_loss(args.loss)
    total = args.epochs * args.iters_per_epoch
    start_epoch, iteration, best, history = 0, 0, -1.0, []
    if args.resume and (run_dir / "last.pt").is_file():
        state = torch.load(run_dir / "last.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, iteration = state["epoch"] + 1, state["iteration"]
        best, history = state["best_score"], state["history"]
        torch.set_rng_state(state["torch_rng"])

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    description = (f"{len(split['train'])} training / {len(split['val'])} validation cases from {args.data.name} "
                   f"(BraTS 2023 layout), {args.patch}^3 patches, {args.epochs} epochs x {args.iters_per_epoch} "
                   f"iterations x batch {args.batch_size}, seed {args.seed}"
                   + (", Mamba encoder frozen at its seeded initialisation" if args.freeze_encoder else "")
                   + (f", fine-tuned from {args.init_from}" if args.init_from else ""))
    entry: dict[str, Any] = history[-1] if history else {}
    for epoch in range(start_epoch, args.epochs):
        model.train()
        dataset = PatchDataset(train_cases, [args.patch] * 3, args.iters_per_epoch * args.batch_size,
                               args.foreground_fraction, seed=args.seed * 100003 + epoch,
                               thick_slice_prob=args.thick_slice_prob)
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers)
        losses, started = [], time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=quiet, unit="it")
        for batch in bar:
            lr = poly_lr(args.lr, iteration, total)
            for group in optimizer.param_groups:
                group["lr"] = lr
            image, label = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                logits = model(image)
            loss = criterion(logits.float(), label)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            iteration += 1
            losses.append(float(loss.item()))
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", lr=f"{lr:.2e}", s_it=f"{elapsed / len(losses):.2f}")
        entry = {"epoch": epoch + 1, "iteration": iteration, "lr": lr, "train_loss": float(np.mean(losses)),
                 "seconds": round(time.perf_counter() - started, 1), **dict.fromkeys(METRIC_KEYS, "")}
        last_epoch = epoch + 1 == args.epochs
        if val_cases and ((epoch + 1) % args.val_every == 0 or last_epoch):
            entry.update(validate(model, val_cases, args.patch, args.val_overlap, device))
            print(f"epoch {epoch + 1}: loss {entry['train_loss']:.4f} "
                  + " ".join(f"{k} {entry[k]:.3f}" for k in METRIC_KEYS), flush=True)
        history.append(entry)
        write_metrics(history, run_dir)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "epoch": epoch, "iteration": iteration, "best_score": best, "history": history,
                 "torch_rng": torch.get_rng_state(), "network_args": net_args, "config": config,
                 "channel_order": list(CHANNEL_ORDER), "split": split, "data_description": description}
        score = float(np.mean([entry[f"Dice_{r}"] for r in REGIONS])) if entry["Dice_WT"] != "" else math.nan
        if not math.isnan(score) and score > best:
            state["best_score"] = best = score
            torch.save({**state, "val_metrics": {k: entry[k] for k in METRIC_KEYS}, "optimizer": None},
                       run_dir / "best.pt")
        torch.save(state, run_dir / "last.pt")
    if not (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file():  # no validation cases
        last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
        torch.save({**last, "val_metrics": {}, "optimizer": None}, run_dir / "best.pt")
    (run_dir / "summary.json").write_text(json.dumps({"final": entry, "best_mean_dice": best}, indent=2) + "\n")
    return entry


def main(argv: list[str] | None = None) -> None:
    train(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
