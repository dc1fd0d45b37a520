"""ReSurgSAM2: SAM2 plus text-referred segmentation (stage 1 of research/methods.md §3).

`ReSurgSAM2` is a `SAM2Model` (so the tracker, the memory policies and the SAM2 checkpoints
work unchanged) with two more parts:

- `cross_modal_fusion`: the referring head, a `CSTMamba`. It holds everything ReSurgSAM2 adds
  for text: the token projection of CLIP features, the class token, the temporal encoding, the
  fusion blocks and `language_fusion_mlp`, so its keys form one subtree (the released code
  scatters three of them; `surgray.model.referring_checkpoint` maps between the two layouts).
- `semantic_head` (optional): SAM2S's temporal semantic learning head, which names the
  category of a tracked object among `ReferringConfig.categories`.

The CLIP text encoder is frozen and never saved, so it is held outside the module tree (not
in `state_dict()` or `parameters()`), but follows the model across `.to(device)`.

Stage 1 for N expressions on one frame (`refer`): CSTMamba fuses the texts with the frame's
stride-16 features and those of up to two earlier frames; the fused map gets the no-memory
embedding, as on SAM2's initial frame; the SAM decoder runs with no clicks (one padding click),
the no-mask dense embedding and, as extra sparse tokens, the fused class token and the fused
text embedding. With several candidate masks (SAM2.1's rule for prompts of zero clicks) the
one with the highest predicted IoU is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from surgray.model.config import ModelConfig
from surgray.model.cstmamba import CSTMamba, CSTMambaConfig
from surgray.model.frame_types import FrameFeatures, HeadsOutput
from surgray.model.heads import run_sam_heads, wants_multimask
from surgray.model.memory_readout import condition_on_memory
from surgray.model.sam2 import SAM2Model
from surgray.model.semantic_head import SemanticHead, SemanticHeadConfig
from surgray.model.text_encoder import TextEncoder, TextFeatures
from surgray.tracking.cifs import CIFSConfig


class ReferringConfig(BaseModel):
    """What ReSurgSAM2 adds to a SAM2 config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fusion: CSTMambaConfig = CSTMambaConfig()
    # transformers CLIP text directory (config.json, weights, tokenizer files): local or URI.
    text_encoder: str | None = None
    text_overflow: Literal["truncate", "error"] = "truncate"
    text_cache_size: int = Field(1024, ge=1)
    semantic_head: SemanticHeadConfig | None = None
    categories: tuple[str, ...] = ()  # names the semantic head chooses among
    cifs: CIFSConfig = CIFSConfig()  # default stage switch of text objects in the tracker


def check_referring_config(cfg: ModelConfig, referring: ReferringConfig) -> None:
    """Raise a ValueError naming every field that does not fit the SAM2 network."""
    problems = []
    if referring.fusion.d_model != cfg.hidden_dim:
        problems.append(
            f"fusion.d_model {referring.fusion.d_model} != the neck's d_model {cfg.hidden_dim}"
        )
    head = referring.semantic_head
    if head is not None:
        if head.d_model != cfg.hidden_dim:
            problems.append(f"semantic_head.d_model {head.d_model} != {cfg.hidden_dim}")
        if head.memory_dim != cfg.mem_dim:
            problems.append(f"semantic_head.memory_dim {head.memory_dim} != {cfg.mem_dim}")
    if referring.categories and head is None:
        problems.append("categories are given but there is no semantic_head to choose among them")
    if len(set(referring.categories)) != len(referring.categories):
        problems.append(f"categories repeat a name: {list(referring.categories)}")
    if problems:
        raise ValueError("referring config does not fit the model: " + "; ".join(problems))


