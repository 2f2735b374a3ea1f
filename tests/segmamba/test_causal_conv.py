"""Depthwise causal convolution against its definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segmamba.causal_conv import causal_conv1d


def loop_definition(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    activation: str | None) -> torch.Tensor:
    """out[b, e, t] = bias[e] + sum_k w[e, k] x[b, e, t - (K - 1) + k], x = 0 before t = 0."""
    batch, dim, length = x.shape
    width = weight.shape[-1]
    w = weight.reshape(dim, width)
    out = torch.zeros_like(x)
    for t in range(length):
        acc = torch.zeros(batch, dim, dtype=x.dtype) if bias is None else bias.expand(batch, dim).clone()
        for k in range(width):
            src = t - (width - 1) + k
            if src >= 0:
                acc = acc + w[:, k] * x[:, :, src]
        out[:, :, t] = acc
    return F.silu(out) if activation == "silu" else out


@pytest.mark.parametrize("width", [1, 2, 4, 5])
@pytest.mark.parametrize("length", [1, 3, 20])
@pytest.mark.parametrize("activation", ["silu", None])
@pytest.mark.parametrize("weight_3d", [True, False])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_loop_definition(width: int, length: int, activation: str | None, weight_3d: bool,
                                 with_bias: bool) -> None:
    g = torch.Generator().manual_seed(width * 100 + length)
    x = torch.randn(2, 6, length, generator=g, dtype=torch.float64)
    weight = torch.randn(6, 1, width, generator=g, dtype=torch.float64)
    bias = torch.randn(6, generator=g, dtype=torch.float64) if with_bias else None
    out = causal_conv1d(x, weight if weight_3d else weight[:, 0], bias, activation=activation)
    assert out.shape == x.shape
    torch.testing.assert_close(out, loop_definition(x, weight, bias, activation), rtol=1e-12, atol=1e-12)


def test_causality() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 30, generator=g)
    weight, bias = torch.randn(4, 1, 4, generator=g), torch.randn(4, generator=g)
    before = causal_conv1d(x, weight, bias)
    x[:, :, 17] += 1.0
    after = causal_conv1d(x, weight, bias)
    assert torch.equal(before[..., :17], after[..., :17])
    assert not torch.equal(before[..., 17], after[..., 17])


def test_rejects_unknown_activation() -> None:
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(torch.zeros(1, 2, 3), torch.zeros(2, 1, 2), None, activation="relu")
