"""Per-frame segmentation metrics: J (region IoU), boundary F, J&F, Dice, Challenge IoU.

Conventions are those of the DAVIS 2017 evaluation code, which the surgical benchmarks
(SurgSAM2, ReSurgSAM2) reuse:

* J = |P & G| / |P | G|, and 1 when both masks are empty.
* Dice = 2 |P & G| / (|P| + |G|), and 1 when both masks are empty.
* F: both masks become 1-pixel boundary maps (`boundary_map`, DAVIS's ``seg2bmap``: a pixel is a
  boundary pixel when it differs from its east, south or south-east neighbour, with DAVIS's
  special rules for the last row and column). A predicted boundary pixel is matched when a ground
  truth boundary pixel lies within a disk of radius ceil(0.008 x image diagonal) (and the other way
  round for recall). No predicted boundary and some GT boundary gives P=1, R=0; the reverse gives
  P=0, R=1; neither gives P=R=1; F = 2PR / (P + R), or 0 when P + R = 0.

Speed: DAVIS dilates whole frames with the disk. Here every (frame, object) pair is cropped to the
bounding box of the two masks (one pixel wider, which keeps the boundary maps identical), and
boundary matching looks up, for each boundary pixel, the other boundary's pixels row by row in
sorted flat indices (a pixel lies in the disk when |dx| <= isqrt(r^2 - dy^2)). The result is the
same integer match count as the dilation, at a cost that follows the boundary length instead of
the frame area.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DAVIS_BOUNDARY_THRESHOLD = 0.008


@dataclass(frozen=True)
class MaskScores:
    """Scores of prediction/ground-truth mask pairs; every array has the pairs' leading shape."""

    j: np.ndarray  # region IoU, float64
    f: np.ndarray  # boundary F-measure, float64
    dice: np.ndarray  # float64
    gt_present: np.ndarray  # bool: the ground-truth mask has a pixel
    pred_present: np.ndarray  # bool: the predicted mask has a pixel

    @property
    def jf(self) -> np.ndarray:
        return j_and_f(self.j, self.f)


def j_and_f(j: np.ndarray | float, f: np.ndarray | float) -> np.ndarray:
    """The mean of J and F."""
    return (np.asarray(j, dtype=np.float64) + np.asarray(f, dtype=np.float64)) / 2


def boundary_radius(height: int, width: int, threshold: float = DAVIS_BOUNDARY_THRESHOLD) -> int:
    """Disk radius in pixels for boundary matching.

    A threshold below 1 is a fraction of the image diagonal (DAVIS: ceil(th * ||(H, W)||)); a
    threshold of 1 or more is the radius itself and must then be a whole number.
    """
    if threshold < 0:
        raise ValueError(f"boundary threshold must be >= 0, got {threshold}")
    if threshold >= 1:
        if float(threshold) != int(threshold):
            raise ValueError(
                f"a boundary threshold >= 1 is a radius in pixels and must be whole, got {threshold}"
            )
        return int(threshold)
    return int(np.ceil(threshold * np.linalg.norm((height, width))))


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """DAVIS ``seg2bmap``: 1-pixel boundaries of binary masks shaped (..., H, W), as bool."""
    seg = np.ascontiguousarray(mask, dtype=bool)
    if seg.ndim < 2:
        raise ValueError(f"masks must have shape (..., H, W), got {seg.shape}")
    bmap = np.empty(seg.shape, dtype=bool)
    here = seg[..., :-1, :-1]
    inner = here != seg[..., :-1, 1:]  # east neighbour
    inner |= here != seg[..., 1:, :-1]  # south
    inner |= here != seg[..., 1:, 1:]  # south-east
    bmap[..., :-1, :-1] = inner
    # DAVIS treats the last row and column on their own: the last row compares only with its
    # east neighbour, the last column only with its south neighbour, and the corner is never set.
    bmap[..., -1, :-1] = seg[..., -1, :-1] != seg[..., -1, 1:]
    bmap[..., :-1, -1] = seg[..., :-1, -1] != seg[..., 1:, -1]
    bmap[..., -1, -1] = False
    return bmap


def _disk_half_widths(radius: int) -> np.ndarray:
    """For dy = -r..r, the largest |dx| with dx^2 + dy^2 <= r^2 (skimage's disk, exactly)."""
    return np.array([math.isqrt(radius * radius - dy * dy) for dy in range(-radius, radius + 1)])


