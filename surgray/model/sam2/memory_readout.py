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

`MemoryReadout` is this part of the network: memory attention, the memory grid's position
encoding and the learned embeddings it adds (`maskmem_tpos_enc`, `long_term_tpos_enc`,
`no_mem_embed`, `no_mem_pos_enc`), plus the pointer head for pointer tokens, and nothing else
of the model (`SAM2Model.memory_readout` hands one out over the model's parameters).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from surgray.model.sam2.config import ModelConfig
from surgray.model.sam2.memory_attention import MemoryAttention
from surgray.model.sam2.memory_types import MemorySelection, SpatialMemory
from surgray.model.sam2.object_pointer import ObjectPointerHead


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


@dataclass(frozen=True)
class MemoryReadout:
    """Memories + a frame's features -> memory-conditioned features (module docstring)."""

    attention: MemoryAttention
    grid_position: nn.Module  # the memory encoder's sine encoding of a memory map
    maskmem_tpos_enc: torch.Tensor  # [num_maskmem, 1, 1, mem_dim]: when a memory was made
    long_term_tpos_enc: torch.Tensor | None  # [N, 1, 1, mem_dim] SAM2S long-term slots
    no_mem_embed: torch.Tensor  # [1, 1, C]
    no_mem_pos_enc: torch.Tensor  # [1, 1, C]
    pointer: ObjectPointerHead
    cfg: ModelConfig

    def condition(
        self,
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
        if self.cfg.memory.num_maskmem == 0:  # image-only SAM: memory is switched off
            return image_embed
        groups = group_objects(selections)
        out = None if len(groups) == 1 else torch.empty_like(image_embed)
        for key, rows in groups.items():
            index = torch.tensor(rows, device=image_embed.device)
            whole = len(rows) == image_embed.shape[0]
            feats = image_embed if whole else image_embed.index_select(0, index)
            pos = image_pos if whole else image_pos.index_select(0, index)
            if key[0] == "none":
                fused = self._without_memory(feats, pos)
            else:
                memory, memory_pos, num_ptr = self._memory_for_group(
                    [selections[i] for i in rows], num_frames, feats.dtype, feats.device
                )
                fused = self._attend(feats, pos, memory, memory_pos, num_ptr)
            if out is None:  # one group holds every object, in order: no scatter needed
                return fused
            out.index_copy_(0, index, fused.to(out.dtype))
        return out

    def grid_encoding(
        self, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """Sine position encoding of a memory map, flattened row-major: [h*w, mem_dim]."""
        probe = torch.empty(1, self.cfg.mem_dim, height, width, device=device, dtype=dtype)
        grid = self.grid_position(probe)[0]
        return grid.flatten(1).transpose(0, 1)

    def _temporal_embedding(self, memory: SpatialMemory) -> torch.Tensor:
        """[mem_dim] learned embedding of when a spatial memory was made."""
        if memory.long_term_slot is not None and self.long_term_tpos_enc is not None:
            table = self.long_term_tpos_enc
            if not 0 <= memory.long_term_slot < table.shape[0]:
                raise ValueError(
                    f"long_term_slot {memory.long_term_slot} outside the model's "
                    f"{table.shape[0]} slots"
                )
            return table[memory.long_term_slot].reshape(-1)
        table = self.maskmem_tpos_enc
        if not 0 <= memory.temporal_index < table.shape[0]:
            raise ValueError(
                f"temporal_index {memory.temporal_index} outside maskmem_tpos_enc's "
                f"{table.shape[0]} rows"
            )
        return table[memory.temporal_index].reshape(-1)

    def _spatial_tokens(
        self, selection: MemorySelection, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[S*h*w, mem_dim] tokens and positions of one object's spatial memories."""
        mem_dim = self.cfg.mem_dim
        tokens, positions = [], []
        for memory in selection.spatial:
            features = memory.entry.features.to(device=device, dtype=dtype)
            if features.ndim != 3 or features.shape[0] != mem_dim:
                raise ValueError(
                    f"memory of frame {memory.entry.frame_idx} has shape "
                    f"{list(features.shape)}; expected [{mem_dim}, h, w]"
                )
            grid = self.grid_encoding(features.shape[1], features.shape[2], device, dtype)
            tokens.append(features.flatten(1).transpose(0, 1))
            positions.append(grid + self._temporal_embedding(memory).to(dtype))
        if not tokens:
            empty = torch.empty(0, mem_dim, device=device, dtype=dtype)
            return empty, empty
        return torch.cat(tokens), torch.cat(positions)

    def _memory_for_group(
        self,
        selections: list[MemorySelection],
        num_frames: int | None,
        dtype: torch.dtype,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Memory tokens, positions ([G, M, mem_dim]) and the pointer-token count of a group."""
        spatial = [self._spatial_tokens(s, dtype, device) for s in selections]
        memory = torch.stack([t for t, _ in spatial])
        memory_pos = torch.stack([p for _, p in spatial])
        num_pointers = len(selections[0].pointers)
        if num_pointers == 0 or not self.cfg.object_pointer.use_obj_ptrs_in_encoder:
            return memory, memory_pos, 0
        pointers = torch.stack(
            [torch.stack([p.entry.obj_ptr for p in s.pointers]) for s in selections]
        ).to(device=device, dtype=dtype)
        offsets = torch.tensor(
            [[p.temporal_offset for p in s.pointers] for s in selections], device=device
        )
        ptr_tokens, ptr_pos = self.pointer.memory_tokens(pointers, offsets, num_frames)
        memory = torch.cat([memory, ptr_tokens], dim=1)
        memory_pos = torch.cat([memory_pos, ptr_pos], dim=1)
        return memory, memory_pos, ptr_tokens.shape[1]

    def _without_memory(self, image_embed: torch.Tensor, image_pos: torch.Tensor) -> torch.Tensor:
        """Features of objects on their first frame: no memory to attend to."""
        if self.cfg.memory.directly_add_no_mem_embed:
            return image_embed + self.no_mem_embed.reshape(1, -1, 1, 1)
        batch = image_embed.shape[0]
        dummy = self.no_mem_embed.expand(batch, 1, -1)
        dummy_pos = self.no_mem_pos_enc.expand(batch, 1, -1)
        return self._attend(image_embed, image_pos, dummy, dummy_pos, 0)

    def _attend(
        self,
        image_embed: torch.Tensor,
        image_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_pointer_tokens: int,
    ) -> torch.Tensor:
        batch, channels, h, w = image_embed.shape
        curr = image_embed.flatten(2).transpose(1, 2)
        curr_pos = image_pos.flatten(2).transpose(1, 2)
        out = self.attention(
            curr=curr,
            curr_pos=curr_pos,
            memory=memory,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_pointer_tokens,
            feat_hw=(h, w),
        )
        return out.transpose(1, 2).reshape(batch, channels, h, w)
