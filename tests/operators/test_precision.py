"""The CPU fast path: precision chosen from the hardware, card and settings; window count reported;
bfloat16 labels agree with float32 on the golden weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference

from app.config import ConfigError, load_settings
from operators.errors import ConfigurationError
from operators.model_card import ModelCardError, load_model_card
from operators.precision import cpu_has_bf16, resolve_precision
from operators.segmenters import SegMambaSegmenter, window_count
from segmamba import SegMamba
from segmamba.evaluate import REGIONS, dice
from segmamba.synthetic import Lesion, Phantom
from tests.support.golden import seeded, shapes
from tests.support.paths import REPO

FULL_SIZE = {"in_chans": 4, "out_chans": 4, "depths": [2, 2, 2, 2], "feat_size": [48, 96, 192, 384]}
CPU = torch.device("cpu")


def model_folder(folder: Path, args: dict, state: dict[str, torch.Tensor], inference: dict) -> Path:
    """A segmamba model folder (the threshold card's labels and regions) with these weights."""
    card = json.loads((REPO / "tests" / "models" / "threshold" / "metadata.json").read_text())
    card.update(name="segmamba-test", version="1", network={"type": "segmamba", "args": args, "weights": "model.pt"},
                inference=inference)
    folder.mkdir(parents=True)
    torch.save(state, folder / "model.pt")
    (folder / "metadata.json").write_text(json.dumps(card))
    return folder


def cpuinfo_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_auto_takes_bfloat16_exactly_when_the_cpu_has_bf16_instructions() -> None:
    native = bool({"avx512_bf16", "amx_bf16"} & cpuinfo_flags())
    assert cpu_has_bf16() == native
    assert resolve_precision("auto", CPU) == ("bfloat16" if native else "float32")
    assert resolve_precision("auto", torch.device("cuda")) == "float16"
    assert resolve_precision("float32", CPU) == "float32"
    assert resolve_precision("bfloat16", CPU) == "bfloat16"


@pytest.mark.parametrize(("requested", "message"), [("float16", "needs a CUDA device"), ("half", "one of")])
def test_unusable_precision_is_refused(requested: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        resolve_precision(requested, CPU)


def test_precision_setting_from_file_environment_and_command_line(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text("settings:\n  precision: bfloat16\n")
    assert load_settings(tmp_path / "app.yaml", environ={}, cwd=tmp_path).precision == "bfloat16"
    from_env = load_settings(tmp_path / "app.yaml", environ={"SEGMAMBA_PRECISION": "float32"}, cwd=tmp_path)
    assert from_env.precision == "float32"
    assert load_settings(environ={}, overrides={"precision": "float32"}).precision == "float32"
    assert load_settings(environ={}).precision == "auto"
    with pytest.raises(ConfigError, match="'precision' must be one of"):
        load_settings(environ={"SEGMAMBA_PRECISION": "int8"})


def test_card_precision_is_the_default_and_the_setting_overrides_it(tmp_path: Path) -> None:
    args = {"in_chans": 4, "out_chans": 4, "feat_size": [8, 16, 32, 64], "hidden_size": 64, "nslices": [4, 2, 1, 1]}
    state = SegMamba(**args).state_dict()
    folder = model_folder(tmp_path / "m", args, state, {"roi_size": [32, 32, 32], "precision": "float32"})
    card = load_model_card(folder)
    assert card.inference.precision == "float32"
    assert SegMambaSegmenter(card, device="cpu", progress=False).precision == "float32"
    chosen = SegMambaSegmenter(card, device="cpu", progress=False, precision="bfloat16")
    assert chosen.precision == "bfloat16"
    description = chosen.describe((40, 32, 32))
    assert description["precision"] == "bfloat16" and description["device"] == "cpu"
    assert description["windows"] == 2 and description["overlap"] == 0.5
    bad = model_folder(tmp_path / "bad", args, state, {"roi_size": [32, 32, 32], "precision": "fp8"})
    with pytest.raises(ModelCardError, match=r"inference\.precision must be one of"):
        load_model_card(bad)


@pytest.mark.parametrize(("shape", "roi", "overlap"), [((137, 170, 141), (128,) * 3, 0.5), ((90, 60, 64), (64,) * 3,
                                                       0.25), ((48, 48, 48), (64,) * 3, 0.5)])
def test_window_count_is_what_sliding_window_inference_runs(shape: tuple, roi: tuple, overlap: float) -> None:
    calls: list[int] = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x

    sliding_window_inference(torch.zeros(1, 1, *shape), roi, 1, predictor, overlap=overlap)
    assert window_count(shape, roi, overlap) == len(calls)


def phantom_input(size: int, spacing: float) -> np.ndarray:
    """A synthetic head with a lesion, 4 channels in the BraTS order, z-scored over the head."""
    phantom = Phantom(center=(0.0, -10.0, 20.0), lesion=Lesion(center=(-25.0, 0.0, 35.0), radius=30.0, seed=3))
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = np.asarray(phantom.center) - spacing * (size - 1) / 2
    rendered = phantom.render((size,) * 3, affine)
    image = np.stack([rendered[c] for c in ("t2w", "t2f", "t1n", "t1c")]).astype(np.float32)
    head = image.any(axis=0)
    for channel in image:
        channel[head] = (channel[head] - channel[head].mean()) / channel[head].std()
    return image


@pytest.mark.slow
def test_bfloat16_labels_agree_with_float32_on_the_golden_weights(tmp_path: Path) -> None:
    """Full-size network, reference weights, one 64^3 window over a synthetic head at 2.5 mm."""
    state = seeded().seeded_state_dict(shapes("segmamba_state_dict.json"))
    folder = model_folder(tmp_path / "golden", FULL_SIZE, state, {"roi_size": [64, 64, 64], "mirror_tta": False})
    card = load_model_card(folder)
    image = phantom_input(64, 2.5)
    labels = {precision: SegMambaSegmenter(card, device="cpu", progress=False, precision=precision)(image)
              for precision in ("float32", "bfloat16")}
    reference, fast = labels["float32"], labels["bfloat16"]
    counts = np.bincount(reference.ravel(), minlength=4)
    assert (counts[1:] > 1000).all(), f"every label must be predicted for the comparison to mean something: {counts}"
    assert (reference == fast).mean() >= 0.995
    for region, members in REGIONS.items():
        assert dice(np.isin(fast, members), np.isin(reference, members)) >= 0.99, region


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_under_bfloat16_the_encoder_runs_in_float32_and_the_decoder_in_bfloat16(precision: str) -> None:
    from operators.precision import autocast

    model = SegMamba(in_chans=4, out_chans=4, feat_size=[8, 16, 32, 64], hidden_size=64, nslices=[4, 2, 1, 1]).eval()
    dtypes: dict[str, torch.dtype] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            dtypes[name] = (output[0] if isinstance(output, (tuple, list)) else output).dtype
        return hook

    names = ("vit", "encoder1.layer.conv1", "encoder1.layer.conv2", "encoder1.layer.conv3", "encoder5", "decoder5",
             "decoder4", "decoder3", "decoder1", "out")
    for name in names:
        model.get_submodule(name).register_forward_hook(record(name))
    with torch.inference_mode(), autocast(precision, CPU):
        model(torch.randn(1, 4, 32, 32, 32))
    low = torch.bfloat16 if precision == "bfloat16" else torch.float32
    assert dtypes == {"vit": torch.float32, "encoder1.layer.conv1": torch.float32, "encoder1.layer.conv2": low,
                      "encoder1.layer.conv3": torch.float32, "encoder5": torch.float32, "decoder5": torch.float32,
                      "decoder4": torch.float32, "decoder3": low, "decoder1": low, "out": torch.float32}


@pytest.mark.parametrize("res_block", [True, False])
def test_the_bfloat16_first_skip_does_what_encoder1_does(res_block: bool) -> None:
    """encoder1's forward, written out for the fast path, gives encoder1's own result in float32."""
    model = SegMamba(in_chans=4, out_chans=4, feat_size=[8, 16, 32, 64], hidden_size=64, nslices=[4, 2, 1, 1],
                     res_block=res_block).eval()
    x = torch.randn(2, 4, 16, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(model._first_skip_bfloat16(x), model.encoder1(x), rtol=0, atol=0)
