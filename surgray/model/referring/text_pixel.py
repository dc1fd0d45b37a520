"""Text-pixel head: a stride-8 term added to ReSurgSAM2's stage-1 mask logits (ours, not in the
published method).

CSTMamba fuses the text with the stride-16 map only, and the SAM decoder picks the referred
object from that map's tokens; finer maps reach the decoder only through its upscaling path,
which never sees the text. At small image sizes the stride-16 map is a few cells wide (8 x 8 for
the 128-px demo) and tells instrument categories apart poorly: a linear probe on mask-pooled
features named 27% of instrument categories at stride 16 and 47% at stride 8
(docs/demo-training.md). This head scores every stride-8 pixel against the fused text:

    bias = scale * <W_text t, pixel_mlp(s1)> / sqrt(E)

with t the fusion's last sparse token (the fused text embedding; the class token when the
fusion's `forward_text_emb` is off), s1 the decoder's projected stride-8 map (the stride-16 map
for networks without high-resolution features) and E `embed_dim`. The map is brought to the
decoder's mask size and added to every candidate mask.
`scale` starts at 0, so a head added to a trained network starts as stage 1 without it.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from surgray.model.sam2.frame_types import FrameFeatures


class TextPixelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    embed_dim: int = Field(32, ge=1)  # E: width in which text and pixels are compared


class TextPixelHead(nn.Module):
    """[N, C] text tokens and a [1|N, P, h, w] pixel map -> [N, 1, H, W] mask-logit bias."""

    def __init__(self, cfg: TextPixelConfig, text_dim: int, pixel_dim: int) -> None:
        super().__init__()
        width = cfg.embed_dim
        self.text = nn.Linear(text_dim, width)
        self.pixel = nn.Sequential(
            nn.Conv2d(pixel_dim, width, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(width, width, kernel_size=1),
        )
        self.scale = nn.Parameter(torch.zeros(()))

    def forward(
        self, text_tokens: torch.Tensor, pixels: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        count = text_tokens.shape[0]
        if pixels.shape[0] not in (1, count):
            raise ValueError(
                f"pixel map of batch {pixels.shape[0]} for {count} text tokens (give 1 or {count})"
            )
        queries = self.text(text_tokens)  # [N, E]
        keys = self.pixel(pixels).expand(count, -1, -1, -1)  # [N, E, h, w]
        similarity = torch.einsum("ne,nehw->nhw", queries, keys) / math.sqrt(queries.shape[-1])
        bias = self.scale * similarity[:, None]
        if tuple(bias.shape[-2:]) != tuple(size):
            bias = F.interpolate(bias, size=size, mode="bilinear", align_corners=False)
        return bias

    def for_frame(self, text_tokens: torch.Tensor, features: FrameFeatures) -> torch.Tensor:
        """The bias of the decoder's masks on one frame, from its stride-8 map (its stride-16
        map when the network has no high-resolution features). The masks are 4x the stride-16
        map: the decoder upscales it by two 2x transposed convolutions."""
        pixels = features.high_res[1] if features.high_res else features.image_embed
        h, w = features.image_embed.shape[-2:]
        return self(text_tokens, pixels, (4 * h, 4 * w))
