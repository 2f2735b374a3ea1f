"""The CPU default backend: a chunked selective scan.

Two implementations behind one entry point, chosen automatically:

* the numba kernels when the tensors are on the CPU, the compute dtype is float32 and numba
  imports: `cpu_kernel.scan_forward` (one fused pass) when no gradient is needed, else
  `cpu_kernel.scan_with_grad` (the same forward saving chunk-start states, and a fused
  reverse-time backward kernel);
* otherwise a differentiable torch path (any device, float32 or float64, autograd).

The torch path splits the sequence into chunks of `chunk_size` positions and walks it in
segments of `segment_chunks` chunks (bounding memory when no graph is kept). Per segment:
local scans inside all chunks at once (a loop over the chunk length, zero initial state),
then the true chunk-start states carried chunk to chunk with the chunk decay
exp(A * sum of delta over the chunk), then h_t = local h_t + exp(A * cumsum delta) * start.
Every exponent is A times a sum of non-negative steps: nothing like 1/prod or exp(-cumsum),
which overflow in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from segmamba.scan import cpu_kernel
from segmamba.scan._common import check_inputs, compute_dtype, discretize_delta, epilogue

CHUNK_SIZE = 16
SEGMENT_CHUNKS = 32


def chunked_scan(
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
    use_kernel: bool | None = None,
    chunk_size: int = CHUNK_SIZE,
    segment_chunks: int = SEGMENT_CHUNKS,
) -> Tensor:
    """Selective scan with Mamba-1 semantics; see `segmamba.scan.selective_scan`.

    use_kernel: None picks the numba kernels whenever they apply (see module docstring);
    False forces the torch path; True requires the kernels (RuntimeError if they cannot run).
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype = compute_dtype(u)
    d = discretize_delta(delta, delta_bias, delta_softplus, dtype)
    kernel_ok = cpu_kernel.kernel_available() and u.device.type == "cpu" and dtype == torch.float32
    if use_kernel and not kernel_ok:
        raise RuntimeError("the numba kernels need numba and CPU float32 (or half) tensors")
    if kernel_ok and use_kernel is not False:
        tensors = (u, delta, A, B, C, D, z, delta_bias)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            f32 = [None if t is None else t.to(dtype) for t in (u, A, B, C, D, z)]
            return cpu_kernel.scan_with_grad(f32[0], d, *f32[1:]).to(u.dtype)
        return cpu_kernel.scan_forward(u, d, A, B, C, D, z).to(u.dtype)
    uc = u.to(dtype)
    y = _torch_scan(uc, d, A.to(dtype), B.to(dtype), C.to(dtype), chunk_size, segment_chunks)
    return epilogue(y, uc, D, z, u.dtype)


def _torch_scan(u: Tensor, d: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int, seg_chunks: int) -> Tensor:
    """y_t = <h_t, C_t> for the whole sequence, segment by segment (differentiable)."""
    length = u.shape[-1]
    if length == 0:
        return u.new_zeros(u.shape)
    chunk = min(chunk, length)
    pad = -length % chunk
    if pad:  # zero steps past the end: decay exp(0) = 1 and no input, so states pass through
        d, u, B, C = (F.pad(t, (0, pad)) for t in (d, u, B, C))
    du = d * u
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    step = chunk * seg_chunks
    ys = []
    for s in range(0, length + pad, step):
        part = slice(s, s + step)
        y, h = _segment(d[..., part], du[..., part], A, B[..., part], C[..., part], h, chunk)
        ys.append(y)
    return torch.cat(ys, dim=-1)[..., :length]


def _decay(x: Tensor) -> Tensor:
    """exp(x) with the kernel's floor: decays under e^-60 are far below float32 resolution."""
    return torch.exp(x.clamp(min=cpu_kernel.EXP_FLOOR))


def _segment(d: Tensor, du: Tensor, A: Tensor, B: Tensor, C: Tensor, h0: Tensor,
             chunk: int) -> tuple[Tensor, Tensor]:
    """One segment of whole chunks: returns y (batch, E, S) and the final state (batch, E, N)."""
    batch, dim, seg_len = d.shape
    n_chunks = seg_len // chunk

    def time_major(t: Tensor) -> Tensor:  # (batch, X, S) -> (chunk, batch, X, n_chunks)
        return t.reshape(batch, t.shape[1], n_chunks, chunk).permute(3, 0, 1, 2)

    a = A[:, :, None]  # (E, N, 1)
    d_t = time_major(d).unsqueeze(3)  # (T, batch, E, 1, n_chunks)
    d_a = _decay(d_t * a)  # (T, batch, E, N, n_chunks)
    d_bu = time_major(du).unsqueeze(3) * time_major(B).unsqueeze(2)  # (T, batch, E, N, n_chunks)

    local = [d_bu[0]]  # chunk-local states from a zero start, all chunks at once
    for t in range(1, chunk):
        local.append(d_a[t] * local[-1] + d_bu[t])

    from_start = _decay(d_t.cumsum(0) * a)  # decay from each chunk's start to position t
    chunk_decay = from_start[-1]  # (batch, E, N, n_chunks)
    starts = []
    state = h0
    for c in range(n_chunks):
        starts.append(state)
        state = chunk_decay[..., c] * state + local[-1][..., c]
    h = torch.stack(local) + from_start * torch.stack(starts, dim=-1)
    y = (h * time_major(C).unsqueeze(2)).sum(3)  # (T, batch, E, n_chunks)
    return y.permute(1, 2, 3, 0).reshape(batch, dim, seg_len), state
