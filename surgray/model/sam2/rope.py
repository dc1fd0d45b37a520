"""2-D axial rotary position embedding (RoPE) for the memory attention.

Each attention head's channels are taken in adjacent pairs `(2i, 2i + 1)` and every pair is
rotated by an angle that depends on the token's position on the feature grid. The first half
of the pairs encode the column (x), the second half the row (y), each with the frequencies
`theta ** (-4 j / head_dim)` for `j = 0 .. head_dim / 4 - 1`. Tokens are numbered row-major,
so token `t` of an `h x w` map sits at column `t % w`, row `t // w` (the layout of
`feature_map.flatten(2)`).

Float32 inputs are rotated as complex numbers (each pair a complex value, multiplied by a
unit complex table): one vectorised kernel that writes each output once, identical in bits to
the real form (cos/sin tables) on the CPUs measured, and 3x faster than writing the even and odd
channels through strided views (benchmarks/bench_rope.py). The table is broadcast over memory
maps rather than repeated (complex `repeat` is not implemented on every device). Other dtypes
take the real form.
"""

from __future__ import annotations

import math

import torch


class AxialRotaryEmbedding:
    """Rotation tables for one head width, computed per feature-map size and cached.

    Not an `nn.Module`: it holds no parameters and no buffers, so it adds nothing to state
    dicts (the reference keeps its table as a plain attribute too).
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        if head_dim <= 0 or head_dim % 4 != 0:
            raise ValueError(f"axial RoPE needs a head dimension divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta
        self._cache: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._cis_cache: dict[tuple[int, int, str], torch.Tensor] = {}

    def angles(self, height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Rotation angle of every (token, channel pair): [height * width, head_dim // 2], float32."""
        quarter = self.head_dim // 4
        freqs = 1.0 / (
            self.theta
            ** (torch.arange(0, self.head_dim, 4, device=device)[:quarter].float() / self.head_dim)
        )
        token = torch.arange(height * width, dtype=torch.float32, device=device)
        col = token % width
        row = torch.div(token, width, rounding_mode="floor")
        return torch.cat([torch.outer(col, freqs), torch.outer(row, freqs)], dim=-1)

    def tables(
        self, height: int, width: int, device: torch.device | str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) tables, [height * width, head_dim // 2] each, cached per (size, device)."""
        if height <= 0 or width <= 0:
            raise ValueError(f"feature map size must be positive, got {height}x{width}")
        key = (int(height), int(width), str(torch.device(device)))
        if key not in self._cache:
            ang = self.angles(height, width, device)
            self._cache[key] = (ang.cos(), ang.sin())
        return self._cache[key]

    def cis_table(self, height: int, width: int, device: torch.device | str) -> torch.Tensor:
        """cos + i sin of every angle, [height * width, head_dim // 2] complex64, cached."""
        key = (int(height), int(width), str(torch.device(device)))
        if key not in self._cis_cache:
            cos, sin = self.tables(height, width, device)
            self._cis_cache[key] = torch.complex(cos, sin)
        return self._cis_cache[key]

    def rotate(
        self,
        x: torch.Tensor,
        height: int,
        width: int,
        repeat: int = 1,
        num_exclude: int = 0,
        inplace: bool = False,
    ) -> torch.Tensor:
        """Rotate `x` [..., L, head_dim] by token position.

        `repeat`: x holds `repeat` consecutive maps of `height * width` tokens (memory frames);
        each gets the same rotation. `num_exclude`: that many trailing tokens (object pointers)
        are left unrotated; they have no position on the grid. `inplace`: overwrite `x` and
        return it where it can (float32, autograd not recording), for a caller that owns `x`;
        elsewhere a new tensor as without it.
        """
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"expected head dimension {self.head_dim}, got {x.shape[-1]}")
        if num_exclude < 0:
            raise ValueError(f"num_exclude must be >= 0, got {num_exclude}")
        num_rot = x.shape[-2] - num_exclude
        if num_rot < 0:
            raise ValueError(
                f"cannot exclude {num_exclude} tokens from a sequence of {x.shape[-2]}"
            )
        if num_rot != repeat * height * width:
            raise ValueError(
                f"{num_rot} rotated tokens do not make {repeat} map(s) of {height}x{width} tokens"
            )
        if num_rot == 0:
            return x
        if x.dtype == torch.float32 and _complex_view_ok(x):
            cis = self.cis_table(height, width, x.device)
            if x.requires_grad and torch.is_grad_enabled():
                return _rotate_complex_autograd(x, cis, repeat, num_rot)
            return _rotate_complex_into(x, cis, repeat, num_rot, inplace)
        return self.rotate_real(x, height, width, repeat, num_rot)

    def rotate_real(
        self, x: torch.Tensor, height: int, width: int, repeat: int, num_rot: int
    ) -> torch.Tensor:
        """The real form of the rotation (cos/sin tables), for any dtype; `rotate` checks
        the arguments. The reference the complex kernel is tested against."""
        cos, sin = self.tables(height, width, x.device)
        if repeat > 1:
            cos, sin = cos.repeat(repeat, 1), sin.repeat(repeat, 1)
        head = x[..., :num_rot, :].float()
        even, odd = head[..., 0::2], head[..., 1::2]
        rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
        rotated = rotated.to(x.dtype)
        if num_rot == x.shape[-2]:
            return rotated
        return torch.cat([rotated, x[..., num_rot:, :]], dim=-2)


