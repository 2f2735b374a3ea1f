"""Export a training checkpoint as the model folder the application loads (``-m``).

    python -m segmamba.export --checkpoint RUN_DIR/best.pt --out models/segmamba-demo [--demo]
        [--input-convention brats]
    python -m segmamba.export --reference-checkpoint final_model_0.9038.pt --out models/segmamba-brats23

Writes ``metadata.json`` (a `segmamba.card.Card`: architecture, channel order, preprocessing,
sliding-window settings, label names, keys and colours (no DICOM codes: the application adds them),
training data description, measured validation metrics; with ``--input-convention brats`` the
``input_convention`` block of a network trained on BraTS-layout data) and ``model.pt`` (the
state_dict, float16 unless ``--float32``).

``--reference-checkpoint`` takes a checkpoint saved by the reference training code (github
ge-xing/SegMamba, commit cff3597): a bare state_dict, one under ``state_dict``/``model``/
``module``, with or without DistributedDataParallel's ``module.`` prefix. Its weights are
written as they are (dtype unchanged) after a strict check against the reference architecture,
and the card declares the reference recipe's input convention (`REFERENCE_CONVENTION`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from segmamba.card import BRATS_LABELS, WEIGHTS_NAME, Card, InferenceSettings, Network, Postprocessing, Preprocessing
from segmamba.checkpoint import check_compatible, unwrap_state_dict
from segmamba.data import CHANNEL_ORDER
from segmamba.evaluate import EMPTY_HD95_MM, REGIONS
from segmamba.model import SegMamba

DEMO_INTENDED_USE = "Demonstration only - trained on synthetic data - NOT FOR CLINICAL USE"


REFERENCE_SOURCE = "github ge-xing/SegMamba, commit cff3597"
REFERENCE_ARGS: dict[str, Any] = {"in_chans": 4, "out_chans": 4, "depths": [2, 2, 2, 2],
                                  "feat_size": [48, 96, 192, 384]}
REFERENCE_CHANNEL_ORDER = ["t2w", "t2f", "t1n", "t1c"]  # 2_preprocessing_mri.py data_filename
# The input convention of the reference recipe: the card's input_convention block, parsed by
# operators/input_convention.py and produced from any study by operators/model_input.py.
REFERENCE_CONVENTION: dict[str, Any] = {
    "source": REFERENCE_SOURCE,
    # sitk.GetArrayFromImage of BraTS 2023 files (SRI24, ITK direction identity): [z, y, x] =
    # inferior->Superior, anterior->Posterior, right->Left; see operators/reorientation.py.
    "orientation": ["S", "P", "L"],
    "spacing_mm": 1.0,
    "reference_role": "t1c",
    # crop to the box where any channel is nonzero, then per channel (x - mean) / std over the
    # whole box, zeros included (ZScoreNormalization(use_mask_for_norm=False) in the reference).
    "normalize": "zscore_crop",
    "registration": {"enabled": True, "method": "rigid_mattes_mi", "onto": "t1c",
                     "max_translation_mm": 15.0, "max_rotation_deg": 15.0, "on_failure": "refuse"},
    "brain_extraction": {"enabled": True, "method": "deepbet", "contrast": "t1n", "apply_to": "all_channels",
                         "normalize_within_mask": True},
    "atlas": {"enabled": False},
    "mirror_axes": [0, 1, 2],  # light_training/prediction.py: 8 flips, outputs averaged
}


INPUT_CONVENTIONS = ("brats",)
DEMO_CONVENTION_SOURCE = ("segmamba.train on BraTS-layout synthetic cases (skull-stripped, co-registered, "
                          "1 mm), read in the reference recipe's array orientation")


def brats_convention(orientation: list[str], mirror_tta: bool, normalize: str = "zscore_nonzero") -> dict[str, Any]:
    """The ``input_convention`` block of a network trained on BraTS-layout data with `segmamba.train`.

    The keys and settings of `REFERENCE_CONVENTION` (registration onto t1c, deepbet brain extraction,
    no atlas), with this training's normalisation and the card's mirror TTA. ``orientation`` is the
    training run's ``--orientation``: it must be the reference's S,P,L, or the card would misdescribe
    the arrays the network saw.
    """
    codes = [str(c).upper() for c in orientation]
    if codes != REFERENCE_CONVENTION["orientation"]:
        raise ValueError(f"checkpoint trained in array orientation {codes}, the BraTS convention is "
                         f"{REFERENCE_CONVENTION['orientation']}: retrain with --orientation S P L")
    convention = json.loads(json.dumps(REFERENCE_CONVENTION))  # deep copy
    convention.update(source=DEMO_CONVENTION_SOURCE, orientation=codes, normalize=normalize,
                      mirror_axes=[0, 1, 2] if mirror_tta else [])
    return convention


def _recipe(config: dict[str, Any]) -> str:
    loss = "soft Dice + cross-entropy" if config.get("loss") == "dicece" else "cross-entropy"
    return (f"segmamba.train: {loss} over labels 0-3, SGD momentum {config.get('momentum', 0.99)} Nesterov, "
            f"lr {config.get('lr', 1e-2)} poly 0.9, weight decay {config.get('weight_decay', 3e-5)}, "
            f"grad clip {config.get('grad_clip', 12.0)}, nnU-Net-style augmentation, "
            f"foreground fraction {config.get('foreground_fraction', 1 / 3):.2f}"
            + ("; Mamba encoder frozen at its seeded initialisation" if config.get("freeze_encoder") else "")
            + (f"; fine-tuned from {config['init_from']}" if config.get("init_from") else ""))


def export_model(checkpoint: Path, out: Path, *, name: str, version: str, description: str, intended_use: str,
                 overlap: float = 0.5, sw_batch_size: int = 1, mirror_tta: bool = False, float16: bool = True,
                 min_tumour_ml: float = 0.0, extra_metrics: dict[str, Any] | None = None,
                 dicom_metrics: dict[str, Any] | None = None, input_convention: str | None = None) -> Path:
    """Write ``out/metadata.json`` and ``out/model.pt`` from a `segmamba.train` checkpoint.

    ``input_convention="brats"`` adds the card's ``input_convention`` block (`brats_convention`); the
    checkpoint must have been trained in the BraTS array orientation (``--orientation S P L``).
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = state.get("config", {})
    convention = None
    if input_convention is not None:
        if input_convention not in INPUT_CONVENTIONS:
            raise ValueError(f"unknown input convention {input_convention!r}: use one of {INPUT_CONVENTIONS}")
        if "orientation" not in config:
            raise ValueError(f"{checkpoint} was trained in its files' voxel order (no --orientation): "
                             "it cannot declare the BraTS input convention")
        convention = brats_convention(config["orientation"], mirror_tta)
    weights = {k: (v.half() if float16 and v.is_floating_point() else v).contiguous()
               for k, v in state["model"].items()}
    patch = int(config.get("patch", 128))
    out.mkdir(parents=True, exist_ok=True)
    torch.save(weights, out / WEIGHTS_NAME)
    validation: dict[str, Any] = {
        "cases": len(state.get("split", {}).get("val", [])[: config.get("val_cases") or None]),
        "epoch": state.get("epoch", -1) + 1,
        "metrics": state.get("val_metrics", {}),
        "hd95_empty_convention_mm": EMPTY_HD95_MM,
    }
    if extra_metrics:
        validation["held_out"] = extra_metrics
    if dicom_metrics:
        validation["held_out_dicom_path"] = {k: v for k, v in dicom_metrics.items() if k != "table"}
    Card(
        name=name, version=version, description=description, intended_use=intended_use,
        network=Network(type="segmamba", args=state["network_args"], weights=WEIGHTS_NAME,
                        dtype="float16" if float16 else "float32"),
        channel_order=tuple(state.get("channel_order", CHANNEL_ORDER)),
        preprocessing=Preprocessing(spacing_mm=1.0, crop_foreground=True, normalize="zscore_nonzero"),
        inference=InferenceSettings(roi_size=(patch, patch, patch), overlap=overlap, mode="gaussian",
                                    sw_batch_size=sw_batch_size, mirror_tta=mirror_tta),
        postprocessing=Postprocessing(min_tumour_ml=min_tumour_ml),
        labels=BRATS_LABELS,
        regions=REGIONS,
        input_convention=convention,
        training={
            "data": state.get("data_description", ""),
            "recipe": _recipe(config),
            "iterations": state.get("iteration"),
            "config": config,
        },
        validation=validation,
    ).write(out)
    return out


