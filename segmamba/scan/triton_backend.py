"""The "triton" backend: a forward selective scan in Triton, parallel over sequence chunks.

The reference CUDA kernel gives one thread block to each (batch, channel) row and walks the
whole sequence: at SegMamba's first stage that is 96 blocks each walking 262,144 steps.
Here the sequence is also split into chunks, in three launches:

1. ``_chunk_kernel`` (STAGE 1), grid (batch, channel blocks, chunks): each chunk scanned
   from a zero state; stores its end state and the sum of its steps.
2. ``_carry_kernel``, grid (batch, channel blocks): walks the chunks in order, replacing
   each end state by the chunk's true start state,
   ``start[c+1] = exp(A * sum(delta in chunk c)) * start[c] + end[c]``. Every exponent is A
   times a sum of non-negative steps, so nothing overflows.
3. ``_chunk_kernel`` (STAGE 3): rescans each chunk from its true start state and writes
   ``(<h_t, C_t> + D u_t) * silu(z_t)``.

Inside a chunk, tiles of BLOCK_T positions are scanned in registers with
``tl.associative_scan`` over (decay, input) pairs, ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)``:
products of decays in (0, 1] only underflow. ``softplus(delta + delta_bias)`` is computed in
the kernel. Inputs may be float32, float16 or bfloat16 with any strides (the network hands
over transposed views); all arithmetic is float32; the output has u's dtype. With a single
chunk (short sequences) launches 1 and 2 are skipped.

Forward only: when autograd needs a graph, or for float64, the call goes to the chunked
torch backend. CPU tensors run under Triton's interpreter (``TRITON_INTERPRET=1``), which is
how the tests check the kernels without a GPU. The kernels are decorated on first use, per
interpreter mode, because ``triton.jit`` decides between compiling and interpreting when it
decorates, and the environment variable may be set after this module is imported.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from segmamba.scan._common import check_inputs
from segmamba.scan.chunked import chunked_scan

triton: Any = None  # imported on first launch (see `_kernels`)
tl: Any = None

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class ScanConfig:
    """Tile sizes and launch shape. ``chunk_tiles`` None picks chunks to fill the device.

    The default compiles for sm_90 to ~103 registers per thread, no spills (16 state lanes);
    benchmarks/bench_gpu.py times a few alternatives.
    """

    block_e: int = 8
    block_t: int = 32
    num_warps: int = 8
    chunk_tiles: int | None = None
    target_programs: int = 1024


DEFAULT_CONFIG = ScanConfig()


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.cache
def triton_installed() -> bool:
    """Whether the triton package is installed (found without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """Whether triton is installed and a CUDA device is present (the interpreter is for tests)."""
    return triton_installed() and torch.cuda.is_available()


def triton_accepts(u: Tensor) -> bool:
    """Whether these inputs suit the kernel: CUDA tensors of float32, float16 or bfloat16."""
    return u.is_cuda and u.dtype in _DTYPES


def triton_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    *,
    config: ScanConfig = DEFAULT_CONFIG,
) -> Tensor:
    """Selective scan with Mamba-1 semantics; see `segmamba.scan.selective_scan`.

    Falls back to `chunked_scan` when a gradient is needed or u is float64.
    Raises RuntimeError without triton, or for CPU tensors outside the interpreter.
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    if needs_grad or u.dtype == torch.float64:
        return chunked_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if not triton_installed():
        raise RuntimeError("the triton backend needs the triton package")
    interpret = interpreting()
    if not (u.is_cuda or interpret):
        raise RuntimeError("the triton backend needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
    if u.dtype not in _DTYPES:
        raise ValueError(f"the triton backend takes {_DTYPES}, got {u.dtype}")
    return _launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, config, interpret)


def _launch(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
            delta_bias: Tensor | None, softplus: bool, cfg: ScanConfig, interpret: bool) -> Tensor:
    batch, dim, length = u.shape
    n_state = A.shape[1]
    out = torch.empty((batch, dim, length), dtype=u.dtype, device=u.device)
    if length == 0 or batch == 0 or dim == 0:
        return out
    chunk_kernel, carry_kernel = _kernels(interpret)
    block_n = max(2, triton.next_power_of_2(n_state))
    block_t = min(cfg.block_t, max(2, triton.next_power_of_2(length)))
    e_blocks = triton.cdiv(dim, cfg.block_e)
    tiles = triton.cdiv(length, block_t)
    chunk_tiles = cfg.chunk_tiles or max(1, triton.cdiv(tiles, max(1, cfg.target_programs // (batch * e_blocks))))
    chunk_len = chunk_tiles * block_t
    n_chunks = triton.cdiv(length, chunk_len)

    a2 = (A.float() * LOG2E).contiguous()  # exp(x) = exp2(x log2 e)
    d_vec = D.float().contiguous() if D is not None else a2
    bias = delta_bias.float().contiguous() if delta_bias is not None else a2
    z_t = z if z is not None else u
    states = torch.zeros((batch, dim, n_state, n_chunks), dtype=torch.float32, device=u.device)
    step_sums = torch.empty((batch, dim, n_chunks), dtype=torch.float32, device=u.device)

    args: tuple[Any, ...] = (
        u, delta, a2, B, C, d_vec, z_t, bias, out, states, step_sums,
        dim, n_state, length, chunk_len,
        *u.stride(), *delta.stride(), *a2.stride(), *B.stride(), *C.stride(), *z_t.stride(), *out.stride(),
    )
    flags = {"HAS_D": D is not None, "HAS_Z": z is not None, "HAS_BIAS": delta_bias is not None,
             "SOFTPLUS": softplus, "BLOCK_E": cfg.block_e, "BLOCK_N": block_n, "BLOCK_T": block_t,
             "num_warps": cfg.num_warps}
    if n_chunks > 1:
        chunk_kernel[(batch, e_blocks, n_chunks)](*args, STAGE=1, **flags)
        carry_kernel[(batch, e_blocks)](
            a2, states, step_sums, dim, n_state, n_chunks,
            BLOCK_E=cfg.block_e, BLOCK_N=block_n, num_warps=cfg.num_warps,
        )
    chunk_kernel[(batch, e_blocks, n_chunks)](*args, STAGE=3, **flags)
    return out


def _combine(a1, b1, a2, b2):  # unannotated: triton resolves annotations as globals
    """Compose two steps of h -> a h + b: first (a1, b1), then (a2, b2)."""
    return a1 * a2, a2 * b1 + b2


def _chunk_kernel(
    u_ptr, delta_ptr, a2_ptr, b_ptr, c_ptr, d_ptr, z_ptr, bias_ptr, out_ptr, states_ptr, sums_ptr,
    dim, n_state, length, chunk_len,
    su_b, su_e, su_l, sd_b, sd_e, sd_l, sa_e, sa_n, sb_b, sb_n, sb_l, sc_b, sc_n, sc_l,
    sz_b, sz_e, sz_l, so_b, so_e, so_l,
    STAGE: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    SOFTPLUS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_T: tl.constexpr,
) -> None:
    """STAGE 1: chunk end states from zero and step sums. STAGE 3: rescan from true starts, output."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    pid_c = tl.program_id(2)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_T)
    mask_e = offs_e < dim
    mask_n = offs_n < n_state
    mask_en = mask_e[:, None] & mask_n[None, :]
    a2 = tl.load(a2_ptr + offs_e[:, None] * sa_e + offs_n[None, :] * sa_n, mask=mask_en, other=0.0)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_e, mask=mask_e, other=0.0)
    if HAS_D:
        d_skip = tl.load(d_ptr + offs_e, mask=mask_e, other=0.0)
    # states: (batch, E, N, chunks), contiguous
    state_offs = ((pid_b * dim + offs_e[:, None]) * n_state + offs_n[None, :]) * tl.num_programs(2) + pid_c
    if STAGE == 3:
        h = tl.load(states_ptr + state_offs, mask=mask_en, other=0.0)
    else:
        h = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
    step_sum = tl.zeros((BLOCK_E,), dtype=tl.float32)
    last = (offs_t == BLOCK_T - 1)[None, None, :]
    start = pid_c * chunk_len
    for t0 in range(start, tl.minimum(start + chunk_len, length), BLOCK_T):
        t = t0 + offs_t
        mask_t = t < length
        mask_et = mask_e[:, None] & mask_t[None, :]
        mask_nt = mask_n[:, None] & mask_t[None, :]
        dt = tl.load(delta_ptr + pid_b * sd_b + offs_e[:, None] * sd_e + t[None, :] * sd_l,
                     mask=mask_et, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:  # softplus(x) = log1p(exp(x)), log1p accurate via log(v) w / (v - 1)
            w = tl.exp(tl.minimum(dt, 20.0))
            v = 1.0 + w
            log1p = tl.where(v == 1.0, w, tl.log(v) * (w / (v - 1.0)))
            dt = tl.where(dt > 20.0, dt, log1p)
        dt = tl.where(mask_et, dt, 0.0)  # zero steps past the end carry the state through
        uu = tl.load(u_ptr + pid_b * su_b + offs_e[:, None] * su_e + t[None, :] * su_l,
                     mask=mask_et, other=0.0).to(tl.float32)
        bb = tl.load(b_ptr + pid_b * sb_b + offs_n[:, None] * sb_n + t[None, :] * sb_l,
                     mask=mask_nt, other=0.0).to(tl.float32)
        decay = tl.exp2(dt[:, None, :] * a2[:, :, None])  # (E, N, T)
        inp = (dt * uu)[:, None, :] * bb[None, :, :]
        acc_decay, acc_inp = tl.associative_scan((decay, inp), 2, _combine_jit)
        hs = acc_decay * h[:, :, None] + acc_inp
        h = tl.sum(tl.where(last, hs, 0.0), axis=2)
        if STAGE == 1:
            step_sum += tl.sum(dt, axis=1)
        else:
            cc = tl.load(c_ptr + pid_b * sc_b + offs_n[:, None] * sc_n + t[None, :] * sc_l,
                         mask=mask_nt, other=0.0).to(tl.float32)
            y = tl.sum(hs * cc[None, :, :], axis=1)  # (E, T)
            if HAS_D:
                y += d_skip[:, None] * uu
            if HAS_Z:
                zz = tl.load(z_ptr + pid_b * sz_b + offs_e[:, None] * sz_e + t[None, :] * sz_l,
                             mask=mask_et, other=0.0).to(tl.float32)
                y = y * (zz / (1.0 + tl.exp(-zz)))
            tl.store(out_ptr + pid_b * so_b + offs_e[:, None] * so_e + t[None, :] * so_l,
                     y.to(out_ptr.dtype.element_ty), mask=mask_et)
    if STAGE == 1:
        tl.store(states_ptr + state_offs, h, mask=mask_en)
        tl.store(sums_ptr + (pid_b * dim + offs_e) * tl.num_programs(2) + pid_c, step_sum, mask=mask_e)


def _carry_kernel(
    a2_ptr, states_ptr, sums_ptr, dim, n_state, n_chunks,
    BLOCK_E: tl.constexpr, BLOCK_N: tl.constexpr,
) -> None:
    """Replace each chunk's end state (from zero) by its true start state, chunk after chunk."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_e = tl.program_id(1)
    offs_e = pid_e * BLOCK_E + tl.arange(0, BLOCK_E)
    offs_n = tl.arange(0, BLOCK_N)
    mask_e = offs_e < dim
    mask_en = mask_e[:, None] & (offs_n < n_state)[None, :]
    a2 = tl.load(a2_ptr + offs_e[:, None] * n_state + offs_n[None, :], mask=mask_en, other=0.0)
    state_offs = ((pid_b * dim + offs_e[:, None]) * n_state + offs_n[None, :]) * n_chunks
    sum_offs = (pid_b * dim + offs_e) * n_chunks
    h = tl.zeros((BLOCK_E, BLOCK_N), dtype=tl.float32)
    for c in range(0, n_chunks):
        end = tl.load(states_ptr + state_offs + c, mask=mask_en, other=0.0)
        steps = tl.load(sums_ptr + sum_offs + c, mask=mask_e, other=0.0)
        tl.store(states_ptr + state_offs + c, h, mask=mask_en)
        h = tl.exp2(steps[:, None] * a2) * h + end


_combine_jit: Any = None  # `_combine` jitted: the name the kernels use


@functools.cache
def _kernels(interpret: bool) -> tuple[Any, Any]:
    """Import triton and decorate the kernels, compiled or (TRITON_INTERPRET=1) interpreted.

    The interpreter only works when TRITON_INTERPRET was set before triton was first
    imported (triton.language's own helpers are decorated at import): RuntimeError if not.
    """
    global triton, tl, _combine_jit
    import triton as triton_module
    import triton.language as tl_module

    triton, tl = triton_module, tl_module
    if interpret and not isinstance(tl.zeros, triton.runtime.interpreter.InterpretedFunction):
        raise RuntimeError("TRITON_INTERPRET=1 must be set before triton is first imported")
    _combine_jit = triton.jit(_combine)
    return triton.jit(_chunk_kernel), triton.jit(_carry_kernel)