def _count_matched(query_keys: np.ndarray, target_keys: np.ndarray, width: int, radius: int) -> int:
    """How many query pixels have a target pixel within the disk.

    Pixels are given as sorted row-major flat indices into an image `width` pixels wide.
    """
    if query_keys.size == 0 or target_keys.size == 0:
        return 0
    qy, qx = np.divmod(query_keys, width)
    half = _disk_half_widths(radius)
    offsets = np.arange(-radius, radius + 1)
    # Nearest rows first: most boundary pixels of a decent prediction find a match in their own
    # row or the next, so only the rest pay for the whole disk.
    stages = [np.abs(offsets) == 0, np.abs(offsets) == 1, np.abs(offsets) > 1]
    pending = np.ones(qy.size, dtype=bool)
    last = target_keys.size - 1
    for stage in stages:
        dys, widths = offsets[stage], half[stage]
        if dys.size == 0:
            continue
        pending_idx = np.flatnonzero(pending)
        if pending_idx.size == 0:
            break
        rows = qy[pending_idx][None, :] + dys[:, None]
        px = qx[pending_idx][None, :]
        low = rows * width + np.maximum(px - widths[:, None], 0)
        high = rows * width + np.minimum(px + widths[:, None], width - 1)
        idx = np.searchsorted(target_keys, low)
        # A key in [low, high] lies in that row within the half-width; rows above the image give
        # negative bounds and rows below give bounds past every key, so neither can match.
        hit = (target_keys[np.minimum(idx, last)] <= high) & (idx <= last)
        pending[pending_idx[hit.any(axis=0)]] = False
    return int(qy.size - np.count_nonzero(pending))


def _f_from_counts(n_pred: int, n_gt: int, pred_matched: int, gt_matched: int) -> float:
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = pred_matched / float(n_pred)
        recall = gt_matched / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class PairCounts:
    """Pixel counts and boundary F of one prediction/ground-truth pair."""

    intersection: int
    pred_area: int
    gt_area: int
    f: float

    @property
    def j(self) -> float:
        union = self.pred_area + self.gt_area - self.intersection
        return self.intersection / union if union else 1.0

    @property
    def dice(self) -> float:
        total = self.pred_area + self.gt_area
        return 2 * self.intersection / total if total else 1.0


def score_pair(pred: np.ndarray, gt: np.ndarray, radius: int) -> PairCounts:
    """Counts and boundary F of one pair of 2-D bool masks; `radius` from `boundary_radius`."""
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"expected two 2-D masks of one shape, got {pred.shape} and {gt.shape}")
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    union = pred | gt
    rows = np.flatnonzero(union.any(axis=1))
    if rows.size == 0:
        return PairCounts(0, 0, 0, 1.0)
    y0, y1 = rows[0], rows[-1]
    cols = np.flatnonzero(union[y0 : y1 + 1].any(axis=0))
    x0, x1 = cols[0], cols[-1]
    height, width = pred.shape
    # One row/column before the masks holds boundary pixels (the map is offset towards the
    # origin); one empty row/column after them makes the crop's last-row/column rule agree with
    # the full frame's (or the crop ends at the frame edge, where the rule is the frame's own).
    top, bottom = max(0, y0 - 1), min(height, y1 + 2)
    left, right = max(0, x0 - 1), min(width, x1 + 2)
    pc = np.ascontiguousarray(pred[top:bottom, left:right])
    gc = np.ascontiguousarray(gt[top:bottom, left:right])
    inter = int(np.count_nonzero(pc & gc))
    pred_area = int(np.count_nonzero(pc))
    gt_area = int(np.count_nonzero(gc))
    pred_keys = np.flatnonzero(boundary_map(pc))
    gt_keys = np.flatnonzero(boundary_map(gc))
    n_pred, n_gt = int(pred_keys.size), int(gt_keys.size)
    crop_width = right - left
    pred_matched = _count_matched(pred_keys, gt_keys, crop_width, radius)
    gt_matched = _count_matched(gt_keys, pred_keys, crop_width, radius)
    return PairCounts(
        inter, pred_area, gt_area, _f_from_counts(n_pred, n_gt, pred_matched, gt_matched)
    )


