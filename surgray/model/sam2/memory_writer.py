"""Memory writer: a frame's features and predicted mask -> the memory it leaves behind.

The mask logits are squashed before the memory encoder sees them: a sigmoid (or, at
inference on frames the user clicked, a hard threshold, so the memory holds exactly the mask
the user saw), then an affine scale/bias from the config (20 and -10 in every official
model, which maps {0, 1} back to +-10 logits). Frames where the object is judged absent get
the learned `no_obj_embed_spatial` added to every memory pixel (SAM2.1). The result is stored
in `cfg.memory.storage_dtype` (bf16 halves the size of a long memory bank, as the reference
video predictor does; fp32 keeps full precision).

`MemoryWriter` is this part of the network: the memory encoder and `no_obj_embed_spatial`,
and nothing else of the model (`SAM2Model.memory_writer` hands one out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from surgray.model.sam2.config import MemoryConfig
from surgray.model.sam2.memory_encoder import MemoryEncoder

_STORAGE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def storage_dtype(cfg: MemoryConfig) -> torch.dtype:
    return _STORAGE_DTYPES[cfg.storage_dtype]


def mask_for_memory(
    mask_logits: torch.Tensor, binarize: torch.Tensor, cfg: MemoryConfig, training: bool
) -> torch.Tensor:
    """[B, 1, S, S] logits -> the memory encoder's mask input.

    binarize: [B] bool, True for objects whose mask came from the user's prompts; honoured
    only at inference and when `binarize_mask_from_pts_for_mem_enc` is set.
    """
    soft = torch.sigmoid(mask_logits)
    if cfg.binarize_mask_from_pts_for_mem_enc and not training and bool(binarize.any()):
        hard = (mask_logits > 0).to(soft.dtype)
        soft = torch.where(binarize.to(mask_logits.device)[:, None, None, None], hard, soft)
    if cfg.sigmoid_scale_for_mem_enc != 1.0:
        soft = soft * cfg.sigmoid_scale_for_mem_enc
    if cfg.sigmoid_bias_for_mem_enc != 0.0:
        soft = soft + cfg.sigmoid_bias_for_mem_enc
    return soft


def suppress_overlaps(mask_logits: torch.Tensor) -> torch.Tensor:
    """Keep each pixel only for the highest-scoring object; others drop to at most -10.

    [B, 1, H, W] logits of B objects of the same frame.
    """
    if mask_logits.shape[0] <= 1:
        return mask_logits
    winner = mask_logits.argmax(dim=0, keepdim=True)
    own = torch.arange(mask_logits.shape[0], device=mask_logits.device)[:, None, None, None]
    return torch.where(winner == own, mask_logits, mask_logits.clamp(max=-10.0))


@dataclass(frozen=True)
class MemoryWriter:
    """A frame's features and masks -> memory features (see the module docstring)."""

    encoder: MemoryEncoder
    no_obj_embed_spatial: torch.Tensor | None  # [1, mem_dim], added where the object is absent
    cfg: MemoryConfig

    def encode(
        self,
        image_embed: torch.Tensor,
        mask_logits: torch.Tensor,
        object_score_logits: torch.Tensor,
        from_prompts: torch.Tensor,
        training: bool,
    ) -> torch.Tensor:
        """Memory features [B, mem_dim, h, w] in the storage dtype.

        image_embed: [B, C, h, w] raw frame features (before memory attention);
        mask_logits: [B, 1, S, S]; object_score_logits: [B, 1] or [B]; from_prompts: [B] bool;
        training: the network's mode (training keeps overlaps and soft prompted masks).
        """
        cfg = self.cfg
        if cfg.non_overlap_masks_for_mem_enc and not training:
            mask_logits = suppress_overlaps(mask_logits)
        mask_input = mask_for_memory(mask_logits, from_prompts, cfg, training)
        features = self.encoder(image_embed, mask_input, skip_mask_sigmoid=True).features
        if self.no_obj_embed_spatial is not None:
            absent = (object_score_logits.reshape(-1, 1) <= 0).to(features.dtype)
            embed = self.no_obj_embed_spatial[:, :, None, None]
            features = features + absent[:, :, None, None] * embed
        return features.to(storage_dtype(cfg))
