"""Memory attention: conditions the current frame's features on the memory bank.

Each layer is pre-norm: self-attention over the current frame (with 2-D RoPE), cross-attention
from the frame to the memory tokens (spatial memories of several frames, then object-pointer
tokens), and a feed-forward block. Tensors are batch-first throughout; parameter names match
`sam2.modeling.memory_attention.MemoryAttention` so official checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from surgray.model.sam2.config import (
    MemoryAttentionConfig,
    MemoryAttentionLayerConfig,
    RoPEAttentionConfig,
)
from surgray.model.sam2.layers import activation_fn
from surgray.model.sam2.rope import AxialRotaryEmbedding, grid_size


class RoPEAttention(nn.Module):
    """Multi-head attention whose queries and keys are rotated by their grid position.

    Keys may hold several memory maps of the query grid's size (`rope_k_repeat`), followed by
    `num_k_exclude_rope` tokens without a grid position (object pointers), which stay unrotated.
    A single query row may serve B key/value rows (objects of one frame, see MemoryAttention).
    """

    def __init__(self, cfg: RoPEAttentionConfig) -> None:
        super().__init__()
        self.embedding_dim = cfg.embedding_dim
        self.kv_in_dim = cfg.kv_in_dim if cfg.kv_in_dim is not None else cfg.embedding_dim
        self.internal_dim = cfg.embedding_dim // cfg.downsample_rate
        self.num_heads = cfg.num_heads
        if self.internal_dim % self.num_heads != 0:
            raise ValueError(
                f"num_heads {self.num_heads} must divide the attention width {self.internal_dim}"
            )
        self.q_proj = nn.Linear(self.embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, self.embedding_dim)
        self.dropout_p = cfg.dropout
        self.rope_k_repeat = cfg.rope_k_repeat
        self.configured_wh = cfg.feat_sizes
        self.rope = AxialRotaryEmbedding(self.internal_dim // self.num_heads, cfg.rope_theta)
        # An inference-only replacement of the fused kernel, f(q, k, v) -> out with SDPA's
        # shapes (fast mode's int8 attention, `surgray.model.int8_attention`); None: SDPA.
        self.attention_kernel = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_k_exclude_rope: int = 0,
        feat_hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """q: [B, Lq, C]; k, v: [B, Lk, C_kv]. Returns [B, Lq, C]."""
        q = self._heads(self.q_proj(q))
        k = self._heads(self.k_proj(k))
        kernel = self.attention_kernel if not self.training else None
        # With a replacement kernel (an explicit softmax) and one head, the values are
        # projected after the attention: softmax rows sum to 1, so P (M W^T + b) = (P M) W^T + b,
        # and P meets the 64-channel memories rather than their 256-channel projections.
        late_values = kernel is not None and self.num_heads == 1
        memories = v
        v = None if late_values else self._heads(self.v_proj(v))

        h, w = grid_size(q.shape[-2], feat_hw, self.configured_wh)
        num_k_rope = k.shape[-2] - num_k_exclude_rope
        repeat = num_k_rope // q.shape[-2] if q.shape[-2] else 0
        if num_k_rope != q.shape[-2]:
            if not self.rope_k_repeat:
                raise ValueError(
                    f"keys ({num_k_rope} positioned tokens) differ from queries ({q.shape[-2]}); "
                    "that needs rope_k_repeat=True"
                )
            if num_k_rope % q.shape[-2] != 0:
                raise ValueError(
                    f"{num_k_rope} positioned key tokens are not a whole number of "
                    f"{q.shape[-2]}-token memory maps"
                )
        # At inference the projections' outputs are ours alone: rotate them where they lie
        # (one pass and one [B, heads, Lk, C] buffer fewer per layer).
        inplace = _inference(self)
        q = self.rope.rotate(q, h, w, inplace=inplace)
        k = self.rope.rotate(
            k, h, w, repeat=repeat, num_exclude=num_k_exclude_rope, inplace=inplace
        )

        # Without a replacement kernel: the fused kernel beat attending to the 64-channel
        # memories and projecting the values afterwards (fewer flops, but an explicit softmax)
        # by 6% of a Hiera-T frame on CPU.
        if late_values:
            out = self.v_proj(kernel(q, k, memories[:, None]))
        elif kernel is not None:
            out = kernel(q, k, v)
        else:
            q = q.expand(k.shape[0], -1, -1, -1)
            dropout_p = self.dropout_p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        out = out.transpose(1, 2).flatten(2)
        return self.out_proj(out)


class MemoryAttentionLayer(nn.Module):
    """Pre-norm block: RoPE self-attention, RoPE cross-attention to memory, feed-forward."""

    def __init__(self, cfg: MemoryAttentionLayerConfig) -> None:
        super().__init__()
        for name, sub in (
            ("self_attention", cfg.self_attention),
            ("cross_attention", cfg.cross_attention),
        ):
            if sub.embedding_dim != cfg.d_model:
                raise ValueError(
                    f"{name}.embedding_dim {sub.embedding_dim} != d_model {cfg.d_model}"
                )
        self.self_attn = RoPEAttention(cfg.self_attention)
        self.cross_attn_image = RoPEAttention(cfg.cross_attention)
        self.linear1 = nn.Linear(cfg.d_model, cfg.dim_feedforward)
        self.dropout = nn.Dropout(cfg.dropout)
        self.linear2 = nn.Linear(cfg.dim_feedforward, cfg.d_model)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.dropout)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.activation = activation_fn(cfg.activation)
        self.pos_enc_at_attn = cfg.pos_enc_at_attn
        self.pos_enc_at_cross_attn_queries = cfg.pos_enc_at_cross_attn_queries
        self.pos_enc_at_cross_attn_keys = cfg.pos_enc_at_cross_attn_keys

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        num_k_exclude_rope: int = 0,
        feat_hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """tgt, query_pos: [B, L, C] or [1, L, C] shared by the B memories' rows (then the
        self-attention runs once and the result is [B, L, C]); memory, pos: [B, M, C_kv]."""
        normed = self.norm1(tgt)
        qk = normed + query_pos if self.pos_enc_at_attn else normed
        tgt = tgt + self.dropout1(self.self_attn(qk, qk, normed, feat_hw=feat_hw))

        normed = self.norm2(tgt)
        attended = self.cross_attn_image(
            q=normed + query_pos if self.pos_enc_at_cross_attn_queries else normed,
            k=memory + pos if self.pos_enc_at_cross_attn_keys else memory,
            v=memory,
            num_k_exclude_rope=num_k_exclude_rope,
            feat_hw=feat_hw,
        )
        tgt = tgt + self.dropout2(attended)

        normed = self.norm3(tgt)
        hidden = self.linear1(normed)
        if _inference(self):
            # Same values as the functional form; saves a [B, L, dim_feedforward] buffer.
            hidden = _ACTIVATIONS_IN_PLACE.get(self.activation, self.activation)(hidden)
        else:
            hidden = self.activation(hidden)
        hidden = self.dropout(hidden)
        return tgt + self.dropout3(self.linear2(hidden))


class MemoryAttention(nn.Module):
    """`num_layers` memory-attention layers and a final LayerNorm."""

    def __init__(self, cfg: MemoryAttentionConfig) -> None:
        super().__init__()
        if cfg.layer.d_model != cfg.d_model:
            raise ValueError(f"layer.d_model {cfg.layer.d_model} != d_model {cfg.d_model}")
        self.d_model = cfg.d_model
        self.pos_enc_at_input = cfg.pos_enc_at_input
        self.layers = nn.ModuleList(MemoryAttentionLayer(cfg.layer) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_obj_ptr_tokens: int = 0,
        feat_hw: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """curr, curr_pos: [B, L, C] (L = h*w, row-major); memory, memory_pos: [B, M, C_mem],
        the last `num_obj_ptr_tokens` of M being object-pointer tokens. Returns [B, L, C].

        `feat_hw` = (h, w) of the current map; needed only when it is not square.
        """
        _check_inputs(curr, curr_pos, memory, memory_pos, num_obj_ptr_tokens, self.d_model)
        if _shares_one_frame(self, curr, curr_pos):
            # Objects of one frame (expanded views of one row): until the first cross-attention
            # reads their memories, every row computes the same thing, so compute it once.
            curr, first_pos = curr[:1], curr_pos[:1]
        else:
            first_pos = curr_pos
        output = curr + 0.1 * first_pos if self.pos_enc_at_input else curr
        for index, layer in enumerate(self.layers):
            output = layer(
                output,
                memory,
                pos=memory_pos,
                query_pos=first_pos if index == 0 else curr_pos,
                num_k_exclude_rope=num_obj_ptr_tokens,
                feat_hw=feat_hw,
            )
        if output.shape[0] != memory.shape[0]:  # no layer to tell the rows apart
            output = output.expand(memory.shape[0], -1, -1)
        return self.norm(output)


def _inference(module: nn.Module) -> bool:
    return not module.training and not torch.is_grad_enabled()


_ACTIVATIONS_IN_PLACE = {F.relu: F.relu_}


def _shares_one_frame(module: nn.Module, curr: torch.Tensor, curr_pos: torch.Tensor) -> bool:
    """Whether the B > 1 query rows are one frame's features expanded (stride 0), at inference."""
    return (
        curr.shape[0] > 1 and curr.stride(0) == 0 and curr_pos.stride(0) == 0 and _inference(module)
    )


def _check_inputs(
    curr: torch.Tensor,
    curr_pos: torch.Tensor,
    memory: torch.Tensor,
    memory_pos: torch.Tensor,
    num_obj_ptr_tokens: int,
    d_model: int,
) -> None:
    if curr.ndim != 3 or curr.shape[-1] != d_model:
        raise ValueError(f"curr must be [B, L, {d_model}], got {tuple(curr.shape)}")
    if curr_pos.shape != curr.shape:
        raise ValueError(f"curr_pos {tuple(curr_pos.shape)} must match curr {tuple(curr.shape)}")
    if memory.ndim != 3 or memory.shape[0] != curr.shape[0]:
        raise ValueError(
            f"memory must be [B, M, C_mem] with B = {curr.shape[0]}, got {tuple(memory.shape)}"
        )
    if memory_pos.shape != memory.shape:
        raise ValueError(
            f"memory_pos {tuple(memory_pos.shape)} must match memory {tuple(memory.shape)}"
        )
    if not 0 <= num_obj_ptr_tokens <= memory.shape[1]:
        raise ValueError(
            f"num_obj_ptr_tokens must be in [0, {memory.shape[1]}], got {num_obj_ptr_tokens}"
        )
