"""Depthwise causal 1-D convolution (Mamba's short conv before the scan).

Uses the `causal_conv1d` package's CUDA kernel for CUDA tensors when it is installed and
supports the kernel width (2 to 4), else grouped `F.conv1d` with K-1 zeros on the left.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

try:
    from causal_conv1d import causal_conv1d_fn as _cuda_causal_conv1d
except Exception:  # missing package, or an extension built for another torch / CUDA
    _cuda_causal_conv1d = None

_ACTIVATIONS = (None, "silu", "swish")


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                  activation: str | None = "silu") -> Tensor:
    """out[b, e, t] = act(bias[e] + sum_k weight[e, k] * x[b, e, t - K + 1 + k]), zeros before t=0.

    x: (batch, E, L); weight: (E, 1, K) or (E, K); bias: (E,) or None;
    activation: "silu" (= "swish") or None. Returns (batch, E, L) in x's dtype.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}")
    w = weight.squeeze(1) if weight.dim() == 3 else weight
    if w.dim() != 2 or x.dim() != 3 or w.shape[0] != x.shape[1]:
        raise ValueError(f"need x (batch, E, L) and weight (E, K); got {tuple(x.shape)}, {tuple(weight.shape)}")
    width = w.shape[1]
    if _cuda_causal_conv1d is not None and x.is_cuda and 2 <= width <= 4:
        b = None if bias is None else bias.to(x.dtype).contiguous()
        return _cuda_causal_conv1d(x.contiguous(), w.to(x.dtype).contiguous(), b, activation=activation)
    out = F.conv1d(F.pad(x, (width - 1, 0)), w.unsqueeze(1).to(x.dtype),
                   None if bias is None else bias.to(x.dtype), groups=x.shape[1])
    return out if activation is None else F.silu(out)
