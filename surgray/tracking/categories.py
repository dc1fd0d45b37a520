"""SAM2S semantic head at inference: the category of every object with an output on a frame.

The head's class token attends to the object's memories (the spatial memories its policy
selects for the frame, in selection order, as [M * h * w, mem_dim] tokens without position
encodings), then to the frame's stride-16 features with their sine encoding; the result is
compared with the CLIP embeddings of `ReferringConfig.categories`
(`ReSurgSAM2.category_embeddings`). An object without memories yet (a text object still
searching, or its first prompted frame before any memory) is classified from the frame alone.
The most likely name and its probability go to `ObjectState.category` /
`category_probability`, and from there into the results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from surgray.model.sam2.frame_types import FrameFeatures
from surgray.tracking.state import ObjectState, VideoState

if TYPE_CHECKING:
    from surgray.model.referring.resurgsam2 import ReSurgSAM2


def memory_tokens(
    obj: ObjectState, frame_idx: int, reverse: bool, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    """[1, M, mem_dim] spatial memory tokens the object's policy selects for the frame."""
    if not obj.started:
        return None
    selection = obj.policy.select(frame_idx, reverse)
    maps = [m.entry.features for m in selection.spatial if m.entry.features.numel() > 0]
    if not maps:
        return None
    tokens = [f.to(device=device, dtype=dtype).flatten(1).transpose(0, 1) for f in maps]
    return torch.cat(tokens)[None]


def classify_objects(
    model: ReSurgSAM2,
    state: VideoState,
    frame_idx: int,
    features: FrameFeatures,
    reverse: bool,
) -> None:
    """Set the category of each object whose output is on `frame_idx`."""
    objects = [
        obj
        for obj in state.objects.values()
        if obj.last is not None and obj.last.frame_idx == frame_idx
    ]
    if not objects:
        return
    head = model.semantic_head
    names = model.referring_cfg.categories
    embed = features.image_embed
    categories = model.category_embeddings().to(device=embed.device)
    for obj in objects:
        memory = memory_tokens(obj, frame_idx, reverse, embed.dtype, embed.device)
        embedding = head(embed, memory, current_pos=features.image_pos)
        prediction = head.classify(embedding.float(), categories.float())
        obj.category = names[int(prediction.index[0])]
        obj.category_probability = float(prediction.probability[0])
