"""Fixed sine position encodings (2-D for feature maps, 1-D for temporal offsets)."""

from __future__ import annotations

import math

import torch
from torch import nn

from surgray.model.sam2.config import SinePositionConfig


class PositionEmbeddingSine(nn.Module):
    """DETR-style 2-D sine/cosine encoding of a [B, C, H, W] map's pixel grid.

    Half of the `num_pos_feats` channels encode y, half encode x. The result depends only on
    the map's shape, so it is cached per (H, W, device).
    """

    def __init__(self, cfg: SinePositionConfig) -> None:
        super().__init__()
        if cfg.num_pos_feats % 2:
            raise ValueError("num_pos_feats must be even")
        self.half = cfg.num_pos_feats // 2
        self.temperature = cfg.temperature
        self.normalize = cfg.normalize
        if cfg.scale is not None and not cfg.normalize:
            raise ValueError("scale is only used with normalize=True")
        self.scale = 2 * math.pi if cfg.scale is None else cfg.scale
        self._cache: dict[tuple, torch.Tensor] = {}

    def _grid(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        # Inference-mode tensors cannot be used outside inference mode: keep them apart.
        key = (h, w, str(device), torch.is_inference_mode_enabled())
        if key not in self._cache:
            ys = torch.arange(1, h + 1, dtype=torch.float32, device=device)
            xs = torch.arange(1, w + 1, dtype=torch.float32, device=device)
            if self.normalize:
                eps = 1e-6
                ys = ys / (h + eps) * self.scale
                xs = xs / (w + eps) * self.scale
            freqs = self.temperature ** (
                2 * (torch.arange(self.half, dtype=torch.float32, device=device) // 2) / self.half
            )
            enc_y = _interleave_sin_cos(ys[:, None] / freqs)  # [H, half]
            enc_x = _interleave_sin_cos(xs[:, None] / freqs)  # [W, half]
            grid = torch.cat(
                [
                    enc_y[:, None, :].expand(h, w, self.half),
                    enc_x[None, :, :].expand(h, w, self.half),
                ],
                dim=-1,
            )
            self._cache[key] = grid.permute(2, 0, 1).contiguous()
        return self._cache[key]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self._grid(x.shape[-2], x.shape[-1], x.device)
        return grid.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1, -1)


def _interleave_sin_cos(angles: torch.Tensor) -> torch.Tensor:
    """[..., D] angles -> [..., D] with sin at even and cos at odd channels."""
    out = torch.empty_like(angles)
    out[..., 0::2] = angles[..., 0::2].sin()
    out[..., 1::2] = angles[..., 1::2].cos()
    return out


def sine_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """1-D sine encoding of (possibly fractional) positions: [N] -> [N, dim], sin half then cos half."""
    half = dim // 2
    freqs = temperature ** (
        2 * (torch.arange(half, dtype=torch.float32, device=positions.device) // 2) / half
    )
    angles = positions.float()[:, None] / freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)
