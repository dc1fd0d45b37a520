"""Mamba over the vision tokens of a short clip, as in ReSurgSAM2's CSTMamba ("sp_bimamba").

A clip of T frames of H x W tokens is one sequence of T*H*W tokens in frame-major raster order.
`SpatioTemporalMamba` scans it three ways, each scan with its own SSM parameters (A, causal
depthwise conv1d, x_proj, dt_proj, D) but sharing the input and output projections:

* forward, in raster order;
* backward, on the flipped sequence (flipped back afterwards);
* temporal-major, with the T copies of every spatial location next to each other, so that a
  scan step moves through time before it moves through space.

The three gated outputs are averaged before `out_proj`. Parameter names are those of the released
ReSurgSAM2 checkpoints (`A_log`, `A_b_log`, `A_s_log`, `conv1d_b`, `x_proj_s`, ...).

`MambaLayer` = pre-LN Mamba + residual, then pre-LN `DWMLP` + residual, both with DropPath.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from surgray.model.referring.selective_scan import selective_scan
from surgray.model.sam2.layers import DropPath

# Key suffix of each scan's parameters, in the order their outputs are summed.
_SCANS = ("", "_b", "_s")

GRNNorm = Literal["tokens", "tokens_and_channels"]


class SpatioTemporalMamba(nn.Module):
    """Three selective scans (forward, backward, temporal-major) over [B, T*H*W, C] tokens."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        for suffix in _SCANS:
            conv = nn.Conv1d(
                self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1
            )
            setattr(self, f"conv1d{suffix}", conv)
            setattr(
                self,
                f"x_proj{suffix}",
                nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False),
            )
            dt_proj = nn.Linear(self.dt_rank, self.d_inner)
            _init_dt_proj(dt_proj, self.dt_rank, dt_min, dt_max, dt_init_floor)
            setattr(self, f"dt_proj{suffix}", dt_proj)
            # S4D-real initialisation: A[d, n] = -(n + 1), stored as log(-A) so A stays negative.
            a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
            setattr(self, f"A{suffix}_log", nn.Parameter(torch.log(a)))
            setattr(self, f"D{suffix}", nn.Parameter(torch.ones(self.d_inner)))

    def forward(self, x: torch.Tensor, vol_sizes: tuple[int, int, int]) -> torch.Tensor:
        """x [B, T*H*W, C] in frame-major raster order; vol_sizes = (T, H, W)."""
        batch, length, _ = x.shape
        frames, height, width = vol_sizes
        if frames * height * width != length:
            raise ValueError(
                f"vol_sizes {vol_sizes} give {frames * height * width} tokens, "
                f"but the sequence has {length}"
            )
        xz = self.in_proj(x).transpose(1, 2)  # [B, 2*d_inner, L]
        forward = self._scan("", xz)
        backward = self._scan("_b", xz.flip(-1)).flip(-1)
        # Frame-major [.., T, HW] -> location-major [.., HW, T] and back after the scan.
        per_location = xz.unflatten(-1, (frames, height * width)).transpose(-1, -2).flatten(-2)
        temporal = self._scan("_s", per_location)
        temporal = temporal.unflatten(-1, (height * width, frames)).transpose(-1, -2).flatten(-2)
        mixed = (forward + backward + temporal) / 3
        return self.out_proj(mixed.transpose(1, 2))

    def _scan(self, suffix: str, xz: torch.Tensor) -> torch.Tensor:
        """One gated selective scan of [B, 2*d_inner, L] -> [B, d_inner, L]."""
        length = xz.shape[-1]
        x, z = xz.chunk(2, dim=1)
        conv = getattr(self, f"conv1d{suffix}")
        x = F.silu(conv(x)[..., :length])  # causal: keep the first L outputs of the padded conv
        params = getattr(self, f"x_proj{suffix}")(x.transpose(1, 2))  # [B, L, rank + 2N]
        dt, B, C = params.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt_proj = getattr(self, f"dt_proj{suffix}")
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)  # bias is applied inside the scan
        A = -torch.exp(getattr(self, f"A{suffix}_log").float())
        return selective_scan(
            x,
            delta,
            A,
            B.transpose(1, 2),
            C.transpose(1, 2),
            getattr(self, f"D{suffix}").float(),
            z=z,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
        )


