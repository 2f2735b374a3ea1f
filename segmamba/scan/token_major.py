"""Numba kernels for CPU inference of the ToM layer on token-major tensors (batch, L, channels).

The linear layers of the ToM layer (in_proj, x_proj, dt_proj, out_proj) work on token-major
tensors; the channel-major (batch, E, L) layout of `selective_scan` and of the reference costs a
transpose copy per operand and direction, a flip or an interleave copy of the whole projection
for the reversed and inter-slice directions, and a padded copy for the causal convolution. These
kernels read the projection where it lies instead:

* `causal_conv_silu`: the depthwise causal convolution and SiLU of one direction, the tokens
  taken in the direction's `order` (scan step t reads token ``order[t]``), written in scan order;
* `scan_accumulate`: the selective scan of one direction in scan order (softplus'd step, B and C
  from x_proj's output), the D skip and the SiLU gate z read at token ``order[t]``, the result
  added at token ``order[t]`` of the layer's output, so the three directions sum in place.

The scan keeps a block of CHANNEL_BLOCK channels' states (N lanes each) and walks the sequence,
reading one contiguous row of each operand per step; the blocks run in parallel. The arithmetic
is that of `cpu_kernel.scan_forward` (float32 state, the same `_expf`, the same order of
operations per channel), so results agree with the channel-major path to float32 rounding.
No autograd: this is the inference path (`segmamba.tom.TriOrientedMamba` uses it when no
gradient is needed).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from segmamba.scan import cpu_kernel

CHANNEL_BLOCK = 16  # channels per scan task: one cache line of float32 per operand row
TOKEN_BLOCK = 512  # positions per convolution task

if cpu_kernel.numba is not None:
    import numba
    import numpy as np
    from numba.core import types

    _F32 = np.float32
    _expf = cpu_kernel._expf

    def _conv_kernel(xz: Any, order: Any, weight: Any, bias: Any, out: Any) -> None:  # pragma: no cover
        """out[b, t, e] = silu(bias[e] + sum_k weight[e, k] xz[b, order[t - K + 1 + k], e]), zeros
        before t = 0; x is the first E channels of xz."""
        batch, length, dim = out.shape
        width = weight.shape[1]
        blocks = (length + TOKEN_BLOCK - 1) // TOKEN_BLOCK
        for task in numba.prange(batch * blocks):
            b = task // blocks
            t0 = (task % blocks) * TOKEN_BLOCK
            for t in range(t0, min(t0 + TOKEN_BLOCK, length)):
                for e in range(dim):
                    out[b, t, e] = bias[e]
                for k in range(width):
                    s = t - width + 1 + k
                    if s >= 0:
                        row = order[s]
                        for e in range(dim):
                            out[b, t, e] += weight[e, k] * xz[b, row, e]
                for e in range(dim):
                    v = out[b, t, e]
                    out[b, t, e] = v / (_F32(1.0) + _expf(-v))

    _LANES = np.uint64(CHANNEL_BLOCK)

    def _scan_kernel(u: Any, delta: Any, x_dbl: Any, b_col: int, c_col: int, A_t: Any, D: Any, xz: Any,
                     order: Any, out: Any) -> None:  # pragma: no cover - compiled by numba
        """out[b, order[t], e] += (<h_t, C_t> + D[e] u[b, t, e]) * silu(z[b, order[t], e]), with
        h_t = exp(delta A) h_{t-1} + delta B_t u_t; B_t, C_t = x_dbl[b, t, b_col:], x_dbl[b, t, c_col:];
        A_t is A transposed, (N, E); z is the channels E.. 2E of xz; E >= CHANNEL_BLOCK.

        The state is held lane-major, h[n, e], so each step's update runs across the block's channels
        with no horizontal sum. Every per-step loop runs over exactly CHANNEL_BLOCK lanes with unsigned
        indices (no negative-index wraparound), which LLVM turns into whole vectors: the last block
        is moved back to end at E, and its lanes that the previous block owns add zero."""
        batch, length, dim = u.shape
        n_state = A_t.shape[0]
        blocks = (dim + CHANNEL_BLOCK - 1) // CHANNEL_BLOCK
        z0 = np.uint64(dim)
        for task in numba.prange(batch * blocks):
            b = task // blocks
            start = (task % blocks) * CHANNEL_BLOCK
            e0 = np.uint64(min(start, dim - CHANNEL_BLOCK))
            own = np.empty(CHANNEL_BLOCK, dtype=np.float32)  # 1 for the block's own lanes, 0 for the previous one's
            d_skip = np.empty(CHANNEL_BLOCK, dtype=np.float32)
            a = np.empty(n_state * CHANNEL_BLOCK, dtype=np.float32)
            for i in range(_LANES):
                own[i] = _F32(1.0) if e0 + i >= start else _F32(0.0)
                d_skip[i] = D[e0 + i]
                for n in range(n_state):
                    a[np.uint64(n * CHANNEL_BLOCK) + i] = A_t[n, e0 + i]
            h = np.zeros(n_state * CHANNEL_BLOCK, dtype=np.float32)
            y = np.empty(CHANNEL_BLOCK, dtype=np.float32)
            d_t = np.empty(CHANNEL_BLOCK, dtype=np.float32)
            du = np.empty(CHANNEL_BLOCK, dtype=np.float32)
            for t in range(length):
                token = order[t]
                for i in range(_LANES):
                    d_t[i] = delta[b, t, e0 + i]
                    du[i] = d_t[i] * u[b, t, e0 + i]
                    y[i] = d_skip[i] * u[b, t, e0 + i]
                for n in range(n_state):
                    b_n = x_dbl[b, t, b_col + n]
                    c_n = x_dbl[b, t, c_col + n]
                    row = np.uint64(n * CHANNEL_BLOCK)
                    for i in range(_LANES):  # one vector across the block's channels
                        hn = _expf(d_t[i] * a[row + i]) * h[row + i] + du[i] * b_n
                        h[row + i] = hn
                        y[i] += hn * c_n
                for i in range(_LANES):
                    g = xz[b, token, z0 + e0 + i]
                    out[b, token, e0 + i] += own[i] * (y[i] * (g / (_F32(1.0) + _expf(-g))))

    @functools.cache
    def _compiled(name: str) -> Callable[..., None]:
        """One kernel, compiled for its float32 signature."""
        i64 = types.Array(types.int64, 1, "C")
        a3 = types.Array(types.float32, 3, "A")
        c1, c2, c3 = (types.Array(types.float32, n, "C") for n in (1, 2, 3))
        if name == "conv":
            return cpu_kernel.compile_kernel(_conv_kernel, types.void(a3, i64, c2, c1, c3))
        return cpu_kernel.compile_kernel(
            _scan_kernel, types.void(c3, c3, c3, types.intp, types.intp, c2, c1, c3, i64, c3))


def available() -> bool:
    """Whether the kernels can run (numba imports)."""
    return cpu_kernel.kernel_available()


@functools.cache
def direction_order(length: int, direction: str, nslices: int) -> Tensor:
    """Token read at each scan step: ``forward`` raster order, ``reversed``, or ``inter_slice``
    (position p of chunk c of `nslices` equal chunks is step p * nslices + c)."""
    steps = torch.arange(length, dtype=torch.int64)
    if direction == "forward":
        return steps
    if direction == "reversed":
        return steps.flip(0).contiguous()
    if direction == "inter_slice":
        return (steps % nslices) * (length // nslices) + steps // nslices
    raise ValueError(f"unknown direction {direction!r}")


def causal_conv_silu(xz: Tensor, order: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """SiLU of the depthwise causal convolution of xz's first E channels, tokens in `order`.

    xz: (batch, L, >= E) float32 with unit channel stride; order: (L,) int64; weight: (E, 1, K)
    or (E, K); bias: (E,). Returns (batch, L, E) contiguous, in scan order.
    """
    w = (weight.squeeze(1) if weight.dim() == 3 else weight).detach().float().contiguous()
    out = xz.new_empty(xz.shape[0], xz.shape[1], w.shape[0])
    cpu_kernel.run_kernel(_compiled("conv"), xz, order, w, bias.detach().float().contiguous(), out)
    return out


def scan_accumulate(u: Tensor, delta: Tensor, x_dbl: Tensor, b_col: int, A: Tensor, D: Tensor, xz: Tensor,
                    order: Tensor, out: Tensor) -> None:
    """Add one direction's gated scan output to `out` (batch, L, E), at the tokens of `order`.

    u, delta: (batch, L, E) contiguous, scan order (delta already softplus'd); x_dbl: (batch, L,
    >= b_col + 2N), B at columns b_col.., C after it; A: (E, N); D: (E,); xz: (batch, L, 2E) token
    order, z its channels E..2E. All float32; E >= CHANNEL_BLOCK.
    """
    if u.shape[-1] < CHANNEL_BLOCK:
        raise ValueError(f"the token-major scan needs at least {CHANNEL_BLOCK} channels, got {u.shape[-1]}")
    n_state = A.shape[1]
    cpu_kernel.run_kernel(_compiled("scan"), u, delta, x_dbl.contiguous(), b_col, b_col + n_state,
                          A.detach().float().t().contiguous(), D.detach().float().contiguous(), xz.contiguous(),
                          order, out)
