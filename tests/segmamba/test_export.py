"""A checkpoint of the reference training code exported as a model folder the application runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from operators.model_card import load_model_card
from operators.segmenters import build_segmenter
from segmamba import CheckpointError
from segmamba.export import main
from tests.support.golden import golden_dir, seeded, shapes


def rel_l2(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


@pytest.fixture(scope="module")
def golden_weights() -> dict[str, torch.Tensor]:
    return seeded().seeded_state_dict(shapes("segmamba_state_dict.json"))


@pytest.mark.slow
def test_reference_checkpoint_export_reproduces_golden_logits(golden_weights, tmp_path: Path) -> None:
    # Saved as the reference trainer does under DistributedDataParallel: 'module.' on every key.
    checkpoint = tmp_path / "final_model_0.9038.pt"
    torch.save({f"module.{k}": v for k, v in golden_weights.items()}, checkpoint)
    main(["--reference-checkpoint", str(checkpoint), "--out", str(tmp_path / "model")])

    card = load_model_card(tmp_path / "model")
    assert card.channel_order == ("t2w", "t2f", "t1n", "t1c")
    assert card.inference.roi_size == (128, 128, 128) and card.inference.overlap == 0.5
    assert card.inference.mirror_tta and card.inference.mode == "gaussian"
    assert card.preprocessing.spacing_mm == 1.0
    assert card.label_names.keys() == {1, 2, 3} and card.regions["TC"] == (1, 3)
    raw = json.loads((tmp_path / "model" / "metadata.json").read_text())
    convention = raw["input_convention"]
    assert convention["orientation"] == ["S", "P", "L"] and convention["spacing_mm"] == 1.0
    assert convention["registration"]["enabled"] and convention["brain_extraction"]["enabled"]
    assert convention["mirror_axes"] == [0, 1, 2]
    stored = torch.load(tmp_path / "model" / "model.pt", map_location="cpu", weights_only=True)
    assert stored.keys() == golden_weights.keys()
    assert all(torch.equal(stored[k], v) for k, v in golden_weights.items())  # weights as they are

    segmenter = build_segmenter(card, device="cpu", progress=False, mirror_tta=False, precision="float32")
    captured: list[torch.Tensor] = []
    segmenter.model.register_forward_hook(lambda module, args, output: captured.append(output.detach().clone()))
    x = seeded().seeded_input((1, 4, 128, 128, 128), 20261126)
    labels = segmenter(x[0].numpy())
    golden = np.load(golden_dir() / "golden_public.npz")
    # One 128^3 window; cloned, as the sliding window weights the network's output in place.
    assert len(captured) == 1
    assert rel_l2(captured[0][:, :, ::4, ::4, ::4], torch.from_numpy(golden["logits_sub4"])) <= 1e-3
    counts = np.bincount(labels.ravel(), minlength=4)
    assert np.abs(counts - golden["argmax_counts"]).sum() <= 200


def test_reference_checkpoint_that_does_not_fit_is_refused(golden_weights, tmp_path: Path) -> None:
    broken = dict(golden_weights)
    broken.pop("out.conv.conv.weight")
    checkpoint = tmp_path / "other.pt"
    torch.save({"module": broken}, checkpoint)
    with pytest.raises(CheckpointError, match=r"missing keys: out\.conv\.conv\.weight"):
        main(["--reference-checkpoint", str(checkpoint), "--out", str(tmp_path / "model")])
    assert not (tmp_path / "model").exists()


def test_training_checkpoint_export_keeps_its_defaults_and_one_source_is_required(tmp_path: Path) -> None:
    from segmamba import SegMamba

    args = {"in_chans": 4, "out_chans": 4, "feat_size": [8, 16, 32, 64], "hidden_size": 64}
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": SegMamba(**args).state_dict(), "network_args": args, "config": {"patch": 32}}, checkpoint)
    main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "model")])
    card = load_model_card(tmp_path / "model")
    assert (card.name, card.version) == ("segmamba-demo", "0.1.0")
    assert "input_convention" not in json.loads((tmp_path / "model" / "metadata.json").read_text())
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "other")])
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(checkpoint), "--reference-checkpoint", str(checkpoint), "--out", str(tmp_path / "x")])
