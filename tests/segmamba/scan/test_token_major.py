"""The token-major CPU inference path of the ToM layer against the reference's channel-major path."""

from __future__ import annotations

import pytest
import torch

from segmamba.causal_conv import causal_conv1d
from segmamba.scan import selective_scan, token_major
from segmamba.tom import TriOrientedMamba


def perturbed_layer(d_model: int, nslices: int, seed: int) -> TriOrientedMamba:
    """A ToM layer whose three directions all differ from their initialisation (so a direction wired
    to another's weights, order or output position shows)."""
    torch.manual_seed(seed)
    layer = TriOrientedMamba(d_model, nslices=nslices).eval()
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return layer


@pytest.mark.parametrize(("d_model", "length", "nslices", "batch"),
                         [(8, 64, 4, 2), (20, 96, 8, 1), (48, 512, 64, 1)])
def test_fused_layer_matches_the_channel_major_path(d_model: int, length: int, nslices: int, batch: int) -> None:
    """d_model 20 gives 40 channels: a partial channel block; 48 the network's first stage width."""
    layer = perturbed_layer(d_model, nslices, seed=length)
    tokens = torch.randn(batch, length, d_model)
    with torch.inference_mode():
        assert layer._fused_cpu_applies(tokens)
        fused = layer(tokens)
        layer.fused_cpu_inference = False
        reference = layer(tokens)
    # float32 rounding only: the channel-major kernel differs as much from the sequential oracle
    assert float((fused - reference).abs().max()) <= 2e-6 * float(reference.abs().max())


def test_each_direction_reads_and_writes_its_own_order() -> None:
    """One direction at a time (the others' outputs zeroed by their gate weights) must match."""
    layer = perturbed_layer(8, 4, seed=3)
    tokens = torch.randn(1, 32, 8)
    with torch.inference_mode():
        xz = layer.in_proj(tokens)
        for suffix, direction in (("", "forward"), ("_b", "reversed"), ("_s", "inter_slice")):
            order = token_major.direction_order(32, direction, 4)
            conv = getattr(layer, f"conv1d{suffix}")
            u = token_major.causal_conv_silu(xz, order, conv.weight, conv.bias)
            sequence = xz[:, order].transpose(1, 2)  # the direction's sequence, channel-major
            expected = causal_conv1d(sequence[:, : layer.d_inner], conv.weight, conv.bias).transpose(1, 2)
            torch.testing.assert_close(u, expected, rtol=1e-5, atol=1e-6)
            x_dbl = torch.nn.functional.linear(u, getattr(layer, f"x_proj{suffix}").weight)
            dt_proj = getattr(layer, f"dt_proj{suffix}")
            delta = torch.nn.functional.softplus(torch.nn.functional.linear(x_dbl[..., : layer.dt_rank],
                                                                            dt_proj.weight, dt_proj.bias))
            a_log = layer.A_log if suffix == "" else getattr(layer, f"A{suffix}_log")
            out = torch.zeros(1, 32, layer.d_inner)
            token_major.scan_accumulate(u, delta.contiguous(), x_dbl, layer.dt_rank, -torch.exp(a_log),
                                        getattr(layer, f"D{suffix}"), xz, order, out)
            n = layer.d_state
            scanned = selective_scan(
                u.transpose(1, 2), delta.transpose(1, 2), -torch.exp(a_log),
                x_dbl[..., layer.dt_rank: layer.dt_rank + n].transpose(1, 2),
                x_dbl[..., layer.dt_rank + n:].transpose(1, 2), getattr(layer, f"D{suffix}"),
                sequence[:, layer.d_inner:], backend="reference")
            expected_out = torch.zeros_like(out)
            expected_out[:, order] = scanned.transpose(1, 2)
            torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-6)


def test_direction_orders() -> None:
    steps = torch.arange(12)
    assert token_major.direction_order(12, "forward", 3).tolist() == steps.tolist()
    assert token_major.direction_order(12, "reversed", 3).tolist() == steps.flip(0).tolist()
    # the reference's interleave: chunks of 4 tokens, position p of chunk c at step p * 3 + c
    interleaved = steps.reshape(3, 4).transpose(0, 1).reshape(-1)
    assert token_major.direction_order(12, "inter_slice", 3).tolist() == interleaved.tolist()
    with pytest.raises(ValueError, match="unknown direction"):
        token_major.direction_order(12, "sideways", 3)


def test_training_keeps_the_differentiable_path() -> None:
    layer = perturbed_layer(8, 4, seed=5).train()
    tokens = torch.randn(1, 32, 8, requires_grad=True)
    assert not layer._fused_cpu_applies(tokens)
    layer(tokens).square().sum().backward()
    assert tokens.grad is not None and layer.A_s_log.grad is not None
    with torch.no_grad():
        assert layer._fused_cpu_applies(tokens)  # no gradient wanted: inference path
    assert not layer._fused_cpu_applies(tokens.detach().double())


def test_a_layer_narrower_than_one_channel_block_keeps_the_channel_major_path() -> None:
    """d_model 4 gives 8 inner channels, fewer than a scan block: the layer still runs, on the other path."""
    layer = perturbed_layer(4, 4, seed=5)
    tokens = torch.randn(1, 64, 4)
    with torch.inference_mode():
        assert not layer._fused_cpu_applies(tokens)
        assert layer(tokens).shape == (1, 64, 4)
    with pytest.raises(ValueError, match="at least 16 channels"):
        token_major.scan_accumulate(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8), torch.zeros(1, 8, 33), 1,
                                    torch.zeros(8, 16), torch.zeros(8), torch.zeros(1, 8, 16),
                                    torch.arange(8), torch.zeros(1, 8, 8))
