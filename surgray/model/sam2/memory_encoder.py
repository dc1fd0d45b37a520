"""Memory encoder: turns a frame's features and its predicted mask into a memory.

The mask (at image resolution) is downsampled to the feature grid by strided convolutions,
added to a projection of the frame's features, mixed by a few ConvNeXt blocks and projected
to the (narrower) memory width. Parameter names match
`sam2.modeling.memory_encoder.MemoryEncoder`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from surgray.model.sam2.config import (
    CXBlockConfig,
    FuserConfig,
    MaskDownSamplerConfig,
    MemoryEncoderConfig,
)
from surgray.model.sam2.layers import DropPath, LayerNorm2d
from surgray.model.sam2.position_encoding import PositionEmbeddingSine
from surgray.model.sam2.types import MemoryEncoderOutput


class MaskDownSampler(nn.Module):
    """Downsamples a 1-channel mask by `total_stride` in steps of `stride`.

    Each step multiplies the channels by `stride ** 2` (the pixels it folds away), then a 1x1
    convolution maps to `embed_dim`. Modules sit in one `encoder` Sequential
    (conv, norm, GELU per step, then the projection), as the checkpoint keys expect.
    """

    def __init__(self, cfg: MaskDownSamplerConfig) -> None:
        super().__init__()
        if cfg.stride < 2 or cfg.total_stride < cfg.stride:
            raise ValueError(
                f"need 2 <= stride <= total_stride, got {cfg.stride}, {cfg.total_stride}"
            )
        num_steps = round(math.log(cfg.total_stride) / math.log(cfg.stride))
        if cfg.stride**num_steps != cfg.total_stride:
            raise ValueError(
                f"total_stride {cfg.total_stride} is not a power of stride {cfg.stride}"
            )
        self.encoder = nn.Sequential()
        channels = 1
        for _ in range(num_steps):
            out = channels * cfg.stride**2
            self.encoder.append(
                nn.Conv2d(
                    channels,
                    out,
                    kernel_size=cfg.kernel_size,
                    stride=cfg.stride,
                    padding=cfg.padding,
                )
            )
            self.encoder.append(LayerNorm2d(out))
            self.encoder.append(nn.GELU())
            channels = out
        self.encoder.append(nn.Conv2d(channels, cfg.embed_dim, kernel_size=1))

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(mask)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise conv, channel LayerNorm, pointwise MLP, layer scale, residual.

    The pointwise convolutions are `nn.Linear` on channels-last tensors (`pwconv1/2` in the
    checkpoints).
    """

    def __init__(self, cfg: CXBlockConfig) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            cfg.dim,
            cfg.dim,
            kernel_size=cfg.kernel_size,
            padding=cfg.padding,
            groups=cfg.dim if cfg.use_dwconv else 1,
        )
        self.norm = LayerNorm2d(cfg.dim, eps=1e-6)
        self.pwconv1 = nn.Linear(cfg.dim, 4 * cfg.dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * cfg.dim, cfg.dim)
        self.gamma = (
            nn.Parameter(torch.full((cfg.dim,), cfg.layer_scale_init_value))
            if cfg.layer_scale_init_value > 0
            else None
        )
        self.drop_path = DropPath(cfg.drop_path) if cfg.drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class Fuser(nn.Module):
    """Optional 1x1 input projection, then `num_layers` ConvNeXt blocks."""

    def __init__(self, cfg: FuserConfig) -> None:
        super().__init__()
        dim = cfg.layer.dim
        self.proj = nn.Conv2d(dim, dim, kernel_size=1) if cfg.input_projection else nn.Identity()
        self.layers = nn.ModuleList(CXBlock(cfg.layer) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Frame features [B, C, h, w] + mask [B, 1, H, W] (H = h * total_stride) -> memory."""

    def __init__(self, cfg: MemoryEncoderConfig) -> None:
        super().__init__()
        if cfg.mask_downsampler.embed_dim != cfg.in_dim:
            raise ValueError(
                f"mask_downsampler.embed_dim {cfg.mask_downsampler.embed_dim} != in_dim {cfg.in_dim}"
            )
        if cfg.fuser.layer.dim != cfg.in_dim:
            raise ValueError(f"fuser.layer.dim {cfg.fuser.layer.dim} != in_dim {cfg.in_dim}")
        if cfg.position_encoding.num_pos_feats != cfg.out_dim:
            raise ValueError(
                f"position_encoding.num_pos_feats {cfg.position_encoding.num_pos_feats} "
                f"!= out_dim {cfg.out_dim}"
            )
        self.in_dim = cfg.in_dim
        self.total_stride = cfg.mask_downsampler.total_stride
        self.mask_downsampler = MaskDownSampler(cfg.mask_downsampler)
        self.pix_feat_proj = nn.Conv2d(cfg.in_dim, cfg.in_dim, kernel_size=1)
        self.fuser = Fuser(cfg.fuser)
        self.position_encoding = PositionEmbeddingSine(cfg.position_encoding)
        self.out_proj = (
            nn.Conv2d(cfg.in_dim, cfg.out_dim, kernel_size=1)
            if cfg.out_dim != cfg.in_dim
            else nn.Identity()
        )

    def forward(
        self,
        pix_feat: torch.Tensor,
        masks: torch.Tensor,
        skip_mask_sigmoid: bool = False,
    ) -> MemoryEncoderOutput:
        """`masks` are logits unless `skip_mask_sigmoid` (the model passes already-scaled
        probabilities and skips it)."""
        self._check_inputs(pix_feat, masks)
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        mask_feat = self.mask_downsampler(masks)
        # Frame features may have been offloaded to another device than the masks.
        x = self.pix_feat_proj(pix_feat.to(mask_feat.device)) + mask_feat
        x = self.out_proj(self.fuser(x))
        return MemoryEncoderOutput(features=x, pos_enc=self.position_encoding(x).to(x.dtype))

    def _check_inputs(self, pix_feat: torch.Tensor, masks: torch.Tensor) -> None:
        if pix_feat.ndim != 4 or pix_feat.shape[1] != self.in_dim:
            raise ValueError(
                f"pix_feat must be [B, {self.in_dim}, h, w], got {tuple(pix_feat.shape)}"
            )
        b, _, h, w = pix_feat.shape
        expected = (b, 1, h * self.total_stride, w * self.total_stride)
        if tuple(masks.shape) != expected:
            raise ValueError(
                f"masks must be {list(expected)} for pix_feat {list(pix_feat.shape)}, got {list(masks.shape)}"
            )
