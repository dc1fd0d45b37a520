"""Hiera trunk of the SAM2 image encoder.

A hierarchical vision transformer (Ryali et al., arXiv 2306.00989) in the variant SAM2 uses:
a strided convolution cuts the image into stride-4 patches, then four stages of transformer
blocks run at strides 4, 8, 16 and 32. Blocks attend inside square windows (one size per stage)
except for a few that attend globally. The first block of a stage halves the map by max-pooling
its queries (and its shortcut), so keys/values still see the full-resolution map. The absolute
position embedding is a small "background" grid resized to the patch grid plus a window-sized
pattern tiled over it (Bolya et al., arXiv 2311.05613).

Parameter names follow the official checkpoints (`image_encoder.trunk.*`), so they load strictly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from surgray.model.sam2.config import HieraConfig
from surgray.model.sam2.layers import MLP, DropPath

_NORM_EPS = 1e-6
_MLP_RATIO = 4.0


@dataclass(frozen=True)
class BlockPlan:
    """Shape of one transformer block, worked out from the trunk config."""

    dim_in: int
    dim_out: int
    num_heads: int
    window: int  # side of the attention window on the block's input map; 0 = global
    pool_query: bool  # first block of a stage that halves the resolution
    drop_path: float


def plan_blocks(cfg: HieraConfig) -> list[BlockPlan]:
    """Per-block widths, heads, windows and pooling, as the official trunk lays them out.

    The window size lags the stage by one block: a stage's first block still runs on the
    previous stage's map (it pools while attending), so it uses the previous stage's window.
    """
    if len(cfg.window_spec) != len(cfg.stages):
        raise ValueError(
            f"window_spec has {len(cfg.window_spec)} entries but there are {len(cfg.stages)} stages"
        )
    if not 0 <= cfg.q_pool <= len(cfg.stages) - 1:
        raise ValueError(f"q_pool must be in [0, {len(cfg.stages) - 1}], got {cfg.q_pool}")
    depth = sum(cfg.stages)
    stage_starts = [sum(cfg.stages[:i]) for i in range(1, len(cfg.stages))]
    pooling_blocks = set(stage_starts[: cfg.q_pool])
    global_blocks = set(cfg.global_att_blocks)
    # Computed on the CPU explicitly so that building under a meta-device context works.
    drop_rates = torch.linspace(0, cfg.drop_path_rate, depth, device="cpu").tolist()

    plans = []
    dim, heads, stage = cfg.embed_dim, cfg.num_heads, 0
    for i in range(depth):
        window = cfg.window_spec[stage]
        dim_out = dim
        if i in stage_starts:
            dim_out = int(dim * cfg.dim_mul)
            heads = int(heads * cfg.head_mul)
            stage += 1
        pool = i in pooling_blocks
        if i in global_blocks:
            window = 0
        if pool and window and any(window % s for s in cfg.q_stride):
            raise ValueError(
                f"block {i}: window {window} is not divisible by q_stride {cfg.q_stride}"
            )
        if dim_out % heads:
            raise ValueError(f"block {i}: width {dim_out} is not divisible by {heads} heads")
        plans.append(BlockPlan(dim, dim_out, heads, window, pool, drop_rates[i]))
        dim = dim_out
    return plans


def _pad_to_windows(x: torch.Tensor, window: int, fill: torch.Tensor | None) -> torch.Tensor:
    """Pad a [B, H, W, C] map at the bottom/right up to a multiple of `window` with `fill`
    ([C], or zeros when None)."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    if not (pad_h or pad_w):
        return x
    if fill is None:
        return F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded = fill.to(x.dtype).expand(b, h + pad_h, w + pad_w, c).clone()
    padded[:, :h, :w] = x
    return padded


