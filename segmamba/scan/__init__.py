"""Mamba-1 selective scan with interchangeable backends.

    from segmamba.scan import selective_scan
    out = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

Backends: "reference" (sequential loop, the oracle), "chunked" (CPU default: numba kernel
for inference, torch chunks for autograd), "mamba_ssm" (stock CUDA kernel, when
installed). "auto" takes mamba_ssm for CUDA tensors when it is available, else chunked.
"""

from __future__ import annotations

from torch import Tensor

from segmamba.scan.chunked import chunked_scan
from segmamba.scan.mamba_ssm_backend import mamba_ssm_accepts, mamba_ssm_available, mamba_ssm_scan
from segmamba.scan.reference import reference_scan
from segmamba.scan.registry import (
    available_backends,
    disabled_backends,
    register_backend,
    registered_backends,
    resolve,
    run_auto,
)
from segmamba.scan.triton_backend import triton_accepts, triton_available, triton_scan

__all__ = ["available_backends", "disabled_backends", "register_backend", "registered_backends", "selective_scan"]

register_backend("reference", reference_scan)
register_backend("chunked", chunked_scan)
register_backend("mamba_ssm", mamba_ssm_scan, available=mamba_ssm_available, accepts=mamba_ssm_accepts,
                 auto_priority=100)
# Ours ranks above mamba_ssm: chunk-parallel where mamba_ssm's grid is only batch x channels
# (docs/gpu.md; benchmarks/bench_gpu.py times both).
register_backend("triton", triton_scan, available=triton_available, accepts=triton_accepts, auto_priority=150)


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Mamba-1 `selective_scan_fn` semantics (variable B and C), output in u's dtype.

    u, delta: (batch, E, L); A: (E, N), real, negative; B, C: (batch, N, L);
    D, delta_bias: (E,) or None; z: (batch, E, L) or None.
    delta <- softplus(delta + delta_bias) (each step optional);
    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, h_{-1} = 0;  y_t = sum_n h_t C_t;
    out = (y + D u) * silu(z). Computed in float32 at least.
    Raises ValueError for an unknown or unavailable backend name. Under "auto", a backend whose
    first run fails is dropped for the process with one warning and the next one runs.
    """
    if backend == "auto":
        return run_auto(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return resolve(backend, u).fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
