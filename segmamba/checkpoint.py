"""Loading SegMamba checkpoints, including those saved by the reference training code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

CONTAINER_KEYS = ("state_dict", "model")
DDP_PREFIX = "module."


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the offending keys."""


@dataclass(frozen=True)
class CheckpointLayout:
    """What was found in a checkpoint file, so callers can log it."""

    container_key: str | None
    stripped_prefix: str | None

    def describe(self) -> str:
        where = f"under key {self.container_key!r}" if self.container_key else "as a bare state_dict"
        prefix = f", prefix {self.stripped_prefix!r} removed" if self.stripped_prefix else ""
        return f"weights stored {where}{prefix}"


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def unwrap_state_dict(obj: object) -> tuple[dict[str, torch.Tensor], CheckpointLayout]:
    """Find the state_dict in a loaded checkpoint: bare, ``{"state_dict": ...}`` or ``{"model": ...}``.

    A ``module.`` prefix (DistributedDataParallel) is removed when every key carries it.
    Anything else is refused with a message saying what was found.
    """
    container = None
    if _is_state_dict(obj):
        state = dict(obj)  # type: ignore[arg-type]
    elif isinstance(obj, Mapping):
        found = [k for k in CONTAINER_KEYS if _is_state_dict(obj.get(k))]
        if len(found) != 1:
            raise CheckpointError(
                "cannot find the weights in this checkpoint: expected a state_dict, or exactly one of "
                f"{list(CONTAINER_KEYS)} holding one; top-level keys are {sorted(map(str, obj))[:10]}"
            )
        container = found[0]
        state = dict(obj[container])
    else:
        raise CheckpointError(f"a checkpoint must be a dict of tensors, got {type(obj).__name__}")

    prefixed = [k.startswith(DDP_PREFIX) for k in state]
    prefix = None
    if all(prefixed):
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
        prefix = DDP_PREFIX
    elif any(prefixed):
        raise CheckpointError(f"some but not all keys start with {DDP_PREFIX!r}: the checkpoint is inconsistent")
    return state, CheckpointLayout(container, prefix)


def check_compatible(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise CheckpointError naming missing, unexpected and wrongly shaped keys."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if keys:
            shown = "; ".join(keys[:5]) + (f"; ... ({len(keys)} in all)" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model - " + " | ".join(problems))


def load_checkpoint(model: nn.Module, source: str | Path | Mapping) -> CheckpointLayout:
    """Load weights strictly into ``model`` from a file or an already loaded object."""
    obj = torch.load(source, map_location="cpu", weights_only=True) if isinstance(source, (str, Path)) else source
    state, layout = unwrap_state_dict(obj)
    check_compatible(model, state)
    model.load_state_dict(state, strict=True)
    return layout
