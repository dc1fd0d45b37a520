"""How alike two frames' feature maps [C, h, w] are, as one number (float32 arithmetic).

- `channel`: cosine between the two C-vectors at each grid position, averaged over positions.
  Compares what is where. SurgSAM2's pruning sums instead of averaging, which orders frames
  the same way.
- `width_axis`: cosine along the last axis (each row of each channel as a w-vector), averaged.
  This is what ReSurgSAM2's released code computes on [B, C, h, w] maps (it sums; same order).
  It treats one channel's values along a row as a vector, mixing spatial positions and never
  comparing channels with each other, so we offer it only to reproduce that code.
- `pooled`: cosine between the global-average-pooled C-vectors. Blind to where things are.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

SimilarityKind = Literal["channel", "width_axis", "pooled"]


def similarity(a: torch.Tensor, b: torch.Tensor, kind: SimilarityKind = "channel") -> float:
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(
            f"similarity needs two [C, h, w] maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = a.float(), b.float()
    if kind == "channel":
        return F.cosine_similarity(a.flatten(1), b.flatten(1), dim=0).mean().item()
    if kind == "width_axis":
        return F.cosine_similarity(a, b, dim=-1).mean().item()
    if kind == "pooled":
        return F.cosine_similarity(a.mean(dim=(1, 2)), b.mean(dim=(1, 2)), dim=0).item()
    raise ValueError(f"unknown similarity {kind!r}; use channel, width_axis or pooled")


def least_similar(
    candidates: list[torch.Tensor], reference: torch.Tensor, kind: SimilarityKind
) -> int:
    """Index of the candidate least similar to `reference` (the first one on ties)."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    scores = [similarity(c, reference, kind) for c in candidates]
    return min(range(len(scores)), key=scores.__getitem__)
