"""Which arithmetic the network runs in: float32, or bfloat16 / float16 autocast where the device has it.

``auto`` picks, per device: CUDA -> float16 autocast (the reference recipe); a CPU with native
bfloat16 instructions (AVX512-BF16 or AMX, as oneDNN reports them) -> bfloat16 autocast; any other
CPU -> float32. float32 is always available. The Mamba layers run in float32 whatever is chosen
(segmamba.blocks.MambaLayer).

torch is imported where it is used: the settings import PRECISIONS before a batch run restarts
itself with its memory allocator (app/allocator.py), and that start should not load torch twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from operators.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
AUTOCAST_PRECISIONS = ("bfloat16", "float16")  # the torch dtypes of that name


def cpu_has_bf16() -> bool:
    """True when oneDNN runs bfloat16 natively on this CPU (AVX512-BF16 / AMX), not by emulation."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision to run: ``requested`` (one of PRECISIONS), with ``auto`` resolved for ``device``."""
    if requested not in PRECISIONS:
        raise ConfigurationError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "auto":
        if device.type == "cuda":
            return "float16"
        return "bfloat16" if device.type == "cpu" and cpu_has_bf16() else "float32"
    if requested == "float16" and device.type != "cuda":
        raise ConfigurationError("precision float16 needs a CUDA device; use bfloat16 or float32 on the CPU")
    return requested


def autocast(precision: str, device: torch.device) -> torch.autocast:
    """The autocast context for a resolved precision (disabled for float32)."""
    import torch

    dtype = getattr(torch, precision) if precision in AUTOCAST_PRECISIONS else torch.float32
    return torch.autocast(device.type, dtype=dtype, enabled=precision != "float32")
