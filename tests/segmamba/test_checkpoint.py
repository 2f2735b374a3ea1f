"""Checkpoints round-trip and reference-style checkpoints load; bad ones fail naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segmamba import CheckpointError, SegMamba, load_checkpoint


def small_model() -> SegMamba:
    return SegMamba(in_chans=4, out_chans=4, feat_size=[8, 16, 32, 64], hidden_size=64).eval()


@pytest.fixture
def trained() -> SegMamba:
    torch.manual_seed(1)
    return small_model()


def outputs(model: SegMamba) -> torch.Tensor:
    x = torch.randn(1, 4, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(x)


def test_round_trip_gives_identical_outputs(trained: SegMamba, tmp_path: Path) -> None:
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    torch.manual_seed(2)
    fresh = small_model()
    assert not torch.equal(outputs(fresh), outputs(trained))
    layout = load_checkpoint(fresh, tmp_path / "w.pt")
    assert layout.container_key is None and layout.stripped_prefix is None
    assert torch.equal(outputs(fresh), outputs(trained))


@pytest.mark.parametrize("container", ["state_dict", "model"])
def test_containers_and_ddp_prefix_are_detected(trained: SegMamba, tmp_path: Path, container: str) -> None:
    ddp = {f"module.{k}": v for k, v in trained.state_dict().items()}
    torch.save({container: ddp, "epoch": 7}, tmp_path / "w.pt")
    fresh = small_model()
    layout = load_checkpoint(fresh, tmp_path / "w.pt")
    assert layout.container_key == container
    assert layout.stripped_prefix == "module."
    assert "module." in layout.describe()
    assert torch.equal(outputs(fresh), outputs(trained))


def test_wrong_shape_is_named(trained: SegMamba) -> None:
    state = trained.state_dict()
    state["vit.stages.0.0.mamba.A_log"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=r"wrong shapes: vit\.stages\.0\.0\.mamba\.A_log"):
        load_checkpoint(small_model(), state)


def test_missing_key_is_named(trained: SegMamba) -> None:
    state = trained.state_dict()
    del state["out.conv.conv.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys: out\.conv\.conv\.bias"):
        load_checkpoint(small_model(), state)


def test_ambiguous_or_foreign_container_is_refused(trained: SegMamba) -> None:
    state = trained.state_dict()
    with pytest.raises(CheckpointError, match="exactly one of"):
        load_checkpoint(small_model(), {"state_dict": state, "model": state})
    with pytest.raises(CheckpointError, match="exactly one of"):
        load_checkpoint(small_model(), {"weights": state})


def test_partial_ddp_prefix_is_refused(trained: SegMamba) -> None:
    state = dict(trained.state_dict())
    first = next(iter(state))
    state[f"module.{first}"] = state.pop(first)
    with pytest.raises(CheckpointError, match="some but not all"):
        load_checkpoint(small_model(), state)
