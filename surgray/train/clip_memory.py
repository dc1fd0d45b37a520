"""Memory of the objects of one training clip, as SAM2 training reads it.

Per object, a `recent` policy (SAM2's selection) holds the conditioning frames and the tracked
frames; DiveMem hybrid clips add long-term frames, which every later frame attends to with the
learned long-term temporal embeddings (`SpatialMemory.long_term_slot`, in time order).

Differences from inference, all following SAM2's training code (`SAM2Base` in training mode):
- frame indices are positions in the clip (the sampling stride is invisible to the model);
- pointers of every selected conditioning frame are used, also those ahead in time (the
  reference's `only_obj_ptrs_in_the_past_for_eval` applies only at evaluation);
- memories keep their autograd graph: the loss of a late frame trains the modules that wrote
  the memories it read (backpropagation through time over the clip).
"""

from __future__ import annotations

from surgray.model.sam2.config import ModelConfig
from surgray.model.sam2.memory_types import (
    MemoryEntry,
    MemorySelection,
    SpatialMemory,
    temporal_index_for,
)
from surgray.tracking.memory.config import RecentPolicyConfig
from surgray.tracking.memory.recent import RecentPolicy


def training_policy_config(cfg: ModelConfig) -> RecentPolicyConfig:
    """SAM2's memory selection with the model's own memory sizes, in training mode."""
    return RecentPolicyConfig(
        num_maskmem=max(cfg.memory.num_maskmem, 1),
        use_obj_ptrs=cfg.object_pointer.use_obj_ptrs_in_encoder,
        max_obj_ptrs=cfg.object_pointer.max_obj_ptrs_in_encoder,
        max_cond_frames_in_attn=cfg.memory.max_cond_frames_in_attn,
        only_past_pointers=False,
    )


class ClipMemory:
    """Memories of N objects over a clip of `num_frames` frames."""

    def __init__(self, cfg: ModelConfig, num_objects: int, num_frames: int) -> None:
        policy_cfg = training_policy_config(cfg)
        self.num_maskmem = policy_cfg.num_maskmem
        self.policies = [
            RecentPolicy(policy_cfg, num_frames=num_frames) for _ in range(num_objects)
        ]
        self.long_term: list[list[MemoryEntry]] = [[] for _ in range(num_objects)]

    @property
    def num_objects(self) -> int:
        return len(self.policies)

    def select(self, frame_idx: int) -> list[MemorySelection]:
        """Each object's memories for `frame_idx`: SAM2's selection plus long-term frames."""
        row = temporal_index_for(0, self.num_maskmem)
        selections = []
        for policy, long_term in zip(self.policies, self.long_term):
            selection = policy.select(frame_idx)
            for slot, entry in enumerate(long_term):
                selection.spatial.append(SpatialMemory(entry, row, long_term_slot=slot))
            selections.append(selection)
        return selections

    def add(self, entries: list[MemoryEntry], long_term: bool = False) -> None:
        """Store one frame's entries (one per object). Long-term entries that are not
        conditioning frames go to the long-term list instead of the recent store."""
        if len(entries) != self.num_objects:
            raise ValueError(f"{len(entries)} memory entries for {self.num_objects} objects")
        for i, entry in enumerate(entries):
            if long_term and not entry.is_conditioning:
                self.long_term[i].append(entry)
            else:
                self.policies[i].add(entry)
