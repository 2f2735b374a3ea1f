"""Tri-orientated Mamba (ToM) token mixer, state_dict-compatible with the reference SegMamba.

The reference (github ge-xing/SegMamba, ``mamba_simple.Mamba`` with ``bimamba_type="v3"``)
projects tokens once (``in_proj``) into ``x`` and the gate ``z``, then runs three selective
scans over three orderings of the same sequence, each with its own causal depthwise
convolution, ``x_proj``, ``dt_proj``, ``A_log`` and ``D``:

- forward: the tokens in raster order;
- reversed: the tokens flipped, the result flipped back;
- inter-slice: the sequence split into ``nslices`` contiguous chunks and interleaved, so that
  position ``p`` of chunk ``c`` moves to index ``p * nslices + c``; restored afterwards.

The three gated outputs are summed before ``out_proj``. Parameter names follow the reference
(unsuffixed forward, ``_b`` reversed, ``_s`` inter-slice) so reference checkpoints load as-is.

``nslices`` is a fixed constant per encoder stage in the reference ([64, 32, 16, 8]), chosen so
that for a 128^3 window each chunk is one slice of the stage's token grid. For other window
sizes the sequence is still split into ``nslices`` chunks (which then are not slices); the
sequence length must be divisible by ``nslices``, as the reference requires, else ValueError.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segmamba.causal_conv import causal_conv1d
from segmamba.scan import selective_scan, token_major

DIRECTION_SUFFIXES = ("", "_b", "_s")
DIRECTIONS = dict(zip(DIRECTION_SUFFIXES, ("forward", "reversed", "inter_slice"), strict=True))


def _s4d_real_log(d_inner: int, d_state: int) -> torch.Tensor:
    """log(1..N) for every channel: Mamba's S4D-real initialisation of A = -exp(A_log)."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)


class TriOrientedMamba(nn.Module):
    """The ToM layer: shared input projection, three directional selective scans, summed."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        nslices: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.nslices = nslices
        self.scan_backend = scan_backend
        # CPU inference on token-major tensors (segmamba.scan.token_major) where it applies; False
        # keeps the channel-major path of the reference (the oracle the fused path is tested against).
        self.fused_cpu_inference = True

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        for suffix in DIRECTION_SUFFIXES:
            a_name = "A_log" if suffix == "" else f"A{suffix}_log"
            a_log = nn.Parameter(_s4d_real_log(self.d_inner, d_state))
            a_log._no_weight_decay = True  # type: ignore[attr-defined]
            self.register_parameter(a_name, a_log)
            d_skip = nn.Parameter(torch.ones(self.d_inner))
            d_skip._no_weight_decay = True  # type: ignore[attr-defined]
            self.register_parameter(f"D{suffix}", d_skip)
            conv = nn.Conv1d(
                self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1, bias=True
            )
            self.add_module(f"conv1d{suffix}", conv)
            self.add_module(f"x_proj{suffix}", nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False))
            self.add_module(f"dt_proj{suffix}", nn.Linear(self.dt_rank, self.d_inner, bias=True))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self._init_forward_dt_proj(dt_min, dt_max, dt_init_floor)

    def _init_forward_dt_proj(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """Mamba's step-size initialisation; like the reference, only the forward direction gets it."""
        dt_proj = self.dt_proj
        bound = self.dt_rank**-0.5
        nn.init.uniform_(dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def _direction(self, xz: torch.Tensor, suffix: str) -> torch.Tensor:
        """One directional branch on an already re-ordered (batch, 2*d_inner, L) tensor."""
        x, z = xz.chunk(2, dim=1)
        conv: nn.Conv1d = getattr(self, f"conv1d{suffix}")
        x = causal_conv1d(x, conv.weight, conv.bias, activation="silu")
        x_dbl = F.linear(x.transpose(1, 2), getattr(self, f"x_proj{suffix}").weight)  # (b, L, r+2N)
        dt_low, b_mat, c_mat = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt_proj: nn.Linear = getattr(self, f"dt_proj{suffix}")
        delta = F.linear(dt_low, dt_proj.weight).transpose(1, 2)  # bias enters as delta_bias
        a_log = self.A_log if suffix == "" else getattr(self, f"A{suffix}_log")
        return selective_scan(
            x,
            delta,
            -torch.exp(a_log.float()),
            b_mat.transpose(1, 2),
            c_mat.transpose(1, 2),
            D=getattr(self, f"D{suffix}").float(),
            z=z,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Mix tokens: (batch, L, d_model) -> (batch, L, d_model)."""
        batch, seqlen, _ = hidden_states.shape
        if seqlen % self.nslices:
            raise ValueError(
                f"sequence length {seqlen} is not divisible by nslices={self.nslices}; "
                "the inter-slice scan needs equal chunks (use a window whose token count allows it)"
            )
        if self._fused_cpu_applies(hidden_states):
            return self._forward_token_major(hidden_states)
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2*d_inner, L)
        chunk_len = seqlen // self.nslices

        out = self._direction(xz, "")
        out = out + self._direction(xz.flip(-1), "_b").flip(-1)
        interleaved = xz.reshape(batch, -1, self.nslices, chunk_len).transpose(2, 3).reshape(batch, -1, seqlen)
        out_s = self._direction(interleaved, "_s")
        out = out + out_s.reshape(batch, self.d_inner, chunk_len, self.nslices).transpose(2, 3).reshape(
            batch, self.d_inner, seqlen
        )
        return self.out_proj(out.transpose(1, 2))

    def _fused_cpu_applies(self, hidden_states: torch.Tensor) -> bool:
        """CPU float32 inference with the default scan (no gradient wanted), at least one channel block
        (CHANNEL_BLOCK inner channels), and numba present."""
        wants_grad = torch.is_grad_enabled() and (
            hidden_states.requires_grad or any(p.requires_grad for p in self.parameters()))
        return (self.fused_cpu_inference and not wants_grad and hidden_states.device.type == "cpu"
                and hidden_states.dtype == torch.float32 and self.scan_backend in ("auto", "chunked")
                and self.d_inner >= token_major.CHANNEL_BLOCK and token_major.available())

    def _forward_token_major(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The same mixing as `forward`, with the three directions read from the token-major
        projection in their own orders and summed in one buffer (no flips, interleaves, transposes)."""
        batch, seqlen, _ = hidden_states.shape
        xz = self.in_proj(hidden_states)  # (b, L, 2*d_inner)
        out = xz.new_zeros(batch, seqlen, self.d_inner)
        for suffix, direction in DIRECTIONS.items():
            order = token_major.direction_order(seqlen, direction, self.nslices)
            conv: nn.Conv1d = getattr(self, f"conv1d{suffix}")
            u = token_major.causal_conv_silu(xz, order, conv.weight, conv.bias)
            x_dbl = F.linear(u, getattr(self, f"x_proj{suffix}").weight)  # (b, L, r+2N), scan order
            dt_proj: nn.Linear = getattr(self, f"dt_proj{suffix}")
            delta = F.softplus(F.linear(x_dbl[..., : self.dt_rank], dt_proj.weight, dt_proj.bias))
            a_log = self.A_log if suffix == "" else getattr(self, f"A{suffix}_log")
            token_major.scan_accumulate(u, delta.contiguous(), x_dbl, self.dt_rank, -torch.exp(a_log.float()),
                                        getattr(self, f"D{suffix}"), xz, order, out)
        return self.out_proj(out)
