"""Prompt encoder of the SAM heads: clicks, boxes and mask prompts to decoder inputs.

Clicks and box corners become *sparse* tokens: a random-Fourier encoding of where they are
plus a learned vector saying what they are (negative/positive click, top-left/bottom-right
corner). A padding click (label -1) carries no position, only the "not a point" vector. A
low-resolution mask prompt becomes a *dense* map at the image-embedding resolution; without
one, every pixel receives the learned "no mask" vector.

Coordinates are absolute pixels of the model's input image (`input_image_size`, (H, W)), in
(x, y) order. Parameter names are those of the official checkpoints' `sam_prompt_encoder.*`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from surgray.model.sam2.layers import LayerNorm2d

# Meaning of a click label; the index into `point_embeddings` is the label itself.
PAD_LABEL = -1
NEGATIVE_LABEL = 0
POSITIVE_LABEL = 1
BOX_TOP_LEFT_LABEL = 2
BOX_BOTTOM_RIGHT_LABEL = 3
VALID_LABELS = (
    PAD_LABEL,
    NEGATIVE_LABEL,
    POSITIVE_LABEL,
    BOX_TOP_LEFT_LABEL,
    BOX_BOTTOM_RIGHT_LABEL,
)


class RandomFourierPositionEncoding(nn.Module):
    """Encodes 2-D positions in [0, 1]^2 with sines and cosines of random projections.

    A fixed Gaussian matrix maps (x, y) to `num_feats` frequencies; the encoding is
    [sin, cos] of those, so it has 2 * `num_feats` channels. The matrix is a buffer (it is
    part of the checkpoint, so every copy of the model encodes positions identically).
    """

    def __init__(self, num_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def encode_unit(self, coords: torch.Tensor) -> torch.Tensor:
        """[..., 2] coordinates in [0, 1] -> [..., 2 * num_feats]."""
        centred = 2 * coords - 1  # the projection is centred on the image middle
        angles = 2 * math.pi * (centred @ self.positional_encoding_gaussian_matrix)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)

    def encode_pixels(self, xy: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """[B, N, 2] absolute (x, y) pixel coordinates in an (H, W) image -> [B, N, C]."""
        height, width = image_size
        extent = torch.tensor([float(width), float(height)], device=xy.device)
        return self.encode_unit(xy.float() / extent)

    def grid(self, size: tuple[int, int]) -> torch.Tensor:
        """Encoding of every cell centre of an (h, w) grid: [C, h, w]."""
        h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        coords = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self.encode_unit(coords).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Turns clicks, boxes and mask prompts into sparse tokens and a dense map."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: tuple[int, int],
        input_image_size: tuple[int, int],
        mask_in_chans: int,
    ) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even (sin and cos halves), got {embed_dim}")
        if mask_in_chans % 4:
            raise ValueError(f"mask_in_chans must be a multiple of 4, got {mask_in_chans}")
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])

        self.pe_layer = RandomFourierPositionEncoding(embed_dim // 2)
        # One learned vector per non-padding label, indexed by the label.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.no_mask_embed = nn.Embedding(1, embed_dim)

        # Two stride-2 convs take the 4x-resolution mask down to the embedding grid. The layout
        # (indices 0..6, activations without parameters) fixes the checkpoint's key names.
        hidden = mask_in_chans // 4
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, hidden, kernel_size=2, stride=2),
            LayerNorm2d(hidden),
            nn.GELU(),
            nn.Conv2d(hidden, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )

    def get_dense_pe(self) -> torch.Tensor:
        """Position encoding of the image-embedding grid, [1, C, h, w]."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse tokens [B, N, C] (clicks, then box corners) and the dense map [B, C, h, w].

        points: ([B, P, 2] (x, y) pixels, [B, P] labels in {-1, 0, 1, 2, 3}).
        boxes: [B, 4] as (x0, y0, x1, y1) pixels (also accepted as [B, 1, 4] or [B, 2, 2]).
        masks: [B, 1, 4h, 4w] mask-prompt logits.
        When clicks come without a box, one padding click is appended: the decoder was trained
        with it.
        """
        batch = self._batch_size(points, boxes, masks)
        device = self.no_mask_embed.weight.device
        sparse_parts = [torch.empty(batch, 0, self.embed_dim, device=device)]
        if points is not None:
            coords, labels = points
            if boxes is None:
                coords = torch.cat([coords, coords.new_zeros(batch, 1, 2)], dim=1)
                labels = torch.cat([labels, labels.new_full((batch, 1), PAD_LABEL)], dim=1)
            sparse_parts.append(self._embed_clicks(coords, labels))
        if boxes is not None:
            sparse_parts.append(self._embed_box(boxes.reshape(batch, 2, 2)))
        sparse = torch.cat(sparse_parts, dim=1)

        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            h, w = self.image_embedding_size
            dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
        return sparse, dense

    def _embed_clicks(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # +0.5: a click on pixel i means the centre of that pixel.
        position = self.pe_layer.encode_pixels(coords + 0.5, self.input_image_size)
        is_pad = (labels == PAD_LABEL).unsqueeze(-1)
        position = torch.where(is_pad, torch.zeros_like(position), position)
        # Row 0 of the table serves padding, rows 1..4 the labels 0..3.
        table = torch.cat(
            [self.not_a_point_embed.weight, *(e.weight for e in self.point_embeddings)]
        )
        return position + table[(labels + 1).long()]

    def _embed_box(self, corners: torch.Tensor) -> torch.Tensor:
        position = self.pe_layer.encode_pixels(corners + 0.5, self.input_image_size)
        corner_kinds = torch.cat(
            [
                self.point_embeddings[BOX_TOP_LEFT_LABEL].weight,
                self.point_embeddings[BOX_BOTTOM_RIGHT_LABEL].weight,
            ]
        )
        return position + corner_kinds

    def _batch_size(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> int:
        """Checks the prompts' shapes and returns their common batch size (1 with none)."""
        sizes: dict[str, int] = {}
        if points is not None:
            if not isinstance(points, (tuple, list)) or len(points) != 2:
                raise ValueError("points must be a pair (coords [B, P, 2], labels [B, P])")
            coords, labels = points
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise ValueError(
                    f"point coords must have shape [B, P, 2], got {list(coords.shape)}"
                )
            if labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"point labels must have shape [B, P] = {list(coords.shape[:2])}, got {list(labels.shape)}"
                )
            if labels.is_floating_point() and not torch.equal(labels, labels.round()):
                raise ValueError("point labels must be whole numbers in {-1, 0, 1, 2, 3}")
            allowed = torch.tensor(VALID_LABELS, device=labels.device, dtype=labels.dtype)
            if not torch.isin(labels, allowed).all():
                bad = sorted({int(v) for v in labels[~torch.isin(labels, allowed)].tolist()})
                raise ValueError(f"point labels must be in {{-1, 0, 1, 2, 3}}, got {bad}")
            sizes["points"] = coords.shape[0]
        if boxes is not None:
            if boxes.ndim < 2 or boxes.shape[1:].numel() != 4:
                raise ValueError(
                    f"boxes must have shape [B, 4] (x0, y0, x1, y1), got {list(boxes.shape)}"
                )
            sizes["boxes"] = boxes.shape[0]
        if masks is not None:
            expected = (1, *self.mask_input_size)
            if masks.ndim != 4 or tuple(masks.shape[1:]) != expected:
                raise ValueError(
                    f"masks must have shape [B, {', '.join(map(str, expected))}], got {list(masks.shape)}"
                )
            sizes["masks"] = masks.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"prompts disagree on the batch size: {sizes}")
        return next(iter(sizes.values()), 1)