def _ratio_or_one(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.ones(numerator.shape, dtype=np.float64)
    nonzero = denominator != 0
    out[nonzero] = numerator[nonzero] / denominator[nonzero]
    return out


def _check_pair_shapes(pred: np.ndarray, gt: np.ndarray) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    if pred.ndim < 2:
        raise ValueError(f"masks must have shape (..., H, W), got {pred.shape}")


def region_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """J of binary masks shaped (..., H, W) -> (...); empty vs empty is 1."""
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    _check_pair_shapes(pred, gt)
    inter = np.count_nonzero(pred & gt, axis=(-2, -1))
    union = np.count_nonzero(pred | gt, axis=(-2, -1))
    return _ratio_or_one(np.asarray(inter), np.asarray(union))


def dice_score(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Dice of binary masks shaped (..., H, W) -> (...); empty vs empty is 1."""
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    _check_pair_shapes(pred, gt)
    inter = np.asarray(np.count_nonzero(pred & gt, axis=(-2, -1)))
    total = np.asarray(np.count_nonzero(pred, axis=(-2, -1)) + np.count_nonzero(gt, axis=(-2, -1)))
    return _ratio_or_one(2 * inter, total)


def score_masks(
    pred: np.ndarray, gt: np.ndarray, threshold: float = DAVIS_BOUNDARY_THRESHOLD
) -> MaskScores:
    """J, F, Dice of binary mask pairs shaped (..., H, W) (frames, objects, ... in front)."""
    pred, gt = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    _check_pair_shapes(pred, gt)
    lead = pred.shape[:-2]
    height, width = pred.shape[-2:]
    radius = boundary_radius(height, width, threshold)
    flat_pred = pred.reshape(-1, height, width)
    flat_gt = gt.reshape(-1, height, width)
    counts = [score_pair(p, g, radius) for p, g in zip(flat_pred, flat_gt)]
    return _scores_from_counts(counts, lead)


def score_label_maps(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    object_ids: list[int] | tuple[int, ...],
    threshold: float = DAVIS_BOUNDARY_THRESHOLD,
) -> MaskScores:
    """Scores of every object id in label maps shaped (T, H, W) -> arrays (T, K).

    A pixel's value is its object id (DAVIS palette PNGs); 0 is background.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise ValueError(
            f"prediction label maps {pred_labels.shape} differ from ground truth {gt_labels.shape}"
        )
    if pred_labels.ndim != 3:
        raise ValueError(f"label maps must have shape (T, H, W), got {pred_labels.shape}")
    height, width = pred_labels.shape[1:]
    radius = boundary_radius(height, width, threshold)
    counts = [
        score_pair(pred_frame == obj_id, gt_frame == obj_id, radius)
        for pred_frame, gt_frame in zip(pred_labels, gt_labels)
        for obj_id in object_ids
    ]
    return _scores_from_counts(counts, (pred_labels.shape[0], len(object_ids)))


def _scores_from_counts(counts: list[PairCounts], lead: tuple[int, ...]) -> MaskScores:
    inter = np.array([c.intersection for c in counts], dtype=np.int64).reshape(lead)
    pred_area = np.array([c.pred_area for c in counts], dtype=np.int64).reshape(lead)
    gt_area = np.array([c.gt_area for c in counts], dtype=np.int64).reshape(lead)
    f = np.array([c.f for c in counts], dtype=np.float64).reshape(lead)
    return MaskScores(
        j=_ratio_or_one(inter, pred_area + gt_area - inter),
        f=f,
        dice=_ratio_or_one(2 * inter, pred_area + gt_area),
        gt_present=gt_area > 0,
        pred_present=pred_area > 0,
    )


def boundary_f_measure(
    pred: np.ndarray, gt: np.ndarray, threshold: float = DAVIS_BOUNDARY_THRESHOLD
) -> np.ndarray:
    """DAVIS boundary F of binary masks shaped (..., H, W) -> (...)."""
    return score_masks(pred, gt, threshold).f


def frame_challenge_iou(j: np.ndarray, gt_present: np.ndarray) -> np.ndarray:
    """Per frame (rows of (T, K) arrays): mean J over objects present in the ground truth.

    NaN for a frame without any ground-truth object; such frames do not count.
    """
    j = np.asarray(j, dtype=np.float64)
    gt_present = np.asarray(gt_present, dtype=bool)
    if j.shape != gt_present.shape or j.ndim != 2:
        raise ValueError(f"expected two (T, K) arrays, got {j.shape} and {gt_present.shape}")
    n_present = gt_present.sum(axis=1)
    sums = np.where(gt_present, j, 0.0).sum(axis=1)
    out = np.full(j.shape[0], np.nan)
    has = n_present > 0
    out[has] = sums[has] / n_present[has]
    return out


def challenge_iou(j: np.ndarray, gt_present: np.ndarray) -> float:
    """EndoVis Challenge IoU: per-frame mean over GT-present objects, then the mean over frames.

    NaN when no frame has a ground-truth object.
    """
    per_frame = frame_challenge_iou(j, gt_present)
    kept = per_frame[~np.isnan(per_frame)]
    return float(kept.mean()) if kept.size else float("nan")