class ReSurgSAM2(SAM2Model):
    """SAM2 + CSTMamba referring head (+ SAM2S semantic head). See the module docstring."""

    def __init__(
        self,
        cfg: ModelConfig,
        referring: ReferringConfig | None = None,
        text_encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__(cfg)
        referring = referring if referring is not None else _default_referring(cfg)
        check_referring_config(cfg, referring)
        self.referring_cfg = referring
        self.cross_modal_fusion = CSTMamba(referring.fusion)
        self.semantic_head = None
        if referring.semantic_head is not None:
            self.semantic_head = SemanticHead(referring.semantic_head)
        # A list, not an attribute: nn.Module would register the encoder as a submodule and
        # its (frozen, never saved) CLIP weights would enter state_dict() and parameters().
        self._text_slot: list[TextEncoder] = []
        self._category_cache: tuple[torch.Tensor, torch.device] | None = None
        if text_encoder is not None:
            self.text_encoder = text_encoder

    # ----------------------------------------------------------------- text
    @property
    def text_encoder(self) -> TextEncoder | None:
        return self._text_slot[0] if self._text_slot else None

    def __setattr__(self, name: str, value) -> None:
        # nn.Module would register a module assigned here as a submodule, past the property.
        if name == "text_encoder":
            self.set_text_encoder(value)
        else:
            super().__setattr__(name, value)

    def set_text_encoder(self, encoder: TextEncoder | None) -> None:
        """Attach (or with None, detach) the frozen CLIP text encoder; moved to the model's
        device, and checked against the fusion's text width."""
        self._text_slot.clear()
        self._category_cache = None
        if encoder is None:
            return
        width = self.referring_cfg.fusion.text_dim
        if encoder.width != width:
            raise ValueError(
                f"the text encoder's width is {encoder.width} but the fusion expects "
                f"text_dim {width}: they come from different CLIP models"
            )
        self._text_slot.append(encoder.to(self.device))

    def load_text_encoder(self, storage_options: dict | None = None) -> TextEncoder:
        """Load `referring_cfg.text_encoder` (a transformers CLIP text directory or URI)."""
        source = self.referring_cfg.text_encoder
        if source is None:
            raise ValueError("ReferringConfig.text_encoder is not set: no CLIP directory to load")
        encoder = TextEncoder.from_pretrained(
            source,
            storage_options=storage_options,
            cache_size=self.referring_cfg.text_cache_size,
            overflow=self.referring_cfg.text_overflow,
        )
        self.text_encoder = encoder
        return encoder

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for encoder in getattr(self, "_text_slot", ()):
            encoder._apply(fn, *args, **kwargs)
        self._category_cache = None
        return self

    def encode_text(self, texts: Sequence[str]) -> TextFeatures:
        """CLIP features of N expressions (cached per expression by the text encoder)."""
        encoder = self.text_encoder
        if encoder is None:
            raise RuntimeError(
                "this ReSurgSAM2 has no text encoder: set ReferringConfig.text_encoder and call "
                "load_text_encoder(), or assign model.text_encoder"
            )
        return encoder.encode(list(texts))

    # ----------------------------------------------------------------- stage 1
    def refer(
        self,
        features: FrameFeatures,
        text: TextFeatures,
        history: Sequence[torch.Tensor] = (),
    ) -> HeadsOutput:
        """Segment N expressions on one frame, without memory (ReSurgSAM2's stage 1).

        features: the frame (batch 1, shared by the N expressions); text: N expressions;
        history: stride-16 features [1, C, h, w] of up to `fusion.num_frames - 1` earlier
        frames, newest first (missing ones are padded with the current frame).
        """
        count = text.tokens.shape[0]
        fused = self.cross_modal_fusion(text, features.image_embed, list(history))
        feats = features.expand(count)
        image = condition_on_memory(self, fused.image_features, feats.image_pos, [None] * count)
        multimask = wants_multimask(self, has_memory=False, num_clicks=0)
        return run_sam_heads(
            self, image, feats.high_res, None, None, multimask, extra_tokens=fused.sparse_tokens
        )

    def refer_clip(
        self, frames: Sequence[FrameFeatures], expressions: Sequence[str]
    ) -> list[HeadsOutput]:
        """Stage 1 on consecutive frames (oldest first) for N expressions: frame i sees the
        frames before it as history. Training's `ReferringStage` (context frames, then the
        anchor frame)."""
        if not frames:
            raise ValueError("refer_clip needs at least one frame")
        text = self.encode_text(expressions)
        keep = self.referring_cfg.fusion.num_frames - 1
        outputs = []
        for i, frame in enumerate(frames):
            history = [frames[j].image_embed for j in range(i - 1, max(i - 1 - keep, -1), -1)]
            outputs.append(self.refer(frame, text, history))
        return outputs

    # ----------------------------------------------------------------- categories
    def category_embeddings(self) -> torch.Tensor:
        """[K, D] CLIP embeddings of `referring_cfg.categories` (CLIP's projected text
        embedding when the weights carry the projection, else the end-of-text state)."""
        names = self.referring_cfg.categories
        if not names:
            raise ValueError("ReferringConfig.categories is empty: nothing to classify into")
        cached = self._category_cache
        if cached is not None and cached[1] == self.device:
            return cached[0]
        text = self.encode_text(names)
        embeddings = text.projected if text.projected is not None else text.pooled
        self._category_cache = (embeddings, self.device)
        return embeddings


def _default_referring(cfg: ModelConfig) -> ReferringConfig:
    """ReSurgSAM2's fusion at the network's width (Hiera-S: 256, the published model)."""
    if cfg.hidden_dim == CSTMambaConfig().d_model:
        return ReferringConfig()
    return ReferringConfig(fusion=CSTMambaConfig(d_model=cfg.hidden_dim))


def referring_stage(
    model: ReSurgSAM2, frames: list[FrameFeatures], expressions: list[str]
) -> list[HeadsOutput]:
    """`surgray.train.step.ReferringStage` for a ReSurgSAM2 model."""
    return model.refer_clip(frames, expressions)