def _complex_view_ok(x: torch.Tensor) -> bool:
    """Whether `x`'s channel pairs can be viewed as complex numbers in place (unit stride on
    the channels, every other stride even), which `torch.view_as_complex` needs."""
    return (
        x.stride(-1) == 1
        and x.storage_offset() % 2 == 0
        and all(stride % 2 == 0 for size, stride in zip(x.shape[:-1], x.stride()[:-1]) if size > 1)
    )


def _as_complex(x: torch.Tensor, repeat: int, num_rot: int) -> torch.Tensor:
    """The first `num_rot` tokens of `x` as complex pairs, split into `repeat` maps."""
    pairs = torch.view_as_complex(x[..., :num_rot, :].unflatten(-1, (-1, 2)))
    if repeat > 1:  # memory maps side by side share one table: broadcast over the maps
        pairs = pairs.unflatten(-2, (repeat, num_rot // repeat))
    return pairs


def _rotate_complex_into(
    x: torch.Tensor, cis: torch.Tensor, repeat: int, num_rot: int, inplace: bool = False
) -> torch.Tensor:
    """Inference: the rotated tokens written straight into one output buffer (no repeated
    table, no intermediate, no concatenation with the unrotated tokens); into `x` itself when
    `inplace` (an elementwise product may write over its input)."""
    if inplace:
        torch.mul(_as_complex(x, repeat, num_rot), cis, out=_as_complex(x, repeat, num_rot))
        return x
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if num_rot < x.shape[-2]:
        out[..., num_rot:, :] = x[..., num_rot:, :]
    torch.mul(_as_complex(x, repeat, num_rot), cis, out=_as_complex(out, repeat, num_rot))
    return out


def _rotate_complex_autograd(
    x: torch.Tensor, cis: torch.Tensor, repeat: int, num_rot: int
) -> torch.Tensor:
    """Training: the same product out of place, so autograd records it."""
    rotated = _as_complex(x, repeat, num_rot) * cis
    if repeat > 1:
        rotated = rotated.flatten(-3, -2)
    rotated = torch.view_as_real(rotated).flatten(-2)
    if num_rot == x.shape[-2]:
        return rotated
    return torch.cat([rotated, x[..., num_rot:, :]], dim=-2)


def grid_size(
    num_tokens: int,
    feat_hw: tuple[int, int] | None = None,
    configured_wh: tuple[int, int] | None = None,
) -> tuple[int, int]:
    """(height, width) of the grid behind `num_tokens` query tokens.

    An explicit `feat_hw` wins; else the configured size when it matches (given as (w, h), the
    reference's order); else a square grid, which is what the reference assumes at run time.
    """
    if feat_hw is not None:
        h, w = feat_hw
        if h * w != num_tokens:
            raise ValueError(f"feat_hw {feat_hw} does not match {num_tokens} query tokens")
        return int(h), int(w)
    if configured_wh is not None and configured_wh[0] * configured_wh[1] == num_tokens:
        return int(configured_wh[1]), int(configured_wh[0])
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(
            f"{num_tokens} query tokens do not form a square map; pass feat_hw=(height, width)"
        )
    return side, side
