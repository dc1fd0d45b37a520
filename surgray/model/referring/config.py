"""What ReSurgSAM2 adds to a SAM2 config (`ReferringConfig`), and the checks that it fits.

The referring parts it configures: the CSTMamba fusion (`surgray.model.referring.cstmamba`),
where the text features come from (a frozen CLIP folder, `text_encoder`, or a tower trained
inside the model, `text_tower`), SAM2S's semantic head and its categories, the training-only
category probes, the text-pixel head, the CIFS switch of text objects and the released
model's tracked text token. `check_referring_config` names every field that does not fit the
SAM2 network; `default_referring` is ReSurgSAM2's fusion at a network's width.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from surgray.model.referring.cifs_config import CIFSConfig
from surgray.model.referring.cstmamba import CSTMambaConfig
from surgray.model.referring.semantic_head import SemanticHeadConfig
from surgray.model.referring.text_pixel import TextPixelConfig
from surgray.model.sam2.config import ModelConfig
from surgray.model.text.tower import TextTowerConfig


class ReferringConfig(BaseModel):
    """What ReSurgSAM2 adds to a SAM2 config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fusion: CSTMambaConfig = CSTMambaConfig()
    # transformers CLIP text directory (config.json, weights, tokenizer files): local or URI.
    text_encoder: str | None = None
    # Or a small tower trained and saved with the model (exclusive with text_encoder).
    text_tower: TextTowerConfig | None = None
    text_overflow: Literal["truncate", "error"] = "truncate"
    text_cache_size: int = Field(1024, ge=1)
    semantic_head: SemanticHeadConfig | None = None
    categories: tuple[str, ...] = ()  # names the semantic head chooses among
    # Vocabulary of the training-only category probes (`surgray.model.referring.category_probes`):
    # instrument and tissue names whose losses (`loss.text_category`, `loss.pixel_category`)
    # keep the fused text and the image features telling categories apart. Empty: no probes.
    grounding_categories: tuple[str, ...] = ()
    # A stride-8 text-pixel term on stage-1 masks (`surgray.model.referring.text_pixel`);
    # None: off, as in ReSurgSAM2.
    text_pixel: TextPixelConfig | None = None
    cifs: CIFSConfig = CIFSConfig()  # default stage switch of text objects in the tracker
    # Stage 1 decodes 3 candidates and keeps the one with the highest predicted IoU, as
    # ReSurgSAM2 does. With one mask the loss makes the fused text choose the object itself
    # instead of leaving the choice to the IoU head (the small demo model grounds text better).
    stage1_multimask: bool = True
    # Tracked frames of text objects also get the projected text token
    # (`language_fusion_mlp(token_projection(pooled text))`) as a sparse prompt to the
    # decoder, as the released model does (`forward_text_emb`). Off: stage-1 frames only,
    # what our checkpoints were trained with.
    tracked_text_token: bool = False
    # The memory policy of text objects (`{"name": "dlm", ...}`, parsed by the tracker);
    # None: the video's policy. The released preset names the released DLM.
    text_memory_policy: dict[str, Any] | None = None
    # Which preset made this config (`resurgsam2_released` for released checkpoints), if any.
    preset: str | None = None

    @model_validator(mode="after")
    def _one_text_source(self) -> ReferringConfig:
        if self.text_encoder is not None and self.text_tower is not None:
            raise ValueError(_BOTH_TEXT_SOURCES)
        return self


_BOTH_TEXT_SOURCES = (
    "text_encoder and text_tower are both set: use text_encoder for a frozen CLIP folder or "
    "text_tower for a tower trained inside the model, not both"
)


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
    tower = referring.text_tower
    if tower is not None:
        if referring.text_encoder is not None:  # model_copy(update=...) skips the validator
            problems.append(_BOTH_TEXT_SOURCES)
        if referring.fusion.text_dim != tower.token_width:
            problems.append(
                f"fusion.text_dim {referring.fusion.text_dim} != text_tower.width "
                f"{tower.token_width}"
            )
        if head is not None and head.text_dim != tower.embedding_width:
            source = "projection_dim" if tower.projection_dim is not None else "width"
            problems.append(
                f"semantic_head.text_dim {head.text_dim} != text_tower.{source} "
                f"{tower.embedding_width}"
            )
    if referring.tracked_text_token and not referring.fusion.forward_text_emb:
        problems.append(
            "tracked_text_token needs fusion.forward_text_emb (its language_fusion_mlp)"
        )
    if referring.categories and head is None:
        problems.append("categories are given but there is no semantic_head to choose among them")
    for field in ("categories", "grounding_categories"):
        names = getattr(referring, field)
        if len(set(names)) != len(names):
            problems.append(f"{field} repeat a name: {list(names)}")
    if problems:
        raise ValueError("referring config does not fit the model: " + "; ".join(problems))


def default_referring(cfg: ModelConfig) -> ReferringConfig:
    """ReSurgSAM2's fusion at the network's width (Hiera-S: 256, the published model)."""
    if cfg.hidden_dim == CSTMambaConfig().d_model:
        return ReferringConfig()
    return ReferringConfig(fusion=CSTMambaConfig(d_model=cfg.hidden_dim))
