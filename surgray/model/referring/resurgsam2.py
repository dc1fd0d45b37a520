"""ReSurgSAM2: SAM2 plus text-referred segmentation (ReSurgSAM2, MICCAI 2025: its stage 1).

Its settings are a `ReferringConfig` (`surgray.model.referring.config`).

`ReSurgSAM2` is a `SAM2Model` (so the tracker, the memory policies and the SAM2 checkpoints
work unchanged) with these additions:

- `cross_modal_fusion`: the referring head, a `CSTMamba`. It holds everything ReSurgSAM2 adds
  for text: the token projection of CLIP features, the class token, the temporal encoding, the
  fusion blocks and `language_fusion_mlp`, so its keys form one subtree (the released code
  scatters three of them; `surgray.model.checkpoints.referring_checkpoint` maps between the
  two layouts).
- `semantic_head` (optional): SAM2S's temporal semantic learning head, which names the
  category of a tracked object among `ReferringConfig.categories`.
- `text_pixel` (optional, ours): a stride-8 text-pixel term added to the stage-1 mask logits
  (`surgray.model.referring.text_pixel`), for networks whose stride-16 map is too coarse to tell
  categories apart.
- `category_probes` (optional, training only): linear classifiers over
  `ReferringConfig.grounding_categories` whose losses keep the fused text and the image
  features naming categories (`surgray.model.referring.category_probes`).

The text features come from one of two places:

- `ReferringConfig.text_encoder`: the published setting, a frozen CLIP text encoder loaded from
  a folder. It is never saved, so it is held outside the module tree (not in `state_dict()` or
  `parameters()`), but follows the model across `.to(device)`.
- `ReferringConfig.text_tower`: a small CLIP-architecture tower built fresh and registered as
  the submodule `text_tower` (`surgray.model.text.tower`), so it is trained with the fusion,
  saved in the checkpoint and moved, cast and all-reduced like any other part. In training
  mode its features carry gradients and no cache is used; in eval mode they are cached, and
  the caches are dropped on `train()`/`eval()`, on a state-dict load and on any in-place
  weight update.

Stage 1 for N expressions on one frame (`refer`): CSTMamba fuses the texts with the frame's
stride-16 features and those of up to two earlier frames; the fused map gets the no-memory
embedding, as on SAM2's initial frame; the SAM decoder runs with no clicks (one padding click),
the no-mask dense embedding and, as extra sparse tokens, the fused class token and the fused
text embedding. With several candidate masks (SAM2.1's rule for prompts of zero clicks) the
one with the highest predicted IoU is kept; `ReferringConfig.stage1_multimask=False` decodes a
single mask instead. With `ReferringConfig.text_pixel` the head's stride-8 term is added to the
decoder's masks before the object-score decision.

Tracked frames (`track_frame`): as SAM2's, except that with `ReferringConfig.tracked_text_token`
(the released model's `forward_text_emb`) text objects also give the decoder their projected
text token (`surgray.model.referring.tracking`). A released checkpoint gets the settings its
code runs with from `surgray.model.checkpoints.resurgsam2_released`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from surgray.io.storage import LOCAL, Storage
from surgray.model.referring.category_probes import CategoryProbes
from surgray.model.referring.config import (
    ReferringConfig,
    check_referring_config,
    default_referring,
)
from surgray.model.referring.cstmamba import CSTMamba
from surgray.model.referring.semantic_head import SemanticHead
from surgray.model.referring.text_pixel import TextPixelHead
from surgray.model.referring.tracking import track_frame_with_text
from surgray.model.sam2.config import ModelConfig
from surgray.model.sam2.frame_types import FrameFeatures, FrameOutput, HeadsOutput, ObjectPrompt
from surgray.model.sam2.memory_types import MemorySelection
from surgray.model.sam2.network import SAM2Model
from surgray.model.text.encoder import TextEncoder, TextFeatures
from surgray.model.text.tower import build_text_tower


class ReSurgSAM2(SAM2Model):
    """SAM2 + CSTMamba referring head (+ SAM2S semantic head). See the module docstring."""

    def __init__(
        self,
        cfg: ModelConfig,
        referring: ReferringConfig | None = None,
        text_encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__(cfg)
        referring = referring if referring is not None else default_referring(cfg)
        check_referring_config(cfg, referring)
        self.referring_cfg = referring
        self.cross_modal_fusion = CSTMamba(referring.fusion)
        self.semantic_head = None
        if referring.semantic_head is not None:
            self.semantic_head = SemanticHead(referring.semantic_head)
        # A list, not an attribute: nn.Module would register the encoder as a submodule and
        # its (frozen, never saved) CLIP weights would enter state_dict() and parameters().
        self._text_slot: list[TextEncoder] = []
        self._category_cache: _CategoryCache | None = None
        self.text_tower: TextEncoder | None = None
        if referring.text_tower is not None:
            # A real submodule: trained, saved (`text_tower.*`), moved and all-reduced.
            self.text_tower = build_text_tower(
                referring.text_tower, referring.text_cache_size, referring.text_overflow
            )
        if text_encoder is not None:
            self.text_encoder = text_encoder
        self.category_probes = None
        if referring.grounding_categories:
            self.category_probes = CategoryProbes(
                cfg.hidden_dim, len(referring.grounding_categories)
            )
        self.text_pixel = None
        if referring.text_pixel is not None:
            # The decoder's projected stride-8 map when the network has high-resolution
            # features, else the stride-16 map itself.
            decoder = self.sam_mask_decoder
            pixel_dim = (
                decoder.conv_s1.out_channels if decoder.use_high_res_features else cfg.hidden_dim
            )
            self.text_pixel = TextPixelHead(referring.text_pixel, cfg.hidden_dim, pixel_dim)

    # ----------------------------------------------------------------- text
    @property
    def text_encoder(self) -> TextEncoder | None:
        """The encoder `encode_text` uses: the embedded tower, else the attached frozen one."""
        if self.text_tower is not None:
            return self.text_tower
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
        if self.text_tower is not None:
            raise ValueError(
                "this ReSurgSAM2 embeds its own text tower (ReferringConfig.text_tower): it "
                "takes no external text encoder"
            )
        width = self.referring_cfg.fusion.text_dim
        if encoder.width != width:
            raise ValueError(
                f"the text encoder's width is {encoder.width} but the fusion expects "
                f"text_dim {width}: they come from different CLIP models"
            )
        self._text_slot.append(encoder.to(self.device))

    def load_text_encoder(self, *, storage: Storage = LOCAL) -> TextEncoder:
        """Load `referring_cfg.text_encoder` (a transformers CLIP text directory or URI); with
        an embedded text tower there is nothing to load and the tower is returned."""
        if self.text_tower is not None:
            return self.text_tower
        source = self.referring_cfg.text_encoder
        if source is None:
            raise ValueError("ReferringConfig.text_encoder is not set: no CLIP directory to load")
        encoder = TextEncoder.from_pretrained(
            source,
            storage=storage,
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

    def train(self, mode: bool = True) -> ReSurgSAM2:
        self._category_cache = None  # trained weights make cached category embeddings stale
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._category_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    def encode_text(self, texts: Sequence[str]) -> TextFeatures:
        """CLIP features of N expressions: cached per expression by the text encoder, except
        for an embedded tower in training mode (then they carry gradients)."""
        encoder = self.text_encoder
        if encoder is None:
            raise RuntimeError(
                "this ReSurgSAM2 has no text encoder: set ReferringConfig.text_encoder and call "
                "load_text_encoder(), set ReferringConfig.text_tower, or assign "
                "model.text_encoder"
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
        image = self.memory_readout.condition(fused.image_features, feats.image_pos, [None] * count)
        sam_heads = self.sam_heads
        multimask = self.referring_cfg.stage1_multimask and sam_heads.wants_multimask(
            has_memory=False, num_clicks=0
        )
        mask_bias = None
        if self.text_pixel is not None:
            mask_bias = self.text_pixel.for_frame(fused.sparse_tokens[:, -1], feats)
        heads = sam_heads.run(
            image, feats.high_res, None, None, multimask, fused.sparse_tokens, mask_bias
        )
        return replace(heads, fusion_tokens=fused.sparse_tokens)

    # ----------------------------------------------------------------- tracking
    def text_prompt_token(self, text: TextFeatures) -> torch.Tensor:
        """[N, 1, C] decoder token of N expressions on tracked frames (`tracked_text_token`)."""
        return self.cross_modal_fusion.text_prompt_token(text)

    def track_frame(
        self,
        features: FrameFeatures,
        selections: Sequence[MemorySelection | None],
        frame_idx: int,
        prompts: Sequence[ObjectPrompt | None] | None = None,
        num_frames: int | None = None,
        multimask: bool | None = None,
        is_conditioning: Sequence[bool] | None = None,
        run_memory_encoder: bool = True,
    ) -> FrameOutput:
        """`SAM2Model.track_frame`, where objects whose selection is a `TextMemorySelection`
        (text objects of a `tracked_text_token` model, without a prompt on the frame) give
        their text token to the decoder as an extra sparse prompt, as the released model does
        on every tracked frame. The other objects run unchanged."""
        return track_frame_with_text(
            self,
            super().track_frame,
            features,
            selections,
            frame_idx,
            prompts,
            (num_frames, multimask, is_conditioning, run_memory_encoder),
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
        tower = self.text_tower
        if tower is not None and tower.uses_autograd:
            text = self.encode_text(names)  # fresh, with gradients: never cached
            return text.projected if text.projected is not None else text.pooled
        version = tower.weights_version() if tower is not None else ()
        cached = self._category_cache
        if cached is not None and cached.device == self.device and cached.version == version:
            return cached.embeddings
        text = self.encode_text(names)
        embeddings = text.projected if text.projected is not None else text.pooled
        self._category_cache = _CategoryCache(embeddings, self.device, version)
        return embeddings


@dataclass(frozen=True)
class _CategoryCache:
    embeddings: torch.Tensor
    device: torch.device
    version: tuple[int, ...]  # the embedded tower's weights_version(); () for a frozen encoder


def referring_stage(
    model: ReSurgSAM2, frames: list[FrameFeatures], expressions: list[str]
) -> list[HeadsOutput]:
    """`surgray.train.step.ReferringStage` for a ReSurgSAM2 model."""
    return model.refer_clip(frames, expressions)
