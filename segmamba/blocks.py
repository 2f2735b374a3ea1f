"""Encoder building blocks of SegMamba, wired as the reference code wires them."""

from __future__ import annotations

import torch
from torch import nn

from segmamba.tom import TriOrientedMamba


def _conv_in_relu(channels: int, kernel_size: int) -> tuple[nn.Conv3d, nn.InstanceNorm3d, nn.ReLU]:
    return (
        nn.Conv3d(channels, channels, kernel_size, 1, kernel_size // 2),
        nn.InstanceNorm3d(channels),
        nn.ReLU(),
    )


class GSC(nn.Module):
    """Gated spatial convolution, as coded in the reference (not as the paper draws it).

    ``out = CIR1(CIR3(CIR3(x)) + CIR1(x)) + x`` where CIRk is conv k^3 -> InstanceNorm -> ReLU.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj, self.norm, self.nonliner = _conv_in_relu(channels, 3)
        self.proj2, self.norm2, self.nonliner2 = _conv_in_relu(channels, 3)
        self.proj3, self.norm3, self.nonliner3 = _conv_in_relu(channels, 1)
        self.proj4, self.norm4, self.nonliner4 = _conv_in_relu(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.nonliner(self.norm(self.proj(x)))
        x1 = self.nonliner2(self.norm2(self.proj2(x1)))
        x2 = self.nonliner3(self.norm3(self.proj3(x)))
        out = self.nonliner4(self.norm4(self.proj4(x1 + x2)))
        return out + x


class MlpChannel(nn.Module):
    """Point-wise (1^3 convolution) MLP over channels with GELU."""

    def __init__(self, hidden_size: int, mlp_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(hidden_size, mlp_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv3d(mlp_dim, hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MambaLayer(nn.Module):
    """LayerNorm -> ToM over the flattened voxels -> residual, on a (B, C, D, H, W) tensor.

    Runs in float32 even under autocast, as the reference does.
    """

    def __init__(
        self, dim: int, d_state: int = 16, d_conv: int = 4, expand: int = 2, num_slices: int = 64,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mamba = TriOrientedMamba(
            dim, d_state=d_state, d_conv=d_conv, expand=expand, nslices=num_slices, scan_backend=scan_backend
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            batch, channels = x.shape[:2]
            tokens = x.reshape(batch, channels, -1).transpose(1, 2)
            mixed = self.mamba(self.norm(tokens))
            return mixed.transpose(1, 2).reshape(x.shape) + x
