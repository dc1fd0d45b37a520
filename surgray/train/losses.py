"""SAM2's training loss per frame, with SAM2S's ARL and TSL terms as options.

What SAM2 does (facebookresearch/sam2 `training/loss_fns.py`, SAM2.1 training configs), and
what `SAM2Loss` reproduces:
- every mask-decoder pass of a frame (the first prompt and each correction click) adds its
  losses; nothing is averaged over passes;
- with M > 1 candidate masks, focal and dice are taken from the candidate with the lowest
  *weighted* focal + dice (w_focal * focal + w_dice * dice); the IoU head is supervised on all
  candidates (mean of their L1 errors; `supervise_all_iou`);
- focal, dice and IoU terms are dropped for objects absent from the frame (empty target);
  the object-score BCE is always applied;
- every term is summed over objects and divided by the number of objects in the batch
  (absent ones included), averaged over distributed workers (`average_object_count`).

SAM2S additions: ARL replaces the focal target by Gaussian-softened labels (same weight,
20); TSL adds an InfoNCE term (weight 0.1) on the semantic head's embedding, averaged over
the objects that have a category.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from surgray.train.loss_terms import (
    TSL_LOGIT_SCALE,
    actual_iou,
    dice_per_mask,
    focal_per_mask,
    gaussian_kernel,
    iou_prediction_l1,
    object_score_bce,
    sigmoid_focal_loss,
    soften_masks,
    tsl_info_nce,
)

__all__ = [
    "DecoderStep",
    "FramePrediction",
    "FrameTarget",
    "LossBreakdown",
    "LossConfig",
    "SAM2Loss",
    "actual_iou",
    "average_object_count",
    "dice_per_mask",
    "focal_per_mask",
    "gaussian_kernel",
    "iou_prediction_l1",
    "object_score_bce",
    "sigmoid_focal_loss",
    "soften_masks",
    "tsl_info_nce",
]


class LossConfig(BaseModel):
    """Weights of the loss terms (SAM2: 20/1/1/1; SAM2S adds TSL 0.1 and ARL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    focal: float = Field(20.0, ge=0)
    dice: float = Field(1.0, ge=0)
    iou: float = Field(1.0, ge=0)
    object_class: float = Field(1.0, ge=0)
    tsl: float = Field(0.1, ge=0)
    arl: bool = False  # focal on Gaussian-softened labels (SAM2S) instead of hard ones
    arl_kernel_size: int = Field(5, ge=1)
    arl_sigma: float = Field(1.0, gt=0)
    tsl_logit_scale: float = Field(TSL_LOGIT_SCALE, gt=0)
    # Whether TSL's gradient also reaches the category-name embeddings (a trainable text
    # tower). SAM2S compares against frozen CLIP embeddings; letting TSL move them lets it
    # collapse the K names onto one point, where InfoNCE sits at log K with no signal.
    tsl_trains_text: bool = False
    supervise_all_iou: bool = True  # SAM2.1 configs: IoU head trained on every candidate
    # Category probes on referring clips (`surgray.train.grounding`; the names are
    # model.referring.grounding_categories): cross-entropy of the expression's category from
    # the fusion's tokens, and of each pixel's category from the stride-16 image features.
    text_category: float = Field(0.0, ge=0)
    pixel_category: float = Field(0.0, ge=0)


@dataclass
class DecoderStep:
    """One mask-decoder pass for N objects: the first prompt or one correction click."""

    mask_logits: torch.Tensor  # [N, M, H, W] at the targets' resolution (SAM2: high-res)
    iou_pred: torch.Tensor  # [N, M]
    object_score_logits: torch.Tensor  # [N, 1] or [N]

    @classmethod
    def from_heads(cls, heads) -> DecoderStep:
        """From a `surgray.model.sam2.frame_types.HeadsOutput` (its high-resolution candidates)."""
        return cls(heads.high_res_multimasks, heads.multimask_iou, heads.object_score_logits)


@dataclass
class FramePrediction:
    """What the model predicted on one frame, for the loss."""

    steps: list[DecoderStep]
    semantic_embedding: torch.Tensor | None = None  # [N, D] SAM2S semantic head output


@dataclass
class FrameTarget:
    """Ground truth of one frame: N object masks and, for TSL, their categories."""

    masks: torch.Tensor  # [N, H, W], nonzero = object
    category_ids: torch.Tensor | None = None  # [N] long; -1 = no category (skipped by TSL)


@dataclass
class LossBreakdown:
    """Unweighted loss terms (summed over frames and decoder passes) and the weighted total."""

    focal: torch.Tensor  # on softened labels when ARL is on
    dice: torch.Tensor
    iou: torch.Tensor
    object_class: torch.Tensor
    tsl: torch.Tensor
    text_category: torch.Tensor  # referring clips with category probes, else 0
    pixel_category: torch.Tensor
    total: torch.Tensor

    @classmethod
    def zeros(cls, device: torch.device | str | None = None) -> LossBreakdown:
        return cls(*(torch.zeros((), device=device) for _ in fields(cls)))

    def __add__(self, other: LossBreakdown) -> LossBreakdown:
        return LossBreakdown(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )

    def as_floats(self) -> dict[str, float]:
        """Detached Python numbers, for logging."""
        return {f.name: float(getattr(self, f.name).detach()) for f in fields(self)}


def average_object_count(local_count: int, device: torch.device | str | None = None) -> float:
    """Objects per worker averaged over the process group (1 worker: the count), at least 1.

    SAM2 normalises every term by this, so that each worker's gradient has the same scale
    whatever the local number of objects.
    """
    count = torch.tensor(float(local_count), device=device)
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return max(float(count), 1.0)


class SAM2Loss(nn.Module):
    """Loss of a clip: `forward(frames, targets)` sums the per-frame losses."""

    def __init__(self, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config or LossConfig()

    def forward(
        self,
        frames: Sequence[FramePrediction],
        targets: Sequence[FrameTarget],
        text_embeddings: torch.Tensor | None = None,
        num_objects: float | None = None,
    ) -> LossBreakdown:
        """Sum of `frame_loss` over frames.

        `num_objects` is the normaliser (see `average_object_count`); by default each frame
        uses its own object count. `text_embeddings` [K, D] are the category-name
        embeddings for TSL (needed when a frame carries a semantic embedding).
        """
        if len(frames) != len(targets):
            raise ValueError(
                f"SAM2Loss: {len(frames)} frame predictions for {len(targets)} targets"
            )
        if not frames:
            raise ValueError("SAM2Loss: no frames given")
        total = None
        for frame, target in zip(frames, targets):
            loss = self.frame_loss(frame, target, text_embeddings, num_objects)
            total = loss if total is None else total + loss
        return total

    def frame_loss(
        self,
        frame: FramePrediction,
        target: FrameTarget,
        text_embeddings: torch.Tensor | None = None,
        num_objects: float | None = None,
    ) -> LossBreakdown:
        cfg = self.config
        hard = _check_target(target)
        if not frame.steps:
            raise ValueError("SAM2Loss: a frame prediction needs at least one decoder step")
        n = hard.shape[0]
        normaliser = float(num_objects) if num_objects is not None else float(max(n, 1))
        if normaliser <= 0:
            raise ValueError(f"SAM2Loss: num_objects must be > 0, got {num_objects}")
        present = hard.flatten(1).any(dim=1).float()  # [N]
        hard_maps = hard.float().unsqueeze(1)  # [N, 1, H, W]
        focal_target = (
            soften_masks(hard_maps, cfg.arl_kernel_size, cfg.arl_sigma) if cfg.arl else hard_maps
        )

        sums = {"focal": 0.0, "dice": 0.0, "iou": 0.0, "object_class": 0.0}
        for index, step in enumerate(frame.steps):
            _check_step(step, hard.shape, index)
            logits = step.mask_logits.float()
            focal = focal_per_mask(logits, focal_target.expand_as(logits))
            dice = dice_per_mask(logits, hard_maps.expand_as(logits))
            iou_error = iou_prediction_l1(
                step.iou_pred.float(), logits, hard_maps.expand_as(logits)
            )
            focal, dice, iou_error = self._pick_candidate(focal, dice, iou_error)
            sums["focal"] = sums["focal"] + (focal * present).sum() / normaliser
            sums["dice"] = sums["dice"] + (dice * present).sum() / normaliser
            sums["iou"] = sums["iou"] + (iou_error * present).sum() / normaliser
            class_loss = object_score_bce(step.object_score_logits.float(), present)
            sums["object_class"] = sums["object_class"] + class_loss.sum() / normaliser

        tsl = self._tsl(frame, target, text_embeddings, n)
        device = hard.device
        terms = {k: torch.as_tensor(v, device=device) for k, v in sums.items()}
        total = (
            cfg.focal * terms["focal"]
            + cfg.dice * terms["dice"]
            + cfg.iou * terms["iou"]
            + cfg.object_class * terms["object_class"]
            + cfg.tsl * tsl
        )
        zero = torch.zeros((), device=device)
        return LossBreakdown(**terms, tsl=tsl, text_category=zero, pixel_category=zero, total=total)

    def _pick_candidate(
        self, focal: torch.Tensor, dice: torch.Tensor, iou_error: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[N, M] terms -> [N]: the best candidate's focal and dice, IoU error on all of them."""
        if focal.shape[1] == 1:
            return focal[:, 0], dice[:, 0], iou_error[:, 0]
        # The selection is by the same weighted sum that is optimised, as in SAM2.
        combined = self.config.focal * focal + self.config.dice * dice
        best = combined.argmin(dim=1, keepdim=True)
        iou_term = (
            iou_error.mean(dim=1)
            if self.config.supervise_all_iou
            else iou_error.gather(1, best)[:, 0]
        )
        return focal.gather(1, best)[:, 0], dice.gather(1, best)[:, 0], iou_term

    def _tsl(
        self,
        frame: FramePrediction,
        target: FrameTarget,
        text_embeddings: torch.Tensor | None,
        num_objects: int,
    ) -> torch.Tensor:
        device = target.masks.device
        if frame.semantic_embedding is None or self.config.tsl == 0:
            return torch.zeros((), device=device)
        if text_embeddings is None:
            raise ValueError(
                "SAM2Loss: the frame has a semantic embedding but no text_embeddings were given "
                "(TSL needs the [K, D] category-name embeddings)"
            )
        if target.category_ids is None:
            raise ValueError(
                "SAM2Loss: the frame has a semantic embedding but its target has no "
                "category_ids (use -1 for objects without a category)"
            )
        if frame.semantic_embedding.shape[0] != num_objects:
            raise ValueError(
                f"SAM2Loss: semantic_embedding has {frame.semantic_embedding.shape[0]} rows "
                f"for {num_objects} objects"
            )
        return tsl_info_nce(
            frame.semantic_embedding,
            text_embeddings,
            target.category_ids,
            self.config.tsl_logit_scale,
        )


def _check_target(target: FrameTarget) -> torch.Tensor:
    masks = target.masks
    if masks.ndim != 3:
        raise ValueError(f"SAM2Loss: target masks must be [N, H, W], got {list(masks.shape)}")
    return masks > 0


def _check_step(step: DecoderStep, target_shape: torch.Size, index: int) -> None:
    n, height, width = target_shape
    logits = step.mask_logits
    where = f"SAM2Loss: decoder step {index}"
    if logits.ndim != 4 or logits.shape[0] != n or tuple(logits.shape[2:]) != (height, width):
        raise ValueError(
            f"{where}: mask_logits must be [N={n}, M, {height}, {width}] like the targets, "
            f"got {list(logits.shape)}"
        )
    if tuple(step.iou_pred.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"{where}: iou_pred must be {list(logits.shape[:2])}, got {list(step.iou_pred.shape)}"
        )
    if step.object_score_logits.numel() != n:
        raise ValueError(
            f"{where}: object_score_logits must hold {n} values, "
            f"got shape {list(step.object_score_logits.shape)}"
        )
