"""CSTMamba: ReSurgSAM2's cross-modal spatial-temporal fusion of a text with a short clip.

Queries are a learnable class token followed by the projected CLIP tokens of the expression.
Keys are the stride-16 features of the current frame and of the two frames before it (the
"sensory memory"), with a 2-D sine position encoding plus a learned encoding of each frame's
temporal slot. Each of `depth` blocks runs: text self-attention -> two `MambaLayer`s over all
T*H*W vision tokens -> text->vision attention -> token MLP -> vision->text attention (each
residual + LayerNorm); a final text->vision attention + LayerNorm ends the stack.

Outputs (`FusionOutput`): the current frame's fused features, which replace the image features
going to the SAM mask decoder, and the sparse prompt tokens: the class token, plus the projected
text-CLS passed through `language_fusion_mlp` when `forward_text_emb` is on.

Frame order and temporal slots follow the released ReSurgSAM2 code, so that its checkpoints
behave the same: keys are [current, padding copies of current, history newest first]; with 3
slots the first padding copy and the newest history frame take slot 1 and later ones slot 2.
Text padding (several expressions of different lengths in one batch) is masked out of every
attention whose keys are text tokens, so a padded batch gives each expression's unpadded result.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from surgray.model.referring.mamba import GRNNorm, MambaLayer
from surgray.model.sam2.config import SinePositionConfig
from surgray.model.sam2.position_encoding import PositionEmbeddingSine
from surgray.model.sam2.two_way_transformer import Attention
from surgray.model.text.encoder import TextFeatures


class CSTMambaConfig(BaseModel):
    """Sizes of the fusion; defaults are ReSurgSAM2's (Hiera-S neck width 256, CLIP B/32 text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_model: int = 256
    text_dim: int = 512
    text_hidden_dim: int = 2048  # token_projection: text_dim -> hidden -> hidden -> d_model
    text_dropout: float = 0.1
    depth: int = 2
    num_heads: int = 8
    attention_downsample_rate: int = 2
    mlp_dim: int = 2048
    mlp_dropout: float = 0.1
    mamba_layers_per_block: int = 2
    drop_path_rate: float = 0.2  # rises linearly from 0 over all Mamba layers
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dwmlp_ratio: int = 4
    grn_norm: GRNNorm = "tokens"
    num_frames: int = 3  # current + history
    forward_text_emb: bool = True
    fusion_hidden_dim: int = 1024  # language_fusion_mlp: d_model -> hidden -> hidden -> d_model
    fusion_dropout: float = 0.2
    # Std of the fusion's linear layers (Mamba layers keep theirs). ReSurgSAM2's 0.02 suits its
    # 512/2048-wide layers; in a narrow fusion each layer shrinks the text several times (the
    # demo's 32/128 widths: ~400x over token_projection), so at init the fused outputs hardly
    # depend on the text. None scales each layer by its fan-in (std fan_in ** -0.5) instead.
    init_std: float | None = Field(0.02, gt=0)

    @classmethod
    def tiny(cls) -> CSTMambaConfig:
        """A few-thousand-parameter fusion for CPU tests."""
        return cls(
            d_model=32,
            text_dim=32,
            text_hidden_dim=64,
            num_heads=2,
            mlp_dim=64,
            d_state=4,
            expand=2,
            dwmlp_ratio=2,
            fusion_hidden_dim=64,
        )


@dataclass
class FusionOutput:
    image_features: torch.Tensor  # [B, C, h, w] the current frame's fused features
    sparse_tokens: torch.Tensor  # [B, 1 or 2, C] class token (+ fused text-CLS)


