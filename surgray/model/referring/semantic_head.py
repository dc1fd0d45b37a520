"""SAM2S temporal semantic learning (TSL): which instrument category is the tracked object?

A learnable class token first attends to the object's memory features (its history in the
memory bank), then to the current frame's features; the result is projected to the CLIP text
width and compared with the CLIP embeddings of the K category names by cosine similarity times
a logit scale tau = 100 (SAM2S follows OVSeg; "temperature" 100 acts as sim * 100). Training uses
InfoNCE over the K categories (`tsl_loss`), skipping objects without a category (tissue). The
category embeddings can be precomputed once, so the text encoder is not needed at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torch.nn import functional as F

from surgray.model.sam2.layers import MLP
from surgray.model.sam2.two_way_transformer import Attention


class SemanticHeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    d_model: int = 256  # width of the current frame's features
    memory_dim: int = 64  # width of the memory-bank features
    text_dim: int = 512  # width of the CLIP text embeddings
    num_heads: int = 8
    image_downsample_rate: int = 2
    mlp_dim: int = 1024
    dropout: float = 0.0
    logit_scale: float = 100.0


@dataclass
class SemanticPrediction:
    logits: torch.Tensor  # [B, K] logit_scale * cosine similarity
    probs: torch.Tensor  # [B, K] softmax of logits
    index: torch.Tensor  # [B] most likely category
    probability: torch.Tensor  # [B] its probability


class SemanticHead(nn.Module):
    """Class token -> memory attention -> current-frame attention -> MLP -> text space."""

    def __init__(self, cfg: SemanticHeadConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else SemanticHeadConfig()
        self.cfg = cfg
        d = cfg.d_model
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.memory_attn = Attention(
            d, cfg.num_heads, dropout=cfg.dropout, kv_in_dim=cfg.memory_dim
        )
        self.norm_memory = nn.LayerNorm(d)
        self.image_attn = Attention(
            d, cfg.num_heads, downsample_rate=cfg.image_downsample_rate, dropout=cfg.dropout
        )
        self.norm_image = nn.LayerNorm(d)
        self.mlp = MLP(d, cfg.mlp_dim, d, num_layers=2)
        self.norm_mlp = nn.LayerNorm(d)
        self.text_proj = nn.Linear(d, cfg.text_dim)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(
        self,
        current: torch.Tensor,
        memory: torch.Tensor | None = None,
        current_pos: torch.Tensor | None = None,
        memory_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The object's embedding in text space, [B, text_dim].

        current: [B, d_model, h, w] features of the current frame (memory-conditioned or not);
        memory: [B, M, memory_dim] memory-bank tokens of this object, or None / M = 0 before any
        memory exists; *_pos: optional position encodings of the same shapes, added to keys.
        """
        cfg = self.cfg
        if current.dim() != 4 or current.shape[1] != cfg.d_model:
            raise ValueError(
                f"current must be [B, {cfg.d_model}, h, w], got {tuple(current.shape)}"
            )
        batch = current.shape[0]
        x = self.cls_token.expand(batch, -1, -1)
        if memory is not None and memory.shape[1] > 0:
            if memory.dim() != 3 or memory.shape[0] != batch or memory.shape[2] != cfg.memory_dim:
                raise ValueError(
                    f"memory must be [{batch}, M, {cfg.memory_dim}], got {tuple(memory.shape)}"
                )
            keys = memory if memory_pos is None else memory + memory_pos
            x = self.norm_memory(x + self.memory_attn(x, keys, memory))
        image = current.flatten(2).transpose(1, 2)
        keys = image if current_pos is None else image + current_pos.flatten(2).transpose(1, 2)
        x = self.norm_image(x + self.image_attn(x, keys, image))
        x = self.norm_mlp(x + self.mlp(x))
        return self.text_proj(x[:, 0])

    def logits(self, embedding: torch.Tensor, category_embeddings: torch.Tensor) -> torch.Tensor:
        """[B, text_dim] x [K, text_dim] -> [B, K] = logit_scale * cosine similarity."""
        if category_embeddings.dim() != 2 or category_embeddings.shape[1] != embedding.shape[1]:
            raise ValueError(
                f"category embeddings must be [K, {embedding.shape[1]}], "
                f"got {tuple(category_embeddings.shape)}"
            )
        sim = F.normalize(embedding, dim=-1) @ F.normalize(category_embeddings, dim=-1).t()
        return self.cfg.logit_scale * sim

    def classify(
        self, embedding: torch.Tensor, category_embeddings: torch.Tensor
    ) -> SemanticPrediction:
        logits = self.logits(embedding, category_embeddings)
        probs = logits.softmax(dim=-1)
        probability, index = probs.max(dim=-1)
        return SemanticPrediction(logits=logits, probs=probs, index=index, probability=probability)


def tsl_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """InfoNCE over the K categories, averaged over objects whose target is not ignore_index.

    logits [B, K] from `SemanticHead.logits`; targets [B] category indices. Returns 0 (still
    attached to the graph) when no object has a category.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"logits must be [B, K] and targets [B]; got {tuple(logits.shape)}, "
            f"{tuple(targets.shape)}"
        )
    keep = targets != ignore_index
    if not bool(keep.any()):
        return logits.sum() * 0.0
    kept = targets[keep]
    if bool(((kept < 0) | (kept >= logits.shape[1])).any()):
        raise ValueError(f"targets must be in [0, {logits.shape[1]}) or {ignore_index}")
    return F.cross_entropy(logits[keep], targets[keep])
