"""What a tracked object remembers, and what a memory policy hands to the model.

These types are the contract between the model (which computes memories and reads them back)
and the memory policies (which decide which memories exist): policies never touch the network,
and the network never decides which frames to keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class MemoryEntry:
    """What one processed frame leaves behind for one object."""

    frame_idx: int
    features: torch.Tensor  # [C_mem, h, w] memory-encoder output, in the storage dtype
    obj_ptr: torch.Tensor  # [C] object pointer (SAM output token after projection)
    is_conditioning: bool  # prompted (or CIFS-selected) frame
    predicted_iou: float  # predicted IoU of the mask that was kept
    object_score: float  # object-score logit (> 0: object present)
    # Image-encoder features of the frame ([C, h, w]); only kept by policies that compare
    # frames by appearance (SAM2S DiveMem). None elsewhere, to keep memory small.
    image_features: torch.Tensor | None = None

    def nbytes(self) -> int:
        tensors = (self.features, self.obj_ptr, self.image_features)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass(frozen=True)
class SpatialMemory:
    """A memory frame to attend to, with the temporal encoding it gets.

    `temporal_index` is the row of the model's `maskmem_tpos_enc` table (see
    `temporal_index_for`). `long_term_slot`, when set and the model has learned long-term
    embeddings (SAM2S DiveMem), selects one of those instead.
    """

    entry: MemoryEntry
    temporal_index: int
    long_term_slot: int | None = None


@dataclass(frozen=True)
class PointerMemory:
    """An object pointer to attend to. `temporal_offset` is the signed distance in frames from
    the current frame, positive for frames already passed in the tracking direction."""

    entry: MemoryEntry
    temporal_offset: int


@dataclass
class MemorySelection:
    """The memories a policy selects for one object at one frame."""

    spatial: list[SpatialMemory]
    pointers: list[PointerMemory]

    @property
    def is_empty(self) -> bool:
        return not self.spatial and not self.pointers


def temporal_index_for(steps_back: int, num_maskmem: int) -> int:
    """Row of `maskmem_tpos_enc` for a memory `steps_back` strided steps before the current frame.

    `steps_back = 0` means a conditioning (or long-term) frame, which SAM2 encodes with the last
    row; the previous frame (1 step back) gets row 0, 2 steps back row 1, and so on up to
    `num_maskmem - 1` steps back, which gets row `num_maskmem - 2`.
    """
    if not 0 <= steps_back < num_maskmem:
        raise ValueError(f"steps_back must be in [0, {num_maskmem - 1}], got {steps_back}")
    return num_maskmem - 1 if steps_back == 0 else steps_back - 1
