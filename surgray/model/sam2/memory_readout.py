"""Memory readout: condition a frame's features on what each object remembers.

A memory policy (`surgray.tracking.memory`) hands the model one `MemorySelection` per
object. Each spatial memory becomes h*w tokens (memory-encoder features, with the sine
position encoding of their grid plus a learned temporal embedding: the row of
`maskmem_tpos_enc` the policy chose, or a SAM2S long-term slot); each object pointer becomes
C // mem_dim tokens (see `object_pointer`). Tokens keep the order of the selection, which for
SAM2's `recent` policy is the reference's order (conditioning frames, then older to newer
frames, then pointers), so results match the reference exactly.

Objects may remember different numbers of frames. Rather than padding (memory attention's
rotary encoding assumes the spatial tokens form whole frames, and padding would need an
attention mask), objects are grouped by (spatial memories, pointers) and each group runs one
batched memory attention; on a steady video every object has the same counts, so this is one
pass. Objects without memory (their first, prompted frame) get the learned no-memory
embedding instead, as in the reference.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import torch

from surgray.model.sam2.memory_types import MemorySelection, SpatialMemory
from surgray.model.sam2.object_pointer import pointer_memory_tokens

if TYPE_CHECKING:
    from surgray.model.sam2.network import SAM2Model


def _has_memory(selection: MemorySelection | None) -> bool:
    return selection is not None and not selection.is_empty


def group_objects(selections: list[MemorySelection | None]) -> dict[tuple, list[int]]:
    """Object indices grouped by memory shape; key ("none",) for objects without memory."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, selection in enumerate(selections):
        if not _has_memory(selection):
            groups[("none",)].append(i)
        else:
            groups[("memory", len(selection.spatial), len(selection.pointers))].append(i)
    return dict(groups)


def _temporal_embedding(model: SAM2Model, memory: SpatialMemory) -> torch.Tensor:
    """[mem_dim] learned embedding of when a spatial memory was made."""
    if memory.long_term_slot is not None and model.long_term_tpos_enc is not None:
        table = model.long_term_tpos_enc
        if not 0 <= memory.long_term_slot < table.shape[0]:
            raise ValueError(
                f"long_term_slot {memory.long_term_slot} outside the model's {table.shape[0]} slots"
            )
        return table[memory.long_term_slot].reshape(-1)
    table = model.maskmem_tpos_enc
    if not 0 <= memory.temporal_index < table.shape[0]:
        raise ValueError(
            f"temporal_index {memory.temporal_index} outside maskmem_tpos_enc's {table.shape[0]} rows"
        )
    return table[memory.temporal_index].reshape(-1)


