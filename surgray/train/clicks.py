"""Click samplers on ground-truth masks: boxes, error clicks, and evaluation click sequences.

Coordinates are (x, y) pixels of the mask grid; labels 1 positive, 0 negative, 2 and 3 the
top-left and bottom-right box corners (SAM2's convention). "Uniform" clicks (SAM2's training
rule) pick a pixel uniformly among the error pixels; "center" clicks (SAM's and RITM's
evaluation rule) pick the error pixel farthest from its region's boundary. False negatives
give positive clicks, false positives negative ones; without a prediction the whole GT mask
is the error. Randomness comes only from the `torch.Generator` given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

POSITIVE, NEGATIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 1, 0, 2, 3


@dataclass
class Clicks:
    """Clicks of N objects: coords [N, P, 2] float (x, y), labels [N, P] int32."""

    coords: torch.Tensor
    labels: torch.Tensor

    @property
    def num_objects(self) -> int:
        return self.coords.shape[0]

    @property
    def num_clicks(self) -> int:
        return self.coords.shape[1]

    def then(self, later: Clicks) -> Clicks:
        """These clicks followed by `later` ones (SAM2 appends correction clicks)."""
        return Clicks(
            torch.cat([self.coords, later.coords], dim=1),
            torch.cat([self.labels, later.labels], dim=1),
        )


def check_masks(gt: torch.Tensor, pred: torch.Tensor | None, where: str) -> None:
    if gt.ndim != 3 or gt.dtype != torch.bool:
        raise ValueError(
            f"{where}: gt masks must be bool [N, H, W], got {gt.dtype} {list(gt.shape)}"
        )
    if pred is not None and (pred.shape != gt.shape or pred.dtype != torch.bool):
        raise ValueError(
            f"{where}: predicted masks must be bool {list(gt.shape)} like the gt, "
            f"got {pred.dtype} {list(pred.shape)}"
        )


def mask_boxes(gt: torch.Tensor) -> torch.Tensor:
    """[N, H, W] bool -> [N, 4] float (x0, y0, x1, y1), inclusive pixel indices.

    An empty mask gives the inverted box (W - 1, H - 1, 0, 0), which is where SAM2's
    clamping puts it.
    """
    check_masks(gt, None, "mask_boxes")
    n, height, width = gt.shape
    cols = gt.any(dim=1)  # [N, W]
    rows = gt.any(dim=2)  # [N, H]
    xs = torch.arange(width, device=gt.device)
    ys = torch.arange(height, device=gt.device)
    x0 = torch.where(cols, xs, width - 1).amin(dim=1)
    x1 = torch.where(cols, xs, 0).amax(dim=1)
    y0 = torch.where(rows, ys, height - 1).amin(dim=1)
    y1 = torch.where(rows, ys, 0).amax(dim=1)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def box_clicks(
    gt: torch.Tensor,
    generator: torch.Generator,
    noise: float = 0.1,
    noise_bound: float = 20.0,
) -> Clicks:
    """The GT boxes as two corner clicks, each coordinate moved by up to
    min(noise * box side, noise_bound) pixels (SAM's box jitter), kept inside the image."""
    boxes = mask_boxes(gt)
    n, height, width = gt.shape
    if noise > 0:
        sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)  # empty masks: no jitter
        reach = torch.clamp(sides * noise, max=noise_bound).repeat(1, 2)  # (dx, dy, dx, dy)
        jitter = 2 * torch.rand(n, 4, generator=generator) - 1
        boxes = boxes + jitter.to(boxes.device) * reach
        limits = torch.tensor([width - 1, height - 1] * 2, dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
    labels = torch.tensor([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], dtype=torch.int32, device=gt.device)
    return Clicks(boxes.reshape(n, 2, 2), labels.repeat(n, 1))


def _error_regions(gt: torch.Tensor, pred: torch.Tensor | None):
    pred = torch.zeros_like(gt) if pred is None else pred
    return gt & ~pred, ~gt & pred  # false negatives, false positives


def uniform_error_click(
    gt: torch.Tensor, pred: torch.Tensor | None, generator: torch.Generator
) -> Clicks:
    """One click per object at a uniformly random error pixel (SAM2's training clicks).

    A false-negative pixel gives a positive click, a false-positive one a negative click.
    When the prediction is already right, the click is a negative one on the background.
    """
    check_masks(gt, pred, "uniform_error_click")
    n, height, width = gt.shape
    false_neg, false_pos = _error_regions(gt, pred)
    perfect = ~(false_neg | false_pos).flatten(1).any(dim=1)
    negative_pool = false_pos | (perfect[:, None, None] & ~gt)
    # A random score per (pixel, label); only allowed pairs keep theirs; the best pair wins.
    scores = torch.rand(n, height, width, 2, generator=generator).to(gt.device)
    scores = scores * torch.stack([negative_pool, false_neg], dim=-1)
    pick = scores.flatten(1).argmax(dim=1)
    labels = (pick % 2).to(torch.int32)
    pixel = pick // 2
    coords = torch.stack([pixel % width, pixel // width], dim=1).float()
    return Clicks(coords[:, None], labels[:, None])


def _depth(region: np.ndarray) -> np.ndarray:
    """Euclidean distance of each region pixel to the nearest pixel outside it, the image
    border counting as outside (the frame is padded by one background pixel)."""
    import cv2

    padded = np.pad(region.astype(np.uint8), 1)
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def center_error_click(gt: torch.Tensor, pred: torch.Tensor | None) -> Clicks:
    """One click per object at the centre of the larger error region (deterministic).

    The click goes to the error pixel farthest from its region's boundary: positive in the
    false negatives when they reach strictly deeper than the false positives, negative
    otherwise; ties between pixels go to the first in raster order.
    """
    check_masks(gt, pred, "center_error_click")
    false_neg, false_pos = (r.cpu().numpy() for r in _error_regions(gt, pred))
    n, _, width = gt.shape
    coords = torch.zeros(n, 1, 2)
    labels = torch.zeros(n, 1, dtype=torch.int32)
    for i in range(n):
        depth_neg = _depth(false_neg[i]).ravel()
        depth_pos = _depth(false_pos[i]).ravel()
        best_neg, best_pos = int(depth_neg.argmax()), int(depth_pos.argmax())
        positive = depth_neg[best_neg] > depth_pos[best_pos]
        pixel = best_neg if positive else best_pos
        coords[i, 0] = torch.tensor([pixel % width, pixel // width], dtype=torch.float32)
        labels[i, 0] = POSITIVE if positive else NEGATIVE
    return Clicks(coords.to(gt.device), labels.to(gt.device))


def error_click(
    gt: torch.Tensor,
    pred: torch.Tensor | None,
    method: Literal["uniform", "center"],
    generator: torch.Generator,
) -> Clicks:
    if method == "uniform":
        return uniform_error_click(gt, pred, generator)
    if method == "center":
        return center_error_click(gt, pred)
    raise ValueError(f"error_click: unknown method {method!r} (use 'uniform' or 'center')")


@dataclass
class EvaluationClicks:
    """Clicks of one object, in order: points [P, 2] float (x, y), labels [P] int32."""

    points: torch.Tensor
    labels: torch.Tensor


def evaluation_clicks(
    gt: torch.Tensor,
    pred_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_clicks: int,
) -> EvaluationClicks:
    """SAM2S's interactive evaluation on a prompted frame: the first click at the centre of
    the object (farthest from its boundary), each later one at the centre of the largest
    error of the prediction made from the clicks so far.

    `gt` is one object's [H, W] mask; `pred_fn(points, labels)` returns the model's [H, W]
    bool mask for those clicks. It is called `num_clicks - 1` times at most: clicking stops
    early once a prediction is exactly right.
    """
    if gt.ndim != 2:
        raise ValueError(f"evaluation_clicks: gt must be one [H, W] mask, got {list(gt.shape)}")
    if num_clicks < 1:
        raise ValueError(f"evaluation_clicks: num_clicks must be >= 1, got {num_clicks}")
    gt = gt.bool()
    if not bool(gt.any()):
        raise ValueError("evaluation_clicks: the gt mask is empty; there is nothing to click")
    clicks = center_error_click(gt[None], None)
    while clicks.num_clicks < num_clicks:
        pred = pred_fn(clicks.coords[0], clicks.labels[0])
        if pred.shape != gt.shape:
            raise ValueError(
                f"evaluation_clicks: pred_fn returned shape {list(pred.shape)}, "
                f"expected {list(gt.shape)}"
            )
        pred = pred.bool().to(gt.device)
        if torch.equal(pred, gt):
            break
        clicks = clicks.then(center_error_click(gt[None], pred[None]))
    return EvaluationClicks(clicks.coords[0], clicks.labels[0])
