"""Two-way transformer of the mask decoder, and the multi-head attention it is built from.

The decoder's few prompt/output tokens and the many image-embedding pixels update each other:
every block lets the tokens attend to themselves and to the image, runs an MLP on the tokens,
then lets the image attend back to the tokens. A last token->image attention finishes. Position
encodings are added to queries and keys at every attention, never to values.

Cross-attentions work in a narrower space (`downsample_rate`) because the image side has
thousands of entries. `Attention` is also the base of the memory attention's RoPE attention,
which is why it takes a separate key/value input width (`kv_in_dim`).

Parameter names are those of the official checkpoints' `sam_mask_decoder.transformer.*`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from surgray.model.sam2.config import TwoWayTransformerConfig
from surgray.model.sam2.layers import MLP


class Attention(nn.Module):
    """Multi-head attention with projections to `embedding_dim // downsample_rate` channels."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = kv_in_dim if kv_in_dim is not None else embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if embedding_dim % downsample_rate or self.internal_dim % num_heads:
            raise ValueError(
                f"embedding_dim {embedding_dim} / downsample_rate {downsample_rate} must be a whole "
                f"multiple of num_heads {num_heads}"
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, heads, N, D / heads]."""
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    @staticmethod
    def merge_heads(x: torch.Tensor) -> torch.Tensor:
        """[B, heads, N, d] -> [B, N, heads * d]."""
        b, h, n, d = x.shape
        return x.transpose(1, 2).reshape(b, n, h * d)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention over already projected, head-split tensors."""
        dropout = self.dropout_p if self.training else 0.0
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [B, Nq, embedding_dim]; k, v: [B, Nk, kv_in_dim] -> [B, Nq, embedding_dim]."""
        heads = self.attend(
            self.split_heads(self.q_proj(q)),
            self.split_heads(self.k_proj(k)),
            self.split_heads(self.v_proj(v)),
        )
        return self.out_proj(self.merge_heads(heads))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image attention, token MLP, image->token attention.

    Each step is residual and followed by its own LayerNorm (norm1..norm4). The first block of
    the stack feeds the raw tokens to self-attention without their position encoding and
    without a residual: at that point the tokens *are* their encodings.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        attention_downsample_rate: int,
        first_block: bool,
    ) -> None:
        super().__init__()
        self.first_block = first_block
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation="relu")
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )

    def forward(
        self,
        tokens: torch.Tensor,
        image: torch.Tensor,
        token_pe: torch.Tensor,
        image_pe: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first_block:
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            q = tokens + token_pe
            tokens = tokens + self.self_attn(q, q, tokens)
        tokens = self.norm1(tokens)

        image_keys = image + image_pe
        tokens = self.norm2(
            tokens + self.cross_attn_token_to_image(tokens + token_pe, image_keys, image)
        )
        tokens = self.norm3(tokens + self.mlp(tokens))
        image = self.norm4(
            image + self.cross_attn_image_to_token(image_keys, tokens + token_pe, tokens)
        )
        return tokens, image


class TwoWayTransformer(nn.Module):
    """`depth` two-way blocks, then a final token->image attention and LayerNorm."""

    def __init__(self, cfg: TwoWayTransformerConfig, embedding_dim: int) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim,
                cfg.num_heads,
                cfg.mlp_dim,
                cfg.attention_downsample_rate,
                first_block=(i == 0),
            )
            for i in range(cfg.depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, cfg.num_heads, downsample_rate=cfg.attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        token_embedding: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding [B, C, h, w], image_pe [B or 1, C, h, w], tokens [B, N, C].

        Returns the updated tokens [B, N, C] and image [B, h*w, C].
        """
        image = image_embedding.flatten(2).transpose(1, 2)
        image_pe = image_pe.flatten(2).transpose(1, 2)
        tokens = token_embedding
        for layer in self.layers:
            tokens, image = layer(tokens, image, token_embedding, image_pe)
        attended = self.final_attn_token_to_image(tokens + token_embedding, image + image_pe, image)
        tokens = self.norm_final_attn(tokens + attended)
        return tokens, image