def max_pool_2d(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Non-overlapping max pool of a channels-last map [..., H, W, C] (remainder dropped).

    Equal to `nn.MaxPool2d(stride, stride)`. An elementwise maximum over the sh * sw strided
    offsets keeps channels last and is much faster than a strided `amax` reduction on CPU.
    """
    sh, sw = stride
    h, w = x.shape[-3] // sh, x.shape[-2] // sw
    pooled = None
    for dy in range(sh):
        for dx in range(sw):
            part = x[..., dy : h * sh : sh, dx : w * sw : sw, :]
            pooled = part if pooled is None else torch.maximum(pooled, part)
    return pooled


class PooledWindowAttention(nn.Module):
    """Multi-head self-attention inside windows (or globally), optionally pooling the queries.

    Input [B, H, W, C_in] -> output [B, H', W', C_out] with H' = H // stride when pooling.
    Windows are zero-padded at the bottom/right edges; padded tokens take part as keys exactly
    as in the official model (no mask), and the padded outputs are cut off afterwards.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        window: int,
        q_stride: tuple[int, int] | None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        # The official model zero-pads the normed map to whole windows before this projection;
        # a zero token projects to the bias, so projecting the real tokens and padding with the
        # bias gives the same q/k/v without projecting the padding (32 -> 42 tokens a side in
        # Hiera-T's third stage at 512 px). Padded tokens still take part as keys.
        qkv = self.qkv(x)
        if self.window:
            qkv = _pad_to_windows(qkv, self.window, self.qkv.bias)
            win_h = win_w = self.window
        else:
            win_h, win_w = height, width
        grid_h, grid_w = qkv.shape[1] // win_h, qkv.shape[2] // win_w
        # [B, gh, wh, gw, ww, 3, heads, d] -> [3, B * gh * gw, heads, wh, ww, d] in one copy.
        qkv = qkv.view(batch, grid_h, win_h, grid_w, win_w, 3, self.num_heads, -1)
        qkv = qkv.permute(5, 0, 1, 3, 6, 2, 4, 7)
        q, k, v = qkv.reshape(3, -1, self.num_heads, win_h, win_w, qkv.shape[-1]).unbind(0)
        if self.q_stride is not None:
            q = max_pool_2d(q, self.q_stride)
            height, width = height // self.q_stride[0], width // self.q_stride[1]
        qh, qw = q.shape[2], q.shape[3]
        out = F.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3))
        # [B * gh * gw, heads, qh * qw, d] -> [B, gh * qh, gw * qw, heads * d]
        out = out.view(batch, grid_h, grid_w, self.num_heads, qh, qw, -1)
        out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, grid_h * qh, grid_w * qw, -1)
        if self.window:
            out = out[:, :height, :width]
        return self.proj(out)


