"""SegMamba: Mamba encoder + MONAI UNETR-style decoder, checkpoint-compatible with the reference."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock
from torch import nn

from segmamba.encoder import REFERENCE_NSLICES, MambaEncoder


class SegMamba(nn.Module):
    """The SegMamba network (Xing et al. 2024) with the reference constructor and state_dict.

    Arguments and defaults are those of ``model_segmamba/segmamba.py`` in ge-xing/SegMamba;
    ``drop_path_rate``, ``layer_scale_init_value`` and ``conv_block`` are accepted and unused,
    as there. For BraTS: ``SegMamba(in_chans=4, out_chans=4)``. Unlike the reference, the output
    head follows ``feat_size[0]`` instead of a hard-coded 48, so smaller models work.

    Keyword-only extras: ``nslices`` (inter-slice chunks per stage, the reference's values by
    default) and ``scan_backend`` (see ``segmamba.scan``).

    Under bfloat16 autocast (the CPU fast path) the encoder side (Mamba encoder, the skip blocks
    encoder2-5, and encoder1's convolutions of the raw input), the two coarsest decoder blocks
    (decoder5, decoder4: about 3% of the decoder's work) and the output head run in float32, the rest
    of the decoder and encoder1's full-resolution convolution in bfloat16: bfloat16 throughout moved 0.7% of argmax
    labels and ET Dice to 0.975 on the reference weights, beyond the accuracy bound
    (tests/operators/test_precision.py). Those two hold about nine tenths of the convolution work.
    float16 autocast (CUDA, the reference recipe) and float32 are unchanged.
    """

    def __init__(
        self,
        in_chans: int = 1,
        out_chans: int = 13,
        depths: Sequence[int] = (2, 2, 2, 2),
        feat_size: Sequence[int] = (48, 96, 192, 384),
        drop_path_rate: float = 0,
        layer_scale_init_value: float = 1e-6,
        hidden_size: int = 768,
        norm_name: str | tuple = "instance",
        conv_block: bool = True,
        res_block: bool = True,
        spatial_dims: int = 3,
        *,
        nslices: Sequence[int] = REFERENCE_NSLICES,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError("SegMamba is a 3D network: spatial_dims must be 3")
        self.in_chans = in_chans
        self.out_chans = out_chans
        self.depths = list(depths)
        self.feat_size = list(feat_size)
        self.hidden_size = hidden_size
        self.drop_path_rate = drop_path_rate
        self.layer_scale_init_value = layer_scale_init_value
        self.spatial_dims = spatial_dims
        f = self.feat_size
        self.vit = MambaEncoder(in_chans, depths=depths, dims=f, nslices=nslices, scan_backend=scan_backend)

        def basic(c_in: int, c_out: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(
                spatial_dims=spatial_dims, in_channels=c_in, out_channels=c_out, kernel_size=3, stride=1,
                norm_name=norm_name, res_block=res_block,
            )

        def up(c_in: int, c_out: int) -> UnetrUpBlock:
            return UnetrUpBlock(
                spatial_dims=spatial_dims, in_channels=c_in, out_channels=c_out, kernel_size=3,
                upsample_kernel_size=2, norm_name=norm_name, res_block=res_block,
            )

        self.encoder1 = basic(in_chans, f[0])
        self.encoder2 = basic(f[0], f[1])
        self.encoder3 = basic(f[1], f[2])
        self.encoder4 = basic(f[2], f[3])
        self.encoder5 = basic(f[3], hidden_size)
        self.decoder5 = up(hidden_size, f[3])
        self.decoder4 = up(f[3], f[2])
        self.decoder3 = up(f[2], f[1])
        self.decoder2 = up(f[1], f[0])
        self.decoder1 = basic(f[0], f[0])
        self.out = UnetOutBlock(spatial_dims=spatial_dims, in_channels=f[0], out_channels=out_chans)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, D, H, W) with D, H, W multiples of 16 -> logits (B, out_chans, D, H, W)."""
        if x_in.ndim != 5 or any(s % 16 for s in x_in.shape[2:]):
            raise ValueError(f"expected (B, C, D, H, W) with D, H, W multiples of 16, got {tuple(x_in.shape)}")
        device = x_in.device.type
        bfloat16 = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.bfloat16
        # the parts kept in float32 under bfloat16 autocast (see the class docstring)
        float32 = (lambda: torch.autocast(device, enabled=False)) if bfloat16 else contextlib.nullcontext
        with float32():
            x = x_in.float() if bfloat16 else x_in
            stage1, stage2, stage3, stage4 = self.vit(x)
        enc1 = self._first_skip_bfloat16(x) if bfloat16 else self.encoder1(x)
        with float32():
            enc2 = self.encoder2(stage1)
            enc3 = self.encoder3(stage2)
            enc4 = self.encoder4(stage3)
            hidden = self.encoder5(stage4)
            dec = self.decoder5(hidden, enc4)
            dec = self.decoder4(dec, enc3)
        dec = self.decoder3(dec, enc2)
        dec = self.decoder2(dec, enc1)
        dec = self.decoder1(dec)
        with float32():
            return self.out(dec.float() if bfloat16 else dec)

    def _first_skip_bfloat16(self, x: torch.Tensor) -> torch.Tensor:
        """encoder1 under bfloat16 autocast: the convolutions of the raw input (conv1, and conv3 on the
        residual path) in float32, the rest (its full-resolution feat_size[0]^2 convolution, conv2, the
        largest of the encoder side) in bfloat16. The same operations as monai's UnetResBlock /
        UnetBasicBlock forward, so the weights and the float32 result are unchanged."""
        block = self.encoder1.layer
        device = x.device.type
        with torch.autocast(device, enabled=False):
            out = block.conv1(x)
        out = block.conv2(block.lrelu(block.norm1(out)))
        out = block.norm2(out)
        if isinstance(block, UnetBasicBlock):  # res_block=False
            return block.lrelu(out)
        residual = x
        if hasattr(block, "conv3"):
            with torch.autocast(device, enabled=False):
                residual = block.conv3(residual)
        if hasattr(block, "norm3"):
            residual = block.norm3(residual)
        out += residual
        return block.lrelu(out)
