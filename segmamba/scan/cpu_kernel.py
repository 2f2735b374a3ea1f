"""Numba-compiled forward selective scan for CPU float32 (no autograd).

One fused pass over the sequence, in parallel over the (batch, channel) rows: at each
position the N state lanes are updated with a vectorisable exp and contracted with C, and
the D skip and the SiLU gate are applied, so the (E, N, L) state never exists in memory.

`math.exp` is a scalar libm call that LLVM cannot vectorise (numba here has no SVML),
so `_expf` is a float32 exp written out: Cody-Waite range reduction, a degree-7 Taylor
polynomial and 2^k assembled in the exponent bits (max relative error ~1 ulp, tested).

The kernel is compiled lazily on first use (cached on disk when a cache directory is
writable) for one signature; `kernel_available()` says whether numba imports at all.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

try:
    import numba
    import numpy as np
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic
except ImportError:  # numba is optional: chunked falls back to its torch path
    numba = None

# exp arguments are clamped to [EXP_FLOOR, EXP_CEIL]. Below the floor the decay is < 1e-26,
# far under float32 resolution; clamping keeps subnormal products (slow on x86) out of the
# recurrence. Mamba's A < 0 and delta >= 0 keep every argument <= 0, below the ceiling.
EXP_FLOOR = -60.0
EXP_CEIL = 88.0
_LOCK = threading.Lock()  # numba's workqueue threading layer is not re-entrant


def kernel_available() -> bool:
    """Whether numba imports (the kernel itself is compiled on first use)."""
    return numba is not None


if numba is not None:
    _F32 = np.float32
    _LOG2E = _F32(1.4426950408889634)
    _LN2_HI = _F32(0.693359375)  # 355/512: k * _LN2_HI is exact for |k| < 2**15
    _LN2_LO = _F32(0.6931471805599453 - 0.693359375)
    _INV_FACT = tuple(_F32(1.0 / math.factorial(i)) for i in range(8))

    @intrinsic
    def _int_bits_as_float(typingctx: Any, bits: Any) -> Any:
        """Reinterpret an int32's bits as a float32 (an LLVM bitcast, vectorisable)."""
        sig = types.float32(types.int32)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.bitcast(args[0], ir.FloatType())

        return sig, codegen

    # A separate function (LLVM still inlines it) with FMA contraction only: under the
    # kernel's 'reassoc' the two-part ln2 reduction would be folded and lose ~3 bits.
    @numba.njit(fastmath={"contract"})
    def _expf(x: float) -> float:
        """exp(min(max(x, EXP_FLOOR), EXP_CEIL)) in float32, written to vectorise."""
        x = min(max(x, _F32(EXP_FLOOR)), _F32(EXP_CEIL))
        k = np.floor(x * _LOG2E + _F32(0.5))
        r = (x - k * _LN2_HI) - k * _LN2_LO  # |r| <= ln2/2
        p = _INV_FACT[7]
        p = p * r + _INV_FACT[6]
        p = p * r + _INV_FACT[5]
        p = p * r + _INV_FACT[4]
        p = p * r + _INV_FACT[3]
        p = p * r + _INV_FACT[2]
        p = p * r + _INV_FACT[1]
        p = p * r + _INV_FACT[0]
        return p * _int_bits_as_float((np.int32(k) + np.int32(127)) << np.int32(23))

    def _scan_kernel(
        u: Any, d: Any, A: Any, Bt: Any, Ct: Any, D: Any, z: Any, has_z: bool, out: Any
    ) -> None:  # pragma: no cover - compiled by numba, exercised through scan_forward
        """out[b,e,t] = (<h_t, C_t> + D[e] u[b,e,t]) * silu(z[b,e,t]), one (b, e) row per task."""
        batch, dim, length = u.shape
        n_state = A.shape[1]
        for row in numba.prange(batch * dim):
            b = row // dim
            e = row % dim
            h = np.zeros(n_state, dtype=np.float32)
            for t in range(length):
                d_t = d[b, e, t]
                u_t = u[b, e, t]
                du = d_t * u_t
                y = _F32(0.0)
                for n in range(n_state):  # vectorised over the N state lanes
                    hn = _expf(d_t * A[e, n]) * h[n] + du * Bt[b, t, n]
                    h[n] = hn
                    y += hn * Ct[b, t, n]
                y += D[e] * u_t
                if has_z:
                    g = z[b, e, t]
                    y *= g / (_F32(1.0) + _expf(-g))
                out[b, e, t] = y

    # No 'nnan'/'ninf': LLVM must not assume finite inputs (NaN inputs give NaN outputs).
    _FLAGS = {"contract", "reassoc", "nsz", "arcp", "afn"}

    @functools.cache
    def _compiled() -> Callable[..., None]:
        c1, c2, c3 = (types.Array(types.float32, ndim, "C") for ndim in (1, 2, 3))
        sig = types.void(c3, c3, c2, c3, c3, c1, c3, types.boolean, c3)
        options = {"parallel": True, "fastmath": _FLAGS, "nogil": True}
        try:
            return numba.njit(sig, cache=True, **options)(_scan_kernel)
        except RuntimeError:  # no writable cache location: compile in memory
            return numba.njit(sig, **options)(_scan_kernel)


def _as_array(t: Tensor) -> Any:
    return t.detach().numpy()


def scan_forward(u: Tensor, d: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                 z: Tensor | None) -> Tensor:
    """Fused forward scan on CPU float32 tensors; d is the discretised (biased, softplus) step.

    u, d, z: (batch, E, L); A: (E, N); B, C: (batch, N, L); D: (E,).
    Returns (y + D u) * silu(z) as a new contiguous float32 (batch, E, L) tensor.
    """
    if numba is None:
        raise RuntimeError("the CPU scan kernel needs numba, which is not installed")
    f32 = torch.float32
    # Contiguous rows: the loop walks each (b, e) row along L (strided rows cost ~4x).
    u, d = u.to(f32).contiguous(), d.to(f32).contiguous()
    batch, dim, length = u.shape
    # (batch, L, N) rows make the per-position loop over N contiguous; a no-op for the
    # network, whose B and C are transposed views of (batch, L, N) projections.
    bt = B.to(f32).transpose(1, 2).contiguous()
    ct = C.to(f32).transpose(1, 2).contiguous()
    d_vec = torch.zeros(dim, dtype=f32) if D is None else D.to(f32).contiguous()
    gate = u if z is None else z.to(f32).contiguous()
    out = torch.empty(batch, dim, length, dtype=f32)
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    kernel = _compiled()
    with _LOCK:
        numba.set_num_threads(threads)
        kernel(
            _as_array(u), _as_array(d), _as_array(A.to(f32).contiguous()),
            _as_array(bt), _as_array(ct), _as_array(d_vec),
            _as_array(gate), z is not None, _as_array(out),
        )
    return out