class HieraBlock(nn.Module):
    """Pre-norm transformer block on a channels-last map; the stage-entry block also pools."""

    def __init__(self, plan: BlockPlan, q_stride: tuple[int, int]) -> None:
        super().__init__()
        self.pool_stride = q_stride if plan.pool_query else None
        self.norm1 = nn.LayerNorm(plan.dim_in, eps=_NORM_EPS)
        self.attn = PooledWindowAttention(
            plan.dim_in, plan.dim_out, plan.num_heads, plan.window, self.pool_stride
        )
        self.drop_path = DropPath(plan.drop_path) if plan.drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(plan.dim_out, eps=_NORM_EPS)
        hidden = int(plan.dim_out * _MLP_RATIO)
        self.mlp = MLP(plan.dim_out, hidden, plan.dim_out, num_layers=2, activation="gelu")
        self.widens = plan.dim_in != plan.dim_out
        if self.widens:
            # The shortcut must change width (and resolution) with the attention branch.
            self.proj = nn.Linear(plan.dim_in, plan.dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        shortcut = x
        if self.widens:
            shortcut = self.proj(normed)
        if self.pool_stride is not None:
            shortcut = max_pool_2d(shortcut, self.pool_stride)
        x = shortcut + self.drop_path(self.attn(normed))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Strided convolution from the image to the stride-4 patch grid (channels-last output)."""

    def __init__(self, cfg: HieraConfig, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans,
            cfg.embed_dim,
            kernel_size=cfg.patch_kernel_size,
            stride=cfg.patch_stride,
            padding=cfg.patch_padding,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Hiera(nn.Module):
    """The trunk: images [B, 3, H, W] -> one map per stage, [B, C_i, H_i, W_i], stride 4 first.

    H and W must be multiples of the total stride (32 for every official config).
    """

    in_chans = 3

    def __init__(self, cfg: HieraConfig) -> None:
        super().__init__()
        self.cfg = cfg
        plans = plan_blocks(cfg)
        self.stage_ends = [sum(cfg.stages[: i + 1]) - 1 for i in range(len(cfg.stages))]
        # Same order as the neck's `backbone_channel_list`: lowest resolution first.
        self.channel_list = [plans[i].dim_out for i in reversed(self.stage_ends)]
        self.total_stride = (
            cfg.patch_stride[0] * cfg.q_stride[0] ** cfg.q_pool,
            cfg.patch_stride[1] * cfg.q_stride[1] ** cfg.q_pool,
        )

        self.patch_embed = PatchEmbed(cfg, self.in_chans)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, cfg.embed_dim, *cfg.window_pos_embed_bkg_spatial_size)
        )
        first_window = cfg.window_spec[0]
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, cfg.embed_dim, first_window, first_window)
        )
        self.blocks = nn.ModuleList(HieraBlock(plan, cfg.q_stride) for plan in plans)
        # (h, w) -> (parameter stamp, embedding); see `_position_embedding`.
        self._pos_cache: dict[tuple[int, int], tuple[tuple, torch.Tensor]] = {}

    def _build_position_embedding(self, h: int, w: int) -> torch.Tensor:
        background = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        win = self.pos_embed_window
        reps = (math.ceil(h / win.shape[-2]), math.ceil(w / win.shape[-1]))
        tiled = win.tile(1, 1, *reps)[..., :h, :w]
        return (background + tiled).permute(0, 2, 3, 1)  # [1, h, w, C]

    def _position_embedding(self, h: int, w: int) -> torch.Tensor:
        """The [1, h, w, C] embedding, reused across calls while the parameters are unchanged."""
        params = (self.pos_embed, self.pos_embed_window)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._build_position_embedding(h, w)  # gradients must reach the parameters
        # In-place updates (optimizer steps, load_state_dict) bump `_version`; moving or
        # casting the module makes new storage. Inference-mode tensors cannot be used outside
        # inference mode, so the mode is part of the stamp too.
        stamp = tuple((p._version, p.data_ptr(), p.device, p.dtype) for p in params) + (
            torch.is_inference_mode_enabled(),
        )
        hit = self._pos_cache.get((h, w))
        if hit is not None and hit[0] == stamp:
            return hit[1]
        with torch.no_grad():
            embedding = self._build_position_embedding(h, w).contiguous()
        self._pos_cache[(h, w)] = (stamp, embedding)
        return embedding

    def check_input(self, images: torch.Tensor) -> None:
        """Raise ValueError naming what is wrong with a batch of images."""
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
        if images.shape[1] != self.in_chans:
            raise ValueError(
                f"images must have {self.in_chans} channels, got {images.shape[1]} "
                f"(shape {tuple(images.shape)})"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be a floating-point tensor, got dtype {images.dtype}")
        h, w = images.shape[-2:]
        sh, sw = self.total_stride
        if h == 0 or w == 0 or h % sh or w % sw:
            raise ValueError(
                f"image height and width must be positive multiples of {sh}x{sw}, got {h}x{w}"
            )

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(images)
        x = self.patch_embed(images)
        x = x + self._position_embedding(x.shape[1], x.shape[2])
        stage_maps = []
        ends = set(self.stage_ends)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in ends:
                stage_maps.append(x.permute(0, 3, 1, 2))
        return stage_maps
