"""Object pointers: one vector per object and frame that summarises "what the object is".

A pointer is the SAM decoder's output token behind the kept mask, passed through
`obj_ptr_proj`. When the decoder says the object is absent, the pointer is replaced by (or
mixed with) the learned `no_obj_ptr`. Later frames attend to past pointers as extra memory
tokens, each tagged with a 1-D sine encoding of how far in time it lies (SAM2.1 signs the
distance and projects the encoding with `obj_ptr_tpos_proj`; SAM2.0 adds none).

`ObjectPointerHead` is this part of the network: it holds the pointer's parameters
(`obj_ptr_proj`, `no_obj_ptr`, `obj_ptr_tpos_proj`) and settings, and nothing else of the
model. The parameters stay registered on `SAM2Model` under the reference's top-level names
(the checkpoint key layout, the training configs' name prefixes and the optimizer's parameter
order are contracts), so `SAM2Model.pointer_head` hands out a fresh head over them per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from surgray.model.sam2.config import ObjectPointerConfig
from surgray.model.sam2.position_encoding import sine_1d


def presence_weight(object_score_logits: torch.Tensor, soft: bool) -> torch.Tensor:
    """[B, 1] weight of "object present": hard (score > 0) or, with `soft`, its sigmoid."""
    if soft:
        return object_score_logits.sigmoid()
    return (object_score_logits > 0).to(object_score_logits.dtype)


def mix_in_no_object(
    pointer: torch.Tensor,
    presence: torch.Tensor,
    no_obj_ptr: torch.Tensor,
    fixed_no_obj_ptr: bool,
) -> torch.Tensor:
    """Blend the learned "no object" pointer in where the object is absent.

    With `fixed_no_obj_ptr` an absent object's pointer becomes exactly `no_obj_ptr`;
    otherwise `no_obj_ptr` is added on top of the decoder's pointer.
    """
    if fixed_no_obj_ptr:
        pointer = presence * pointer
    return pointer + (1 - presence) * no_obj_ptr


def pointer_from_token(
    token: torch.Tensor,
    proj: nn.Module,
    object_score_logits: torch.Tensor,
    no_obj_ptr: torch.Tensor | None,
    cfg: ObjectPointerConfig,
) -> torch.Tensor:
    """[B, C] decoder token -> [B, C] object pointer, with occlusion handling."""
    pointer = proj(token)
    if no_obj_ptr is None:  # the model predicts no object scores
        return pointer
    presence = presence_weight(object_score_logits, cfg.soft_no_obj_ptr)
    return mix_in_no_object(pointer, presence, no_obj_ptr, cfg.fixed_no_obj_ptr)


def pointer_time_scale(cfg: ObjectPointerConfig, num_frames: int | None) -> int:
    """Divisor that maps frame distances into [-1, 1] for the sine encoding.

    The reference uses `min(num_frames, max_obj_ptrs_in_encoder) - 1`. A streaming tracker
    does not know the video length (`num_frames=None`); it then uses the configured maximum,
    which equals the reference on any video at least `max_obj_ptrs_in_encoder` frames long.
    """
    limit = cfg.max_obj_ptrs_in_encoder
    if num_frames is not None:
        limit = min(num_frames, limit)
    return max(limit - 1, 1)


def pointer_memory_tokens(
    pointers: torch.Tensor,
    offsets: torch.Tensor,
    cfg: ObjectPointerConfig,
    tpos_proj: nn.Module,
    mem_dim: int,
    num_frames: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pointers as memory tokens for memory attention.

    pointers: [B, P, C]; offsets: [B, P] signed frame distances (positive = already passed
    in the tracking direction). Returns tokens and their position encodings, both
    [B, P * C // mem_dim, mem_dim]: a pointer wider than the memory is split into
    C // mem_dim consecutive tokens that share its temporal encoding.
    """
    batch, count, width = pointers.shape
    if width % mem_dim:
        raise ValueError(f"pointer width {width} is not a multiple of the memory width {mem_dim}")
    if cfg.add_tpos_enc_to_obj_ptrs:
        distance = offsets if cfg.use_signed_tpos_enc_to_obj_ptrs else offsets.abs()
        scaled = distance.flatten().float() / pointer_time_scale(cfg, num_frames)
        enc_dim = width if cfg.proj_tpos_enc_in_obj_ptrs else mem_dim
        pos = sine_1d(scaled.to(pointers.device), enc_dim).to(pointers.dtype)
        pos = tpos_proj(pos).reshape(batch, count, mem_dim)
    else:
        pos = pointers.new_zeros(batch, count, mem_dim)
    split = width // mem_dim
    tokens = pointers.reshape(batch, count * split, mem_dim)
    pos = pos.repeat_interleave(split, dim=1)
    return tokens, pos


@dataclass(frozen=True)
class ObjectPointerHead:
    """The object-pointer part of SAM2: decoder token -> pointer, pointers -> memory tokens."""

    proj: nn.Module  # `obj_ptr_proj`: decoder token -> pointer
    no_obj_ptr: torch.Tensor | None  # learned pointer of an absent object (None: no scores)
    tpos_proj: nn.Module  # `obj_ptr_tpos_proj`: temporal encoding -> memory width
    cfg: ObjectPointerConfig
    mem_dim: int

    def from_token(self, token: torch.Tensor, object_score_logits: torch.Tensor) -> torch.Tensor:
        """[B, C] decoder token -> [B, C] object pointer, with occlusion handling."""
        return pointer_from_token(token, self.proj, object_score_logits, self.no_obj_ptr, self.cfg)

    def with_presence(self, pointer: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
        """`mix_in_no_object` with this head's `no_obj_ptr` (unchanged without one)."""
        if self.no_obj_ptr is None:
            return pointer
        return mix_in_no_object(pointer, presence, self.no_obj_ptr, self.cfg.fixed_no_obj_ptr)

    def memory_tokens(
        self, pointers: torch.Tensor, offsets: torch.Tensor, num_frames: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`pointer_memory_tokens` with this head's projection and widths."""
        return pointer_memory_tokens(
            pointers, offsets, self.cfg, self.tpos_proj, self.mem_dim, num_frames
        )
