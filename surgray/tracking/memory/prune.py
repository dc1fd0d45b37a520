"""SurgSAM2 efficient frame pruning (EFP), as in its SAM2.1 release (inference only).

Start from SAM2's selection (conditioning frames, then the recent frames oldest first). While
the spatial list is longer than `max_spatial` (5 = num_maskmem 7 - num_frame_to_prune 2),
drop the middle entries most similar to the newest memory (the last in the list, normally
frame t-1): similarity is the per-token cosine over channels of the memory-encoder features,
averaged over tokens (the release sums; the order is the same). The first entry (the first
conditioning frame) and the last are never dropped; object pointers are not pruned.

Differences from the release, deliberate: similarities are computed in float32 (the release
compares the bf16-stored features in bf16), and equal similarities drop the older entry
first (the release's `torch.sort` does not define the order of ties).
"""

from __future__ import annotations

from surgray.model.sam2.memory_types import MemorySelection, SpatialMemory
from surgray.tracking.memory.base import register_policy
from surgray.tracking.memory.config import PrunePolicyConfig
from surgray.tracking.memory.recent import RecentPolicy
from surgray.tracking.memory.similarity import similarity


def prune_most_similar(spatial: list[SpatialMemory], max_spatial: int) -> list[SpatialMemory]:
    """`spatial` without its len - max_spatial middle entries most similar to the last one."""
    excess = len(spatial) - max_spatial
    if excess <= 0:
        return list(spatial)
    newest = spatial[-1].entry.features
    middle = range(1, len(spatial) - 1)
    scores = {i: similarity(spatial[i].entry.features, newest, "channel") for i in middle}
    most_similar_first = sorted(middle, key=lambda i: -scores[i])  # stable: older first on ties
    dropped = set(most_similar_first[:excess])
    return [m for i, m in enumerate(spatial) if i not in dropped]


@register_policy("prune")
class PrunePolicy(RecentPolicy):
    """SAM2's selection, then the spatial memories capped by dropping redundant ones."""

    def __init__(self, cfg: PrunePolicyConfig | None = None, num_frames: int | None = None) -> None:
        super().__init__(cfg if cfg is not None else PrunePolicyConfig(), num_frames=num_frames)

    def select(self, frame_idx: int, reverse: bool = False) -> MemorySelection:
        selection = super().select(frame_idx, reverse)
        selection.spatial = prune_most_similar(selection.spatial, self.cfg.max_spatial)
        return selection
