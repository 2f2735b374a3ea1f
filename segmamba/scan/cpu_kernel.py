"""Numba-compiled selective scan for CPU float32: fused forward and, for autograd, backward.

Forward (`scan_forward`): one fused pass over the sequence, in parallel over the (batch,
channel) rows: at each position the N state lanes are updated with a vectorisable exp and
contracted with C, and the D skip and the SiLU gate are applied, so the (E, N, L) state never
exists in memory.

With autograd (`scan_with_grad`): the same forward also saves the state at every
CHECKPOINT_INTERVAL-th position; the backward kernel walks the chunks in reverse, recomputes
each chunk's states from its checkpoint and runs the adjoint recurrence, in parallel over
groups of rows (one per thread). B and C are shared by all channels: each group accumulates
its own (batch, L, N) partials, summed afterwards, so the group count is capped by
GRAD_PARTIALS_BYTES. The discretisation (bias, softplus) stays in torch, whose autograd
carries d's gradient on to delta and delta_bias.

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
from torch.autograd.function import once_differentiable

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
CHECKPOINT_INTERVAL = 64  # positions between saved states (memory: N / 64 floats per input float)
GRAD_PARTIALS_BYTES = 256 * 2**20  # budget for the backward's per-group B and C partials
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
        u: Any, d: Any, A: Any, Bt: Any, Ct: Any, D: Any, z: Any, has_z: bool, out: Any, states: Any,
        interval: int,
    ) -> None:  # pragma: no cover - compiled by numba, exercised through scan_forward
        """out[b,e,t] = (<h_t, C_t> + D[e] u[b,e,t]) * silu(z[b,e,t]), one (b, e) row per task.

        With states of shape (batch, E, ceil(L / interval), N), the state entering position
        c * interval (h_{c*interval - 1}, zero for c = 0) is saved for the backward pass.
        """
        batch, dim, length = u.shape
        n_state = A.shape[1]
        save = states.shape[2] > 0
        for row in numba.prange(batch * dim):
            b = row // dim
            e = row % dim
            h = np.zeros(n_state, dtype=np.float32)
            for t0 in range(0, length, interval):
                if save:
                    states[b, e, t0 // interval, :] = h
                for t in range(t0, min(t0 + interval, length)):
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

    def _scan_backward_kernel(
        u: Any, d: Any, A: Any, Bt: Any, Ct: Any, D: Any, z: Any, has_z: bool, grad: Any, states: Any,
        interval: int, gu: Any, gd: Any, gz: Any, gA: Any, gD: Any, gBt: Any, gCt: Any,
    ) -> None:  # pragma: no cover - compiled by numba, exercised through scan_with_grad
        """Reverse-time pass of the fused scan: gradients of out for u, d, z, A, D, B and C.

        The (b, e) rows are split into gBt.shape[0] contiguous groups, one per task. A group walks
        the chunks of `interval` positions from last to first; per chunk and row it recomputes the
        states from the saved chunk-start state, then runs the adjoint recurrence backwards:
        dL/dh_t = gy_t C_t + exp(d_{t+1} A) dL/dh_{t+1}, with gy = dL/dy. Rows' partials of the
        channel-shared B and C go to the group's own slice gBt[g] / gCt[g]; A and D to their (b, e)
        row: no two tasks write the same element.
        """
        batch, dim, length = u.shape
        n_state = A.shape[1]
        rows = batch * dim
        groups = gBt.shape[0]
        for grp in numba.prange(groups):
            r0 = grp * rows // groups
            r1 = (grp + 1) * rows // groups
            carry = np.zeros((r1 - r0, n_state), dtype=np.float32)  # exp(d_{t+1} A) dL/dh_{t+1}
            hs = np.empty((interval + 1, n_state), dtype=np.float32)  # hs[k + 1] = h at chunk step k
            decays = np.empty((interval, n_state), dtype=np.float32)
            ys = np.empty(interval, dtype=np.float32)
            for c in range(states.shape[2] - 1, -1, -1):
                t0 = c * interval
                steps = min(interval, length - t0)
                for row in range(r0, r1):
                    b = row // dim
                    e = row % dim
                    hs[0, :] = states[b, e, c, :]
                    for k in range(steps):
                        t = t0 + k
                        d_t = d[b, e, t]
                        du = d_t * u[b, e, t]
                        y = _F32(0.0)
                        for n in range(n_state):
                            a = _expf(d_t * A[e, n])
                            hn = a * hs[k, n] + du * Bt[b, t, n]
                            decays[k, n] = a
                            hs[k + 1, n] = hn
                            y += hn * Ct[b, t, n]
                        ys[k] = y
                    gh = carry[row - r0]
                    g_a = gA[b, e]
                    g_skip = _F32(0.0)
                    for k in range(steps - 1, -1, -1):
                        t = t0 + k
                        d_t = d[b, e, t]
                        u_t = u[b, e, t]
                        gy = grad[b, e, t]
                        if has_z:
                            zt = z[b, e, t]
                            s = _F32(1.0) / (_F32(1.0) + _expf(-zt))
                            gz[b, e, t] = gy * (ys[k] + D[e] * u_t) * s * (_F32(1.0) + zt * (_F32(1.0) - s))
                            gy *= zt * s
                        g_skip += gy * u_t
                        du = d_t * u_t
                        gh_b = _F32(0.0)
                        g_step = _F32(0.0)
                        # Over the N state lanes, in loops that each write one or two arrays:
                        # LLVM vectorises those (more candidate aliases and it gives up).
                        for n in range(n_state):
                            gh[n] += gy * Ct[b, t, n]
                        for n in range(n_state):
                            gCt[grp, b, t, n] += gy * hs[k + 1, n]
                        for n in range(n_state):
                            gBt[grp, b, t, n] += gh[n] * du
                            gh_b += gh[n] * Bt[b, t, n]
                        for n in range(n_state):
                            x = gh[n] * decays[k, n] * hs[k, n]  # dL/d(d_t A_n)
                            g_step += x * A[e, n]
                            g_a[n] += x * d_t
                            gh[n] *= decays[k, n]
                        gd[b, e, t] = g_step + u_t * gh_b
                        gu[b, e, t] = gy * D[e] + d_t * gh_b
                    gD[b, e] += g_skip

    # No 'nnan'/'ninf': LLVM must not assume finite inputs (NaN inputs give NaN outputs).
    _FLAGS = {"contract", "reassoc", "nsz", "arcp", "afn"}

    def compile_kernel(fn: Callable[..., None], signature: Any) -> Callable[..., None]:
        """`fn` compiled by numba for one signature: parallel, nogil, the kernels' fastmath flags; cached
        on disk when a cache directory is writable, else compiled in memory."""
        options = {"parallel": True, "fastmath": _FLAGS, "nogil": True}
        try:
            return numba.njit(signature, cache=True, **options)(fn)
        except RuntimeError:  # no writable cache location: compile in memory
            return numba.njit(signature, **options)(fn)

    @functools.cache
    def _compiled(backward: bool) -> Callable[..., None]:
        """The forward (or backward) kernel, compiled for its one float32 signature."""
        c1, c2, c3, c4 = (types.Array(types.float32, ndim, "C") for ndim in (1, 2, 3, 4))
        common = (c3, c3, c2, c3, c3, c1, c3, types.boolean)
        if backward:
            return compile_kernel(_scan_backward_kernel,
                                  types.void(*common, c3, c4, types.intp, c3, c3, c3, c3, c2, c4, c4))
        return compile_kernel(_scan_kernel, types.void(*common, c3, c4, types.intp))


def _as_array(t: Tensor) -> Any:
    return t.detach().numpy()


def _threads() -> int:
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def run_kernel(kernel: Callable[..., None], *args: Tensor | bool | int) -> None:
    """Run a compiled kernel on torch tensors (as numpy views), with torch's thread count."""
    arrays = [_as_array(a) if isinstance(a, Tensor) else a for a in args]
    with _LOCK:
        numba.set_num_threads(_threads())
        kernel(*arrays)


