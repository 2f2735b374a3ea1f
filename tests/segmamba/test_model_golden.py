"""SegMamba reproduces the reference implementation's outputs (../shared/golden)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segmamba import SegMamba
from segmamba.tom import TriOrientedMamba
from tests.support.golden import golden_dir, seeded, shapes


def rel_l2(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


def test_state_dict_matches_reference_keys_and_shapes() -> None:
    reference = shapes("segmamba_state_dict.json")
    model = SegMamba(in_chans=4, out_chans=4, depths=[2, 2, 2, 2], feat_size=[48, 96, 192, 384])
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(reference)
    assert ours == reference
    assert sum(p.numel() for p in model.parameters()) == 67_416_196


def test_tom_layer_reproduces_golden_output() -> None:
    reference = shapes("tom_layer_state_dict.json")
    layer = TriOrientedMamba(d_model=48, d_state=16, d_conv=4, expand=2, nslices=16)
    layer.load_state_dict(seeded().seeded_state_dict(reference), strict=True)
    x = seeded().seeded_input((1, 4096, 48), 20261127)
    with torch.no_grad():
        out = layer(x)
    golden = torch.from_numpy(np.load(golden_dir() / "golden_public.npz")["tom_out"])
    assert rel_l2(out, golden) <= 1e-4


@pytest.mark.slow
def test_network_reproduces_golden_logits() -> None:
    torch.manual_seed(0)
    model = SegMamba(in_chans=4, out_chans=4, depths=[2, 2, 2, 2], feat_size=[48, 96, 192, 384]).eval()
    model.load_state_dict(seeded().seeded_state_dict(shapes("segmamba_state_dict.json")), strict=True)
    x = seeded().seeded_input((1, 4, 128, 128, 128), 20261126)
    with torch.no_grad():
        y = model(x)
    golden = np.load(golden_dir() / "golden_public.npz")
    assert rel_l2(y[:, :, ::4, ::4, ::4], torch.from_numpy(golden["logits_sub4"])) <= 1e-3
    mean = y.mean(dim=(0, 2, 3, 4)).numpy()
    std = y.std(dim=(0, 2, 3, 4)).numpy()
    np.testing.assert_allclose(mean, golden["chan_mean"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(std, golden["chan_std"], atol=1e-3, rtol=0)
    counts = torch.bincount(y.argmax(1).flatten(), minlength=4).numpy()
    # argmax can flip on near-ties; allow a few voxels in 2 million
    assert np.abs(counts - golden["argmax_counts"]).sum() <= 200


def test_small_configuration_runs_and_differs_from_hardcoded_head() -> None:
    model = SegMamba(in_chans=4, out_chans=4, feat_size=[16, 32, 64, 128], hidden_size=256).eval()
    assert model.out.conv.conv.in_channels == 16
    with torch.no_grad():
        y = model(torch.randn(2, 4, 32, 32, 32))
    assert y.shape == (2, 4, 32, 32, 32)
    assert torch.isfinite(y).all()


def test_input_not_multiple_of_16_is_rejected() -> None:
    model = SegMamba(in_chans=4, out_chans=4, feat_size=[16, 32, 64, 128], hidden_size=256)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 4, 24, 32, 32))


def test_token_count_not_divisible_by_nslices_is_rejected() -> None:
    layer = TriOrientedMamba(d_model=16, nslices=16)
    with pytest.raises(ValueError, match="nslices"):
        layer(torch.randn(1, 100, 16))