def _init_dt_proj(layer: nn.Linear, rank: int, dt_min: float, dt_max: float, floor: float) -> None:
    """Mamba's init: softplus(bias) log-uniform in [dt_min, dt_max], weights ~ U(+-rank^-0.5)."""
    with torch.no_grad():
        bound = rank**-0.5
        layer.weight.uniform_(-bound, bound)
        dt = torch.exp(
            torch.rand(layer.out_features) * (math.log(dt_max) - math.log(dt_min))
            + math.log(dt_min)
        ).clamp(min=floor)
        layer.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus


class GRN(nn.Module):
    """ConvNeXt-V2 global response normalisation over the tokens of a [B, L, C] sequence.

    norm="tokens" is the ConvNeXt-V2 definition: each channel's L2 norm over the tokens, divided
    by that norm's mean over channels. The released ReSurgSAM2 code takes the norm over tokens
    *and* channels, which makes the ratio ~1 and the layer an affine skip (`gamma*x + beta + x`);
    norm="tokens_and_channels" reproduces it for its checkpoints.
    """

    def __init__(self, dim: int, norm: GRNNorm = "tokens") -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (1,) if self.norm == "tokens" else (1, 2)
        strength = torch.linalg.vector_norm(x, ord=2, dim=dims, keepdim=True)
        ratio = strength / (strength.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * ratio) + self.beta + x


class FrameDepthwiseConv(nn.Module):
    """7x7 depthwise convolution applied to each frame of a [B, T*H*W, C] token sequence."""

    def __init__(self, dim: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor, vol_sizes: tuple[int, int, int]) -> torch.Tensor:
        batch, _, channels = x.shape
        frames, height, width = vol_sizes
        maps = x.reshape(batch * frames, height, width, channels).permute(0, 3, 1, 2)
        maps = self.dwconv(maps)
        return maps.permute(0, 2, 3, 1).reshape(batch, frames * height * width, channels)


class DWMLP(nn.Module):
    """Per-frame depthwise conv, LN, Linear d->hidden, GELU, GRN, Linear hidden->d."""

    def __init__(self, dim: int, hidden: int, grn_norm: GRNNorm = "tokens") -> None:
        super().__init__()
        self.dwconv = FrameDepthwiseConv(dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.grn = GRN(hidden, grn_norm)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, vol_sizes: tuple[int, int, int]) -> torch.Tensor:
        x = self.norm(self.dwconv(x, vol_sizes))
        return self.fc2(self.grn(self.act(self.fc1(x))))


class MambaLayer(nn.Module):
    """x + DropPath(Mamba(LN(x))), then x + DropPath(DWMLP(LN(x)))."""

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        mlp_ratio: int = 4,
        drop_path: float = 0.0,
        grn_norm: GRNNorm = "tokens",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mamba = SpatioTemporalMamba(dim, d_state=d_state, d_conv=d_conv, expand=expand)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = DWMLP(dim, mlp_ratio * dim, grn_norm)
        self.drop_path = DropPath(drop_path)
        self._init_weights()

    def _init_weights(self) -> None:
        # Truncated-normal linears as in the reference; dt_proj keeps Mamba's own init.
        dt_projs = {getattr(self.mamba, f"dt_proj{s}") for s in _SCANS}
        for module in self.modules():
            if isinstance(module, nn.Linear) and module not in dt_projs:
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, vol_sizes: tuple[int, int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.mamba(self.norm1(x), vol_sizes))
        return x + self.drop_path(self.mlp(self.norm2(x), vol_sizes))
