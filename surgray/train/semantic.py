"""SAM2S temporal semantic learning (TSL) during training: which category is each object?

On every memory-conditioned frame of a clip (tracked frames of SAM2, hybrid and referring
clips; not the initial conditioning frames, which have no memory yet), the semantic head reads,
for each object, the spatial memories its `ClipMemory` selection holds for the frame and the
frame's own stride-16 features with their position encoding: the same inputs it gets at
inference (`surgray.tracking.categories`), so the trained head is used as it was trained.
The memories keep their graph, as the mask losses do (backpropagation through the clip).

The embedding goes into the frame's `FramePrediction.semantic_embedding`; `SAM2Loss` adds the
InfoNCE of it against the category-name embeddings (`ReSurgSAM2.category_embeddings`) with
weight `LossConfig.tsl`, skipping objects whose category is not among
`ReferringConfig.categories` (tissue): `TrainingClip.category_ids`.

The category embeddings are fixed targets, as SAM2S's frozen CLIP gives them: with a text tower
trained inside the model, TSL's gradient does not reach it unless `LossConfig.tsl_trains_text`.
Measured on the referring demo recipe with gradients let through: the mean cosine similarity
between the 9 instrument names went from 0.54 to 0.997 in 40 steps and TSL stayed at log 9
per frame (chance): collapsing the names is InfoNCE's cheapest way down at tau = 100.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from surgray.model.sam2.frame_types import FrameFeatures
from surgray.model.sam2.memory_types import MemorySelection
from surgray.train.losses import LossConfig

if TYPE_CHECKING:
    from surgray.model.sam2.network import SAM2Model


def tsl_enabled(model: SAM2Model, loss: LossConfig) -> bool:
    """Whether clips of this model get the TSL term: a semantic head, category names and a
    positive weight."""
    head = getattr(model, "semantic_head", None)
    referring = getattr(model, "referring_cfg", None)
    return head is not None and loss.tsl > 0 and bool(referring and referring.categories)


def memory_tokens(selection: MemorySelection | None) -> torch.Tensor | None:
    """[M * h * w, mem_dim] tokens of the spatial memories a selection holds (None: none)."""
    if selection is None:
        return None
    maps = [m.entry.features for m in selection.spatial if m.entry.features.numel() > 0]
    if not maps:
        return None
    return torch.cat([f.flatten(1).transpose(0, 1) for f in maps])


class SemanticSupervision:
    """Computes one [N, text_dim] embedding per memory-conditioned frame of a clip."""

    def __init__(self, model: SAM2Model) -> None:
        self.head = model.semantic_head
        self.embeddings: dict[int, torch.Tensor] = {}  # clip position -> [N, text_dim]

    def observe(
        self, t: int, features: FrameFeatures, selections: Sequence[MemorySelection | None]
    ) -> None:
        """Embed the N objects of clip position t from their memories and the frame."""
        embed, pos = features.image_embed[:1], features.image_pos[:1]
        # Memories are kept in the storage dtype (bf16); the head computes in the frame's.
        tokens = [memory_tokens(s) for s in selections]
        tokens = [None if x is None else x.to(embed.dtype) for x in tokens]
        shapes = {None if x is None else tuple(x.shape) for x in tokens}
        if len(shapes) == 1:  # the usual case: every object holds the same memory frames
            memory = None if tokens[0] is None else torch.stack(tokens)
            count = len(tokens)
            self.embeddings[t] = self.head(
                embed.expand(count, -1, -1, -1), memory, current_pos=pos.expand(count, -1, -1, -1)
            )
            return
        rows = [self.head(embed, None if x is None else x[None], current_pos=pos) for x in tokens]
        self.embeddings[t] = torch.cat(rows)

    def embedding(self, t: int) -> torch.Tensor | None:
        return self.embeddings.get(t)

    @property
    def active(self) -> bool:
        return bool(self.embeddings)


def category_embeddings(model: SAM2Model, loss: LossConfig) -> torch.Tensor:
    """[K, text_dim] embeddings of the model's category names: the TSL targets. Detached
    unless `loss.tsl_trains_text` (then a trainable text tower learns from TSL too)."""
    embeddings = model.category_embeddings()
    return embeddings if loss.tsl_trains_text else embeddings.detach()
