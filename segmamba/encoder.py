"""The SegMamba encoder: stem, then per stage downsampling, GSC, ToM layers and an output head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segmamba.blocks import GSC, MambaLayer, MlpChannel

# Chunks of the inter-slice scan per stage, as in the reference (one per slice for 128^3 windows).
REFERENCE_NSLICES = (64, 32, 16, 8)


class MambaEncoder(nn.Module):
    """Four stages at strides 2, 4, 8, 16; returns each stage's InstanceNorm + MLP output."""

    def __init__(
        self,
        in_chans: int = 1,
        depths: Sequence[int] = (2, 2, 2, 2),
        dims: Sequence[int] = (48, 96, 192, 384),
        nslices: Sequence[int] = REFERENCE_NSLICES,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if not len(depths) == len(dims) == len(nslices) == 4:
            raise ValueError("SegMamba has four encoder stages: depths, dims and nslices need 4 entries")
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv3d(in_chans, dims[0], kernel_size=7, stride=2, padding=3))]
        )
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(nn.InstanceNorm3d(dims[i]), nn.Conv3d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(
                *[MambaLayer(dims[i], num_slices=nslices[i], scan_backend=scan_backend) for _ in range(depths[i])]
            )
            for i in range(4)
        )
        self.gscs = nn.ModuleList(GSC(dims[i]) for i in range(4))
        for i in range(4):
            self.add_module(f"norm{i}", nn.InstanceNorm3d(dims[i]))
        self.mlps = nn.ModuleList(MlpChannel(dims[i], 2 * dims[i]) for i in range(4))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i in range(4):
            x = self.stages[i](self.gscs[i](self.downsample_layers[i](x)))
            outs.append(self.mlps[i](getattr(self, f"norm{i}")(x)))
        return tuple(outs)