def reference_state_dict(obj: object) -> dict[str, torch.Tensor]:
    """The weights of a reference-code checkpoint, checked strictly against the reference network.

    Besides `unwrap_state_dict`'s layouts, a ``{"module": state_dict}`` container is accepted, as
    the reference's 4_predict.py ``filte_state_dict`` does. Raises CheckpointError otherwise.
    """
    if isinstance(obj, Mapping) and isinstance(obj.get("module"), Mapping) and "state_dict" not in obj:
        obj = obj["module"]
    state, _ = unwrap_state_dict(obj)
    check_compatible(SegMamba(**REFERENCE_ARGS), state)
    return state


def export_reference_model(checkpoint: Path, out: Path, *, name: str = "segmamba-brats2023-reference",
                           version: str = "1.0.0",
                           description: str = "SegMamba trained with the reference authors' BraTS 2023 recipe",
                           intended_use: str = "Research use only - NOT FOR CLINICAL USE",
                           sw_batch_size: int = 1) -> Path:
    """Write ``out/metadata.json`` and ``out/model.pt`` for a checkpoint of the reference code."""
    data = Path(checkpoint).read_bytes()
    obj = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = reference_state_dict(obj)
    dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.contiguous() for k, v in state.items()}, out / WEIGHTS_NAME)
    Card(
        name=name, version=version, description=description, intended_use=intended_use,
        network=Network(type="segmamba", args=REFERENCE_ARGS, weights=WEIGHTS_NAME, dtype="/".join(dtypes)),
        channel_order=tuple(REFERENCE_CHANNEL_ORDER),
        # For readers of the card without input_convention; input_convention.normalize is what runs.
        preprocessing=Preprocessing(spacing_mm=1.0, crop_foreground=True, normalize="zscore_nonzero"),
        inference=InferenceSettings(roi_size=(128, 128, 128), overlap=0.5, mode="gaussian",
                                    sw_batch_size=sw_batch_size, mirror_tta=True),
        postprocessing=Postprocessing(min_tumour_ml=0.0),
        labels=BRATS_LABELS,
        regions=REGIONS,
        input_convention=REFERENCE_CONVENTION,
        training={
            "data": "BraTS 2023 glioma (skull-stripped, co-registered, SRI24 1 mm), as the reference recipe",
            "recipe": f"{REFERENCE_SOURCE}: 3_train.py (cross-entropy over labels 0-3, SGD 1e-2 momentum 0.99 "
                      "Nesterov, weight decay 3e-5, poly schedule, 128^3 patches)",
            "checkpoint": {"file": Path(checkpoint).name, "sha256": hashlib.sha256(data).hexdigest()},
        },
    ).write(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="RUN_DIR/best.pt or last.pt (segmamba.train)")
    source.add_argument("--reference-checkpoint", type=Path,
                        help="a checkpoint saved by the reference training code (weights kept as they are)")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--name", help="default segmamba-demo; segmamba-brats2023-reference for a reference checkpoint")
    parser.add_argument("--version", help="default 0.1.0 (1.0.0 with --reference-checkpoint)")
    parser.add_argument("--description", default="SegMamba brain-tumour segmentation (BraTS 2023 labels)")
    parser.add_argument("--intended-use", default="Research use only - NOT FOR CLINICAL USE")
    parser.add_argument("--demo", action="store_true", help=f"intended_use = {DEMO_INTENDED_USE!r}")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--sw-batch-size", type=int, default=1)
    parser.add_argument("--mirror-tta", action="store_true")
    parser.add_argument("--min-tumour-ml", type=float, default=0.0,
                        help="drop whole-tumour components smaller than this (mL) after inference")
    parser.add_argument("--input-convention", choices=INPUT_CONVENTIONS,
                        help="declare the input convention the network was trained in (brats: skull-stripped, "
                             "registered onto t1c, S,P,L at 1 mm; needs a run trained with --orientation S P L)")
    parser.add_argument("--float32", action="store_true", help="keep float32 weights")
    parser.add_argument("--metrics-json", type=Path, help="evaluate --json output to record as held-out metrics")
    parser.add_argument("--dicom-metrics-json", type=Path,
                        help="summary.json of 'python -m app evaluate' (held-out studies through the DICOM path)")
    args = parser.parse_args(argv)
    if args.reference_checkpoint is not None:
        named = {k: v for k, v in (("name", args.name), ("version", args.version)) if v}
        out = export_reference_model(args.reference_checkpoint, args.out, intended_use=args.intended_use,
                                     sw_batch_size=args.sw_batch_size, **named)
        print(f"wrote {out} ({sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB)")
        return
    extra = json.loads(args.metrics_json.read_text()) if args.metrics_json else None
    dicom = json.loads(args.dicom_metrics_json.read_text()) if args.dicom_metrics_json else None
    out = export_model(args.checkpoint, args.out, name=args.name or "segmamba-demo", version=args.version or "0.1.0",
                       description=args.description,
                       intended_use=DEMO_INTENDED_USE if args.demo else args.intended_use, overlap=args.overlap,
                       sw_batch_size=args.sw_batch_size, mirror_tta=args.mirror_tta, float16=not args.float32,
                       min_tumour_ml=args.min_tumour_ml, extra_metrics=extra, dicom_metrics=dicom,
                       input_convention=args.input_convention)
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e6
    print(f"wrote {out} ({size:.1f} MB)")


if __name__ == "__main__":
    main()
