"""Mask post-processing: small holes and sprinkles, non-overlap across objects, video size.

Equivalent to what Meta's video predictor does with `fill_hole_area` (its CUDA connected
components; here OpenCV's, imported only when used): on the low-resolution logits of each
object, background regions (logit <= 0) of at most `fill_hole_area` pixels, 8-connected,
become foreground with logit 0.1. The older SAM2 release also removed foreground specks of
that size (logit -0.1); `remove_sprinkle_area` offers that, off by default as in sam2 1.1.0.
`non_overlap_masks` keeps each pixel for the highest-scoring object only (the reference's
`non_overlap_masks` option of the video predictor, off there too).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from surgray.model.sam2.memory_writer import suppress_overlaps

HOLE_LOGIT = 0.1  # just above the threshold: a filled hole is foreground, weakly
SPRINKLE_LOGIT = -0.1


class PostprocessConfig(BaseModel):
    """How output masks are cleaned and combined."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Largest hole (low-res pixels) that is filled; None takes the model config's
    # `prompting.fill_hole_area` (8 in every official setup); 0 turns it off.
    fill_hole_area: int | None = Field(None, ge=0)
    # Largest foreground speck (low-res pixels) that is removed; 0 (default) keeps them all.
    remove_sprinkle_area: int = Field(0, ge=0)
    # Give each pixel to one object only (the highest logit), on the output masks.
    non_overlap_masks: bool = False


def _small_components(binary: np.ndarray, max_area: int) -> np.ndarray:
    """Pixels of 8-connected components of `binary` ([H, W] bool) with area <= max_area."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        binary.astype(np.uint8), connectivity=8
    )
    if count <= 1:
        return np.zeros_like(binary)
    small = stats[:, cv2.CC_STAT_AREA] <= max_area
    small[0] = False  # label 0 is the complement of `binary`, not a component of it
    return small[labels]


def clean_mask_logits(logits: torch.Tensor, hole_area: int, sprinkle_area: int) -> torch.Tensor:
    """Fill small holes / remove small sprinkles in [B, 1, h, w] logits (a new tensor)."""
    if hole_area <= 0 and sprinkle_area <= 0:
        return logits
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise ValueError(f"mask logits must be [B, 1, h, w], got {list(logits.shape)}")
    values = logits.detach().float().cpu().numpy().copy()
    for plane in values[:, 0]:
        if hole_area > 0:
            plane[_small_components(plane <= 0, hole_area)] = HOLE_LOGIT
        if sprinkle_area > 0:
            plane[_small_components(plane > 0, sprinkle_area)] = SPRINKLE_LOGIT
    return torch.from_numpy(values).to(device=logits.device, dtype=logits.dtype)


def to_video_resolution(low_res_logits: torch.Tensor, frame_size: tuple[int, int]) -> torch.Tensor:
    """[B, 1, h, w] logits -> [B, 1, H, W] at the video's size (bilinear, as the reference)."""
    if tuple(low_res_logits.shape[-2:]) == tuple(frame_size):
        return low_res_logits
    return F.interpolate(
        low_res_logits.float(), size=frame_size, mode="bilinear", align_corners=False
    )


def combine_objects(video_res_logits: torch.Tensor, non_overlap: bool) -> torch.Tensor:
    """The output logits of all objects of a frame ([B, 1, H, W]), optionally non-overlapping."""
    if non_overlap:
        return suppress_overlaps(video_res_logits)
    return video_res_logits
