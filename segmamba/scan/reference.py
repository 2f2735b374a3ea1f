"""The oracle: Mamba-1's selective scan as a plain sequential loop over the sequence.

Slow (one small step per position) but obviously right, in any float dtype, and
differentiable: tests compare every other backend, and their gradients, against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from segmamba.scan._common import check_inputs, compute_dtype, discretize_delta, epilogue


def reference_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
) -> Tensor:
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t;  y_t = <h_t, C_t>;  out = (y + D u) silu(z)."""
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = compute_dtype(u)
    d = discretize_delta(delta, delta_bias, delta_softplus, dtype)
    uc, a, b_mat, c_mat = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
    h = uc.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (batch, E, N)
    ys = []
    for t in range(u.shape[-1]):
        d_t = d[:, :, t, None]  # (batch, E, 1)
        h = torch.exp(d_t * a) * h + (d_t * uc[:, :, t, None]) * b_mat[:, None, :, t]
        ys.append((h * c_mat[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uc.new_zeros(uc.shape)
    return epilogue(y, uc, D, z, u.dtype)