class DropoutMLP(nn.Module):
    """Linear layers with ReLU and dropout between them; parameters under `layers.{i}`."""

    def __init__(self, sizes: list[int], dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(F.relu(x))
        return x


def masked_attention(
    attn: Attention,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    """`attn(q, k, v)` with keys where key_mask [B, Nk] is False left out."""
    if key_mask is None:
        return attn(q, k, v)
    heads_q = attn.split_heads(attn.q_proj(q))
    heads_k = attn.split_heads(attn.k_proj(k))
    heads_v = attn.split_heads(attn.v_proj(v))
    dropout = attn.dropout_p if attn.training else 0.0
    out = F.scaled_dot_product_attention(
        heads_q, heads_k, heads_v, attn_mask=key_mask[:, None, None, :], dropout_p=dropout
    )
    return attn.out_proj(attn.merge_heads(out))


class FusionBlock(nn.Module):
    """Text self-attn, Mamba over vision, text->vision, token MLP, vision->text."""

    def __init__(self, cfg: CSTMambaConfig, first_block: bool, drop_paths: list[float]) -> None:
        super().__init__()
        d, heads, rate = cfg.d_model, cfg.num_heads, cfg.attention_downsample_rate
        self.first_block = first_block
        self.self_attn = Attention(d, heads)
        self.norm1 = nn.LayerNorm(d)
        self.mamba_layers = nn.ModuleList(
            MambaLayer(
                d,
                d_state=cfg.d_state,
                d_conv=cfg.d_conv,
                expand=cfg.expand,
                mlp_ratio=cfg.dwmlp_ratio,
                drop_path=p,
                grn_norm=cfg.grn_norm,
            )
            for p in drop_paths
        )
        self.cross_attn_token_to_image = Attention(d, heads, downsample_rate=rate)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = DropoutMLP([d, cfg.mlp_dim, d], cfg.mlp_dropout)
        self.norm3 = nn.LayerNorm(d)
        self.cross_attn_image_to_token = Attention(d, heads, downsample_rate=rate)
        self.norm4 = nn.LayerNorm(d)

    def forward(
        self,
        queries: torch.Tensor,  # [N, 1 + L, C] class + text tokens
        keys: torch.Tensor,  # [N, T*h*w, C] vision tokens, frame-major
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        query_mask: torch.Tensor,  # [N, 1 + L] True at real tokens
        vol_sizes: tuple[int, int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.first_block:
            # The first block's queries are their own encoding: no PE, no residual (as in SAM).
            queries = masked_attention(self.self_attn, queries, queries, queries, query_mask)
        else:
            q = queries + query_pe
            queries = queries + masked_attention(self.self_attn, q, q, queries, query_mask)
        queries = self.norm1(queries)
        for layer in self.mamba_layers:
            keys = layer(keys, vol_sizes)
        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        q = queries + query_pe
        attended = masked_attention(self.cross_attn_image_to_token, k, q, queries, query_mask)
        keys = self.norm4(keys + attended)
        return queries, keys


class CSTMamba(nn.Module):
    """Text + current frame + up to `num_frames - 1` earlier frames -> `FusionOutput`."""

    def __init__(self, cfg: CSTMambaConfig | None = None) -> None:
        super().__init__()
        cfg = cfg if cfg is not None else CSTMambaConfig()
        if cfg.num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        self.cfg = cfg
        d = cfg.d_model
        hidden = cfg.text_hidden_dim
        self.token_projection = DropoutMLP([cfg.text_dim, hidden, hidden, d], cfg.text_dropout)
        self.cls_token = nn.Embedding(1, d)
        self.temporal_pos_embed = nn.Parameter(torch.zeros(1, cfg.num_frames, d))
        self.position_encoding = PositionEmbeddingSine(SinePositionConfig(num_pos_feats=d))
        n_mamba = cfg.depth * cfg.mamba_layers_per_block
        rates = torch.linspace(0, cfg.drop_path_rate, n_mamba).tolist() if n_mamba else []
        per = cfg.mamba_layers_per_block
        self.layers = nn.ModuleList(
            FusionBlock(cfg, first_block=(i == 0), drop_paths=rates[i * per : (i + 1) * per])
            for i in range(cfg.depth)
        )
        rate = cfg.attention_downsample_rate
        self.final_attn_token_to_image = Attention(d, cfg.num_heads, downsample_rate=rate)
        self.norm_final_attn = nn.LayerNorm(d)
        self.language_fusion_mlp = None
        if cfg.forward_text_emb:
            fh = cfg.fusion_hidden_dim
            self.language_fusion_mlp = DropoutMLP([d, fh, fh, d], cfg.fusion_dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and ".mamba." not in f".{name}.":
                std = self.cfg.init_std or module.in_features**-0.5
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.temporal_pos_embed, std=0.02)

    def forward(
        self,
        text: TextFeatures,
        current: torch.Tensor,
        history: list[torch.Tensor] | tuple[torch.Tensor, ...] = (),
    ) -> FusionOutput:
        """text: N expressions ([N, L, text_dim] tokens, [N, L] mask, [N, text_dim] pooled).

        current: [1 or N, C, h, w] stride-16 features of the current frame; history: up to
        num_frames - 1 earlier frames' features of the same shape, newest first. Missing history
        is padded with copies of the current frame.
        """
        cfg = self.cfg
        n = text.tokens.shape[0]
        self._check(text, current, history)
        history = list(history)[: cfg.num_frames - 1]
        num_pad = cfg.num_frames - 1 - len(history)
        frames = [current] * (1 + num_pad) + history
        slots = (
            [0]
            + _temporal_slots(num_pad, cfg.num_frames)
            + _temporal_slots(len(history), cfg.num_frames)
        )
        _, c, h, w = current.shape
        spatial_pe = self.position_encoding(current[:1]).flatten(2).transpose(1, 2)  # [1, hw, C]
        keys = torch.cat([f.flatten(2).transpose(1, 2).expand(n, -1, -1) for f in frames], 1)
        key_pe = torch.cat([spatial_pe + self.temporal_pos_embed[:, s][:, None] for s in slots], 1)

        tokens = self.token_projection(text.tokens)
        cls = self.cls_token.weight[None].expand(n, -1, -1)
        queries = torch.cat([cls, tokens], dim=1)
        cls_mask = torch.ones(n, 1, dtype=torch.bool, device=text.mask.device)
        query_mask = torch.cat([cls_mask, text.mask.bool()], dim=1)
        query_pe = queries
        vol_sizes = (len(frames), h, w)
        for layer in self.layers:
            queries, keys = layer(queries, keys, query_pe, key_pe, query_mask, vol_sizes)
        attended = self.final_attn_token_to_image(queries + query_pe, keys + key_pe, keys)
        queries = self.norm_final_attn(queries + attended)

        image = keys[:, : h * w].transpose(1, 2).reshape(n, c, h, w)
        sparse = queries[:, :1]
        if self.language_fusion_mlp is not None:
            sparse = torch.cat([sparse, self.text_prompt_token(text)], dim=1)
        return FusionOutput(image_features=image, sparse_tokens=sparse)

    def text_prompt_token(self, text: TextFeatures) -> torch.Tensor:
        """[N, 1, C] the projected pooled text through `language_fusion_mlp`: the decoder's
        text token, which needs no image (the released model also gives it on tracked
        frames; see `ReferringConfig.tracked_text_token`)."""
        if self.language_fusion_mlp is None:
            raise ValueError("this fusion has no language_fusion_mlp (forward_text_emb is off)")
        return self.language_fusion_mlp(self.token_projection(text.pooled))[:, None]

    def _check(self, text: TextFeatures, current, history) -> None:
        cfg = self.cfg
        n = text.tokens.shape[0]
        if text.tokens.dim() != 3 or text.tokens.shape[-1] != cfg.text_dim:
            raise ValueError(
                f"text tokens must be [N, L, {cfg.text_dim}], got {tuple(text.tokens.shape)}"
            )
        if text.mask.shape != text.tokens.shape[:2]:
            raise ValueError(f"text mask {tuple(text.mask.shape)} must be [N, L]")
        if text.pooled.shape != (n, cfg.text_dim):
            raise ValueError(f"text pooled must be [{n}, {cfg.text_dim}]")
        if current.dim() != 4 or current.shape[1] != cfg.d_model or current.shape[0] not in (1, n):
            raise ValueError(
                f"current features must be [1 or {n}, {cfg.d_model}, h, w], "
                f"got {tuple(current.shape)}"
            )
        if len(history) > cfg.num_frames - 1:
            raise ValueError(
                f"{len(history)} history frames given, at most {cfg.num_frames - 1} are used"
            )
        for i, frame in enumerate(history):
            if frame.shape[1:] != current.shape[1:] or frame.shape[0] not in (1, n):
                raise ValueError(
                    f"history[{i}] has shape {tuple(frame.shape)}, current {tuple(current.shape)}"
                )


def _temporal_slots(count: int, num_frames: int) -> list[int]:
    """Slots of `count` consecutive non-current frames (reference rule: 1, then 2, 2, ...)."""
    if num_frames == 3:
        return [1 if j == 0 else 2 for j in range(count)]
    return [min(j + 1, num_frames - 1) for j in range(count)]


class SensoryMemory:
    """The last `num_previous` frames' stride-16 features of one video, newest first.

    Bounded: pushing a frame drops the oldest one beyond `num_previous`. Frames must arrive in
    increasing index order; the history handed out never includes the frame being processed.
    """

    def __init__(self, num_previous: int = 2, detach: bool = True) -> None:
        if num_previous < 0:
            raise ValueError("num_previous must be >= 0")
        self.num_previous = num_previous
        self.detach = detach
        self._frames: deque[tuple[int, torch.Tensor]] = deque(maxlen=num_previous)

    def __len__(self) -> int:
        return len(self._frames)

    def history(self) -> list[torch.Tensor]:
        """Stored features, newest first."""
        return [f for _, f in reversed(self._frames)]

    def frame_indices(self) -> list[int]:
        return [i for i, _ in reversed(self._frames)]

    def push(self, frame_idx: int, features: torch.Tensor) -> None:
        if self._frames and frame_idx <= self._frames[-1][0]:
            raise ValueError(
                f"frame {frame_idx} pushed after frame {self._frames[-1][0]}: frames must increase"
            )
        self._frames.append((frame_idx, features.detach() if self.detach else features))

    def reset(self) -> None:
        self._frames.clear()
