"""Typed outputs of the network's parts."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BackboneOutput:
    """Image-encoder output for a batch of K images.

    `backbone_fpn` and `vision_pos_enc` run from the highest resolution (stride 4) to the
    lowest kept level (stride 16 with scalp=1); `vision_features` is the last level.
    """

    vision_features: torch.Tensor  # [K, C, S/16, S/16]
    vision_pos_enc: list[torch.Tensor]
    backbone_fpn: list[torch.Tensor]


@dataclass
class MaskDecoderOutput:
    masks: (
        torch.Tensor
    )  # [B, M, 4h, 4w] low-resolution mask logits (M = 1 or num_multimask_outputs)
    iou_pred: torch.Tensor  # [B, M]
    sam_tokens: torch.Tensor  # [B, M, C] output tokens behind the returned masks
    object_score_logits: torch.Tensor  # [B, 1]


@dataclass
class MemoryEncoderOutput:
    """A frame's memory: its features fused with the predicted mask, and their position encoding."""

    features: torch.Tensor  # [B, C_mem, h, w]
    pos_enc: torch.Tensor  # [B, C_mem, h, w] sine encoding of the grid (same for every frame)
