"""The category probes' losses on referring clips (`surgray.model.referring.category_probes`).

A referring head trained only on masks can settle on telling instrument from tissue and stop
there: on the demo's synthetic clips most objects share their kind with another object in view,
and the fused text of every instrument expression ended up along one direction. Two auxiliary
cross-entropies name the category explicitly, on every stage-1 frame (context and anchor):

- `text_category`: from each of the fusion's sparse tokens (class token, fused text embedding)
  of every object, the category of its expression, averaged over tokens and frames;
- `pixel_category`: from the frame's stride-16 image features (logits brought to the mask
  size), each pixel's category among the clip's objects, 0 where none is; pixels of objects
  whose category is not in the vocabulary are left out. Each class present on a frame weighs
  the same however many pixels it covers (background, tissue and a thin instrument alike):
  averaged per pixel, the background and the tissues drown the instruments, whose categories
  are the ones hard to tell apart (runs 25-26 in docs/demo-training.md). Averaged over
  frames.

Objects whose category is unknown or not in `ReferringConfig.grounding_categories` are skipped;
a clip with none known contributes 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from surgray.model.referring.category_probes import CategoryProbes
from surgray.model.sam2.frame_types import HeadsOutput
from surgray.train.clip_data import TrainingClip
from surgray.train.losses import LossBreakdown, LossConfig


def grounding_enabled(model, config: LossConfig) -> bool:
    """Whether referring clips of this model get the probes' losses."""
    probes = getattr(model, "category_probes", None)
    return probes is not None and (config.text_category > 0 or config.pixel_category > 0)


def text_category_loss(
    probes: CategoryProbes, stage1: Sequence[HeadsOutput], category_ids: torch.Tensor
) -> torch.Tensor:
    """Mean over stage-1 frames and sparse tokens of the cross-entropy of each object's
    category (category_ids [N]: index in the vocabulary, -1 skipped)."""
    known = category_ids >= 0
    if not stage1 or not bool(known.any()):
        return _zero(probes)
    losses = []
    for heads in stage1:
        if heads.fusion_tokens is None:
            raise ValueError("text_category needs stage-1 outputs that carry fusion_tokens")
        tokens = heads.fusion_tokens[known]  # [n, T, C]
        logits = probes.text(tokens).flatten(0, 1)  # [n * T, K]
        targets = category_ids[known].repeat_interleave(tokens.shape[1])
        losses.append(F.cross_entropy(logits.float(), targets))
    return torch.stack(losses).mean()


def pixel_category_loss(
    probes: CategoryProbes,
    image_embeds: Sequence[torch.Tensor],
    masks: torch.Tensor,
    category_ids: torch.Tensor,
) -> torch.Tensor:
    """Mean over frames of the class-balanced per-pixel cross-entropy of the category map.

    image_embeds: per frame [1, C, h, w]; masks [F, N, S, S] the clip objects' masks on those
    frames; category_ids [N] (-1: the object's pixels are left out).
    """
    if len(image_embeds) != masks.shape[0]:
        raise ValueError(f"{len(image_embeds)} feature maps for {masks.shape[0]} mask frames")
    if not image_embeds:
        return _zero(probes)
    size = masks.shape[-2:]
    classes = [c + 1 if c >= 0 else -1 for c in category_ids.tolist()]  # 0: no object
    losses = []
    for embed, frame_masks in zip(image_embeds, masks):
        logits = probes.pixel(embed)
        logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
        target = torch.zeros(size, dtype=torch.long, device=logits.device)
        for obj_mask, label in zip(frame_masks, classes):
            target[obj_mask.bool()] = label
        losses.append(
            _class_balanced_cross_entropy(logits, target[None], 1 + probes.num_categories)
        )
    return torch.stack(losses).mean()


def _class_balanced_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Mean over the classes present in `target` of each class's mean pixel cross-entropy."""
    counts = torch.bincount(target[target >= 0].flatten(), minlength=num_classes).float()
    weight = torch.where(counts > 0, 1.0 / counts.clamp(min=1.0), torch.zeros_like(counts))
    return F.cross_entropy(logits, target, weight=weight, ignore_index=-1)


def _zero(probes: CategoryProbes) -> torch.Tensor:
    return next(probes.parameters()).new_zeros(())


def grounding_loss(
    model,
    config: LossConfig,
    clip: TrainingClip,
    staged: Sequence[int],
    stage1: Sequence[HeadsOutput],
    image_embeds: Sequence[torch.Tensor],
) -> LossBreakdown:
    """Both probe terms of one referring clip as a `LossBreakdown` (other terms 0)."""
    probes = model.category_probes
    ids = clip.category_ids(model.referring_cfg.grounding_categories)
    text = text_category_loss(probes, stage1, ids)
    pixel = pixel_category_loss(probes, image_embeds, clip.masks[list(staged)], ids)
    zero = text.new_zeros(())
    return LossBreakdown(
        focal=zero,
        dice=zero,
        iou=zero,
        object_class=zero,
        tsl=zero,
        text_category=text,
        pixel_category=pixel,
        total=config.text_category * text + config.pixel_category * pixel,
    )
