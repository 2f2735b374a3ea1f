"""Input checks, delta discretisation and the output epilogue shared by the scan backends."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_inputs(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
) -> None:
    """Raise ValueError unless the shapes follow Mamba-1's variable-B/C convention."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, E, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (E={dim}, N), got shape {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("complex A is not supported")
    n_state = A.shape[1]
    expected = {
        "delta": (delta, (batch, dim, length)),
        "B": (B, (batch, n_state, length)),
        "C": (C, (batch, n_state, length)),
        "D": (D, (dim,)),
        "z": (z, (batch, dim, length)),
        "delta_bias": (delta_bias, (dim,)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")


def compute_dtype(u: Tensor) -> torch.dtype:
    """Float32 at least: half and bfloat16 are upcast, float64 stays float64."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def discretize_delta(
    delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype
) -> Tensor:
    """The step size actually used: softplus(delta + delta_bias), each part optional."""
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def epilogue(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """out = (y + D*u) * silu(z), in y's precision, then cast to the caller's dtype."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)
