"""The `mamba_ssm` backend: the stock CUDA kernel, `selective_scan_fn` of state-spaces/mamba.

Available when `mamba_ssm.ops.selective_scan_interface` imports (that module imports the
compiled `selective_scan_cuda` extension at load time) and torch sees a CUDA device.
The kernel takes u, delta, B, C, z in one dtype (float32, float16 or bfloat16) and A, D,
delta_bias in float32; inputs are cast to that contract here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from segmamba.scan._common import check_inputs

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.cache
def _selective_scan_fn() -> Callable[..., Any] | None:
    if not torch.cuda.is_available():
        return None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or its CUDA extension fails to load
        return None
    return selective_scan_fn


def mamba_ssm_available() -> bool:
    """Whether the package and its CUDA extension import and a CUDA device is present."""
    return _selective_scan_fn() is not None


def mamba_ssm_accepts(u: Tensor) -> bool:
    """Whether the kernel can take these inputs (CUDA tensors of a supported dtype)."""
    return u.is_cuda and u.dtype in _KERNEL_DTYPES


def mamba_ssm_scan(
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
    """Selective scan through `mamba_ssm`'s `selective_scan_fn` (autograd included)."""
    fn = _selective_scan_fn()
    if fn is None:
        raise RuntimeError("mamba_ssm (with its CUDA extension) is not available")
    if not mamba_ssm_accepts(u):
        raise ValueError(f"mamba_ssm needs CUDA tensors of {_KERNEL_DTYPES}, got {u.dtype} on {u.device}")
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = u.dtype

    def f32(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.float().contiguous()

    return fn(
        u, delta.to(dtype), A.float().contiguous(), B.to(dtype), C.to(dtype), f32(D),
        None if z is None else z.to(dtype), f32(delta_bias), delta_softplus,
    )
