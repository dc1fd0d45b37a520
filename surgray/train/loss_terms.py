"""The elementary loss terms of SAM2 training and of SAM2S (ARL label softening, TSL InfoNCE).

Every function here works on a batch of N objects and returns one value per object (or per
object and candidate mask), unreduced: `surgray.train.losses.SAM2Loss` decides how to select,
mask and normalise them. Shapes: mask logits and targets are [N, M, H, W] (M candidate masks
per object, M = 1 or 3), IoU predictions [N, M], object-score logits [N].

Conventions taken from SAM2's training losses (facebookresearch/sam2 `training/loss_fns.py`):
- focal: RetinaNet's sigmoid focal loss, averaged over pixels;
- dice: the "semimetric" form 1 - (S - |p - t|_1 + 1) / (S + 1) with S = sum(p) + sum(t),
  which equals the usual 1 - (2 sum(p t) + 1) / (S + 1) for hard targets and stays
  well-behaved for soft ones;
- actual IoU: thresholded prediction (logit > 0) against target > 0, union clamped to >= 1,
  so an empty prediction of an empty target scores 0, not 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
TSL_LOGIT_SCALE = 100.0  # SAM2S "tau = 100, following OVSeg": a multiplier on cosine similarity


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """Element-wise focal loss of sigmoid logits against targets in [0, 1] (same shape).

    A negative `alpha` turns the class balancing off; with gamma = 0 and alpha < 0 this is
    plain binary cross-entropy (SAM2's object-score loss). Soft targets are allowed: the
    modulating factor uses p_t = p t + (1 - p)(1 - t), as the reference does.
    """
    prob = torch.sigmoid(logits)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    prob_of_truth = prob * targets + (1.0 - prob) * (1.0 - targets)
    loss = cross_entropy * (1.0 - prob_of_truth) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss


def focal_per_mask(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = FOCAL_ALPHA,
    gamma: float = FOCAL_GAMMA,
) -> torch.Tensor:
    """[N, M, H, W] logits and targets -> [N, M] focal loss averaged over the pixels."""
    return sigmoid_focal_loss(logits, targets, alpha, gamma).flatten(2).mean(-1)


def dice_per_mask(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N, M, H, W] logits and targets -> [N, M] dice loss (smoothing 1, semimetric form)."""
    probs = torch.sigmoid(logits).flatten(2)
    targets = targets.flatten(2)
    total = probs.sum(-1) + targets.sum(-1)
    overlap_twice = total - (probs - targets).abs().sum(-1)
    return 1.0 - (overlap_twice + 1.0) / (total + 1.0)


def actual_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[N, M, H, W] -> [N, M] IoU of each thresholded predicted mask with the target."""
    predicted = (logits > 0).flatten(2)
    truth = (targets > 0).flatten(2)
    intersection = (predicted & truth).sum(-1).float()
    union = (predicted | truth).sum(-1).float()
    return intersection / union.clamp(min=1.0)


def iou_prediction_l1(
    iou_pred: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """[N, M] absolute error of the IoU head against each mask's actual IoU.

    The actual IoU comes from thresholded masks, so this term sends no gradient to the masks.
    """
    return (iou_pred - actual_iou(logits, targets)).abs()


def object_score_bce(object_score_logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """[N] binary cross-entropy of the "object is present" logit (SAM2's `loss_class`)."""
    return F.binary_cross_entropy_with_logits(
        object_score_logits.reshape(-1),
        present.reshape(-1).to(object_score_logits.dtype),
        reduction="none",
    )


def gaussian_kernel(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """A [size, size] Gaussian that sums to 1 (SAM2S ARL uses 5 x 5, sigma 1)."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"gaussian_kernel: size must be a positive odd number, got {size}")
    if sigma <= 0:
        raise ValueError(f"gaussian_kernel: sigma must be > 0, got {sigma}")
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    line = torch.exp(-(offsets**2) / (2.0 * sigma * sigma))
    line = line / line.sum()
    return torch.outer(line, line).float()


def soften_masks(masks: torch.Tensor, size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """SAM2S ambiguity-resilient labels: hard masks blurred by a normalised Gaussian.

    `masks` is [N, H, W] or [N, 1, H, W]; the result has the same shape, values in [0, 1].
    The border is padded by replicating the edge pixels, not with zeros: an instrument that
    runs out of the picture continues beyond it, and zero padding would teach the model that
    every object fades out at the image edge. A mask that fills the image stays all ones.
    """
    if masks.ndim not in (3, 4) or (masks.ndim == 4 and masks.shape[1] != 1):
        raise ValueError(
            f"soften_masks: masks must be [N, H, W] or [N, 1, H, W], got {list(masks.shape)}"
        )
    kernel = gaussian_kernel(size, sigma).to(device=masks.device)
    maps = masks.float().reshape(masks.shape[0], 1, *masks.shape[-2:])
    half = size // 2
    padded = F.pad(maps, (half, half, half, half), mode="replicate")
    softened = F.conv2d(padded, kernel[None, None])
    return softened.reshape(masks.shape)


def tsl_info_nce(
    embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    category_ids: torch.Tensor,
    logit_scale: float = TSL_LOGIT_SCALE,
) -> torch.Tensor:
    """SAM2S temporal semantic learning: InfoNCE of each object's embedding over K categories.

    embeddings [N, D] (the semantic head's CLS output), text_embeddings [K, D] (one per
    category name), category_ids [N] with -1 for objects without a category (tissue).
    Logits are cosine similarities times `logit_scale`; the loss is the cross-entropy to the
    object's category, averaged over the objects that have one. With none, the result is a
    zero that still depends on `embeddings`, so distributed training sees the head as used.
    """
    if embeddings.ndim != 2 or text_embeddings.ndim != 2:
        raise ValueError(
            "tsl_info_nce: embeddings must be [N, D] and text_embeddings [K, D], got "
            f"{list(embeddings.shape)} and {list(text_embeddings.shape)}"
        )
    if embeddings.shape[1] != text_embeddings.shape[1]:
        raise ValueError(
            f"tsl_info_nce: embedding width {embeddings.shape[1]} differs from the text "
            f"embedding width {text_embeddings.shape[1]}"
        )
    category_ids = category_ids.reshape(-1).long()
    if category_ids.numel() != embeddings.shape[0]:
        raise ValueError(
            f"tsl_info_nce: {category_ids.numel()} category ids for {embeddings.shape[0]} objects"
        )
    num_categories = text_embeddings.shape[0]
    bad = (category_ids < -1) | (category_ids >= num_categories)
    if bool(bad.any()):
        raise ValueError(
            f"tsl_info_nce: category ids must lie in [-1, {num_categories - 1}], "
            f"got {category_ids[bad].tolist()}"
        )
    labelled = category_ids >= 0
    if not bool(labelled.any()):
        return embeddings.sum() * 0.0
    similarity = (
        F.normalize(embeddings[labelled].float(), dim=-1)
        @ F.normalize(text_embeddings.float(), dim=-1).T
    )
    return F.cross_entropy(similarity * logit_scale, category_ids[labelled])