def _prepare(u: Tensor, d: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
             z: Tensor | None) -> tuple[Tensor, ...]:
    """Contiguous float32 operands in the kernels' layouts: B and C as (batch, L, N)."""
    if numba is None:
        raise RuntimeError("the CPU scan kernel needs numba, which is not installed")
    f32 = torch.float32
    # Contiguous rows: the loop walks each (b, e) row along L (strided rows cost ~4x).
    u, d = u.detach().to(f32).contiguous(), d.detach().to(f32).contiguous()
    # (batch, L, N) rows make the per-position loop over N contiguous; a no-op for the
    # network, whose B and C are transposed views of (batch, L, N) projections.
    bt = B.detach().to(f32).transpose(1, 2).contiguous()
    ct = C.detach().to(f32).transpose(1, 2).contiguous()
    d_vec = torch.zeros(u.shape[1], dtype=f32) if D is None else D.detach().to(f32).contiguous()
    gate = u if z is None else z.detach().to(f32).contiguous()
    return u, d, A.detach().to(f32).contiguous(), bt, ct, d_vec, gate


def _forward(ops: tuple[Tensor, ...], has_z: bool, interval: int, save: bool) -> tuple[Tensor, Tensor]:
    u = ops[0]
    batch, dim, length = u.shape
    n_chunks = -(-length // interval) if save else 0
    states = torch.empty(batch, dim, n_chunks, ops[2].shape[1], dtype=torch.float32)
    out = torch.empty(batch, dim, length, dtype=torch.float32)
    if length:
        run_kernel(_compiled(False), *ops, has_z, out, states, interval)
    return out, states


def scan_forward(u: Tensor, d: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                 z: Tensor | None) -> Tensor:
    """Fused forward scan on CPU float32 tensors; d is the discretised (biased, softplus) step.

    u, d, z: (batch, E, L); A: (E, N); B, C: (batch, N, L); D: (E,).
    Returns (y + D u) * silu(z) as a new contiguous float32 (batch, E, L) tensor (no autograd).
    """
    ops = _prepare(u, d, A, B, C, D, z)
    return _forward(ops, z is not None, max(1, u.shape[-1]), save=False)[0]


def _group_count(batch: int, dim: int, length: int, n_state: int) -> int:
    """Parallel tasks of the backward kernel: one per thread, within the B/C partials' budget."""
    per_group = 2 * 4 * batch * length * n_state
    return max(1, min(_threads(), batch * dim, GRAD_PARTIALS_BYTES // max(1, per_group)))


class _KernelScan(torch.autograd.Function):
    """The fused scan with a numba backward; inputs as `scan_with_grad` takes them."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, d: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                z: Tensor | None, interval: int) -> Tensor:
        ops = _prepare(u, d, A, B, C, D, z)
        out, states = _forward(ops, z is not None, interval, save=True)
        ctx.ops, ctx.states, ctx.interval = ops, states, interval
        ctx.has_d, ctx.has_z = D is not None, z is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        u, d, A, bt, ct, d_vec, gate = ctx.ops
        batch, dim, length = u.shape
        n_state = A.shape[1]
        groups = _group_count(batch, dim, length, n_state)
        gu, gd = torch.empty_like(u), torch.empty_like(d)
        gz = torch.empty_like(u) if ctx.has_z else u.new_empty(0, 0, 0)
        g_a = u.new_zeros(batch, dim, n_state)
        g_skip = u.new_zeros(batch, dim)
        g_bt = u.new_zeros(groups, batch, length, n_state)
        g_ct = u.new_zeros(groups, batch, length, n_state)
        if length:
            run_kernel(_compiled(True), u, d, A, bt, ct, d_vec, gate, ctx.has_z, grad.to(torch.float32).contiguous(),
                    ctx.states, ctx.interval, gu, gd, gz, g_a, g_skip, g_bt, g_ct)
        ctx.ops = ctx.states = None
        return (gu, gd, g_a.sum(0), g_bt.sum(0).transpose(1, 2), g_ct.sum(0).transpose(1, 2),
                g_skip.sum(0) if ctx.has_d else None, gz if ctx.has_z else None, None)


def scan_with_grad(u: Tensor, d: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                   z: Tensor | None, *, checkpoint_every: int | None = None) -> Tensor:
    """`scan_forward` with autograd: gradients for u, d, A, B, C, D and z by the numba backward.

    Float32 CPU tensors (others are cast to float32). The forward saves the state every
    `checkpoint_every` positions (default CHECKPOINT_INTERVAL; (batch, E, N, L / checkpoint_every)
    floats); the backward recomputes each chunk's states from them and runs the adjoint scan.
    """
    checkpoint_every = CHECKPOINT_INTERVAL if checkpoint_every is None else checkpoint_every
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    return _KernelScan.apply(u, d, A, B, C, D, z, checkpoint_every)
