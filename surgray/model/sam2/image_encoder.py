"""SAM2 image encoder: the Hiera trunk followed by a feature-pyramid (FPN) neck.

The neck projects each trunk stage to `d_model` channels with a lateral convolution and, on the
levels listed in `fpn_top_down_levels`, adds the upsampled coarser level (top-down fusion). Each
level gets a fixed sine position encoding. The encoder drops the `scalp` coarsest levels and
returns a `BackboneOutput`.

Parameter names follow the official checkpoints (`image_encoder.trunk.*`, `image_encoder.neck.*`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from surgray.model.sam2.config import ImageEncoderConfig, NeckConfig
from surgray.model.sam2.hiera import Hiera
from surgray.model.sam2.position_encoding import PositionEmbeddingSine
from surgray.model.sam2.types import BackboneOutput


class FpnNeck(nn.Module):
    """Trunk maps (highest resolution first) -> (features, positions), highest resolution first.

    `convs[j]` belongs to `backbone_channel_list[j]`, i.e. the list runs from the coarsest
    level to the finest, as in the checkpoints.
    """

    def __init__(self, cfg: NeckConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.position_encoding = PositionEmbeddingSine(cfg.position_encoding)
        self.convs = nn.ModuleList()
        for channels in cfg.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module(
                "conv",
                nn.Conv2d(
                    channels,
                    cfg.d_model,
                    kernel_size=cfg.kernel_size,
                    stride=cfg.stride,
                    padding=cfg.padding,
                ),
            )
            self.convs.append(lateral)
        self.top_down_levels = frozenset(cfg.fpn_top_down_levels)
        self.interp_mode = cfg.fpn_interp_model
        self.average = cfg.fuse_type == "avg"

    def _upsample(self, coarse: torch.Tensor, size: torch.Size) -> torch.Tensor:
        # Interpolate in fp32 (bicubic/bilinear in bf16 lose precision), as the reference does.
        align = None if self.interp_mode == "nearest" else False
        return F.interpolate(
            coarse.float(), size=size, mode=self.interp_mode, align_corners=align, antialias=False
        )

    def forward(
        self, trunk_maps: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        levels = len(self.convs)
        if len(trunk_maps) != levels:
            raise ValueError(f"the neck expects {levels} trunk maps, got {len(trunk_maps)}")
        features: list[torch.Tensor] = [None] * levels  # type: ignore[list-item]
        positions: list[torch.Tensor] = [None] * levels  # type: ignore[list-item]
        coarser = None
        # Top-down: from the coarsest level (last in `trunk_maps`, first in `convs`) upwards.
        for level in reversed(range(levels)):
            lateral = self.convs[levels - 1 - level](trunk_maps[level])
            if level in self.top_down_levels and coarser is not None:
                fused = lateral + self._upsample(coarser, lateral.shape[-2:])
                if self.average:
                    fused = fused / 2
                # Keep every level in the convolution's dtype under autocast.
                current = fused.to(lateral.dtype)
            else:
                current = lateral
            features[level] = current
            positions[level] = self.position_encoding(current)
            coarser = current
        return features, positions


class ImageEncoder(nn.Module):
    """Images [B, 3, H, W] (normalised) -> `BackboneOutput` with the finest levels kept."""

    def __init__(self, cfg: ImageEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.trunk = Hiera(cfg.trunk)
        self.neck = FpnNeck(cfg.neck)
        trunk_channels = tuple(self.trunk.channel_list)
        if trunk_channels != tuple(cfg.neck.backbone_channel_list):
            raise ValueError(
                f"neck.backbone_channel_list {tuple(cfg.neck.backbone_channel_list)} does not "
                f"match the trunk's stage widths {trunk_channels} (coarsest first)"
            )
        if not 0 <= cfg.scalp < len(trunk_channels):
            raise ValueError(f"scalp must be in [0, {len(trunk_channels) - 1}], got {cfg.scalp}")
        self.scalp = cfg.scalp

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        features, positions = self.neck(self.trunk(images))
        kept = len(features) - self.scalp
        features, positions = features[:kept], positions[:kept]
        return BackboneOutput(
            vision_features=features[-1], vision_pos_enc=positions, backbone_fpn=features
        )