def _spatial_tokens(
    model: SAM2Model, selection: MemorySelection, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """[S*h*w, mem_dim] tokens and positions of one object's spatial memories."""
    tokens, positions = [], []
    for memory in selection.spatial:
        features = memory.entry.features.to(device=device, dtype=dtype)
        if features.ndim != 3 or features.shape[0] != model.mem_dim:
            raise ValueError(
                f"memory of frame {memory.entry.frame_idx} has shape {list(features.shape)}; "
                f"expected [{model.mem_dim}, h, w]"
            )
        grid = model.memory_grid_encoding(features.shape[1], features.shape[2], device, dtype)
        tokens.append(features.flatten(1).transpose(0, 1))
        positions.append(grid + _temporal_embedding(model, memory).to(dtype))
    if not tokens:
        empty = torch.empty(0, model.mem_dim, device=device, dtype=dtype)
        return empty, empty
    return torch.cat(tokens), torch.cat(positions)


def _memory_for_group(
    model: SAM2Model,
    selections: list[MemorySelection],
    num_frames: int | None,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Memory tokens, positions ([G, M, mem_dim]) and the pointer-token count of a group."""
    spatial = [_spatial_tokens(model, s, dtype, device) for s in selections]
    memory = torch.stack([t for t, _ in spatial])
    memory_pos = torch.stack([p for _, p in spatial])
    num_pointers = len(selections[0].pointers)
    if num_pointers == 0 or not model.cfg.object_pointer.use_obj_ptrs_in_encoder:
        return memory, memory_pos, 0
    pointers = torch.stack(
        [torch.stack([p.entry.obj_ptr for p in s.pointers]) for s in selections]
    ).to(device=device, dtype=dtype)
    offsets = torch.tensor(
        [[p.temporal_offset for p in s.pointers] for s in selections], device=device
    )
    ptr_tokens, ptr_pos = pointer_memory_tokens(
        pointers,
        offsets,
        model.cfg.object_pointer,
        model.obj_ptr_tpos_proj,
        model.mem_dim,
        num_frames,
    )
    memory = torch.cat([memory, ptr_tokens], dim=1)
    memory_pos = torch.cat([memory_pos, ptr_pos], dim=1)
    return memory, memory_pos, ptr_tokens.shape[1]


def _without_memory(
    model: SAM2Model, image_embed: torch.Tensor, image_pos: torch.Tensor
) -> torch.Tensor:
    """Features of objects on their first frame: no memory to attend to."""
    if model.cfg.memory.directly_add_no_mem_embed:
        return image_embed + model.no_mem_embed.reshape(1, -1, 1, 1)
    batch = image_embed.shape[0]
    dummy = model.no_mem_embed.expand(batch, 1, -1)
    dummy_pos = model.no_mem_pos_enc.expand(batch, 1, -1)
    return _attend(model, image_embed, image_pos, dummy, dummy_pos, 0)


def _attend(
    model: SAM2Model,
    image_embed: torch.Tensor,
    image_pos: torch.Tensor,
    memory: torch.Tensor,
    memory_pos: torch.Tensor,
    num_pointer_tokens: int,
) -> torch.Tensor:
    batch, channels, h, w = image_embed.shape
    curr = image_embed.flatten(2).transpose(1, 2)
    curr_pos = image_pos.flatten(2).transpose(1, 2)
    out = model.memory_attention(
        curr=curr,
        curr_pos=curr_pos,
        memory=memory,
        memory_pos=memory_pos,
        num_obj_ptr_tokens=num_pointer_tokens,
        feat_hw=(h, w),
    )
    return out.transpose(1, 2).reshape(batch, channels, h, w)


def condition_on_memory(
    model: SAM2Model,
    image_embed: torch.Tensor,
    image_pos: torch.Tensor,
    selections: list[MemorySelection | None],
    num_frames: int | None = None,
) -> torch.Tensor:
    """[B, C, h, w] features of B objects, each fused with its own memories.

    image_embed / image_pos: [B, C, h, w] (one row per object, views are fine).
    selections[i]: the memories of object i, or None on its first (memory-less) frame.
    """
    if len(selections) != image_embed.shape[0]:
        raise ValueError(
            f"{len(selections)} memory selections for {image_embed.shape[0]} feature rows"
        )
    if model.cfg.memory.num_maskmem == 0:  # image-only SAM: memory is switched off
        return image_embed
    groups = group_objects(selections)
    out = None if len(groups) == 1 else torch.empty_like(image_embed)
    for key, rows in groups.items():
        index = torch.tensor(rows, device=image_embed.device)
        whole = len(rows) == image_embed.shape[0]
        feats = image_embed if whole else image_embed.index_select(0, index)
        pos = image_pos if whole else image_pos.index_select(0, index)
        if key[0] == "none":
            fused = _without_memory(model, feats, pos)
        else:
            memory, memory_pos, num_ptr = _memory_for_group(
                model, [selections[i] for i in rows], num_frames, feats.dtype, feats.device
            )
            fused = _attend(model, feats, pos, memory, memory_pos, num_ptr)
        if out is None:  # one group holds every object, in order: no scatter needed
            return fused
        out.index_copy_(0, index, fused.to(out.dtype))
    return out
