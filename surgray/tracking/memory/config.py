"""Configs of the memory-bank policies: one pydantic model per policy, told apart by `name`.

Defaults are the published settings (SAM2, SurgSAM2, ReSurgSAM2 and SAM2S papers and code). The shared
numbers must agree with the model's (`num_maskmem` with the checkpoint's `maskmem_tpos_enc`
rows, `max_obj_ptrs` with its `max_obj_ptrs_in_encoder`); the tracker checks that.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class _PolicyConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Temporal slots: one for conditioning frames + (num_maskmem - 1) previous frames.
    num_maskmem: int = Field(7, ge=1)
    use_obj_ptrs: bool = True
    # Pointers from at most this many frames: the selected conditioning frames plus up to
    # max_obj_ptrs - 1 previous frames.
    max_obj_ptrs: int = Field(16, ge=1)
    # r in XMem/Cutie: previous memories are the last frame plus every r-th frame before it.
    temporal_stride: int = Field(1, ge=1)
    # At most this many conditioning frames in attention, the temporally closest (-1: all).
    max_cond_frames_in_attn: int = -1
    # Pointers of conditioning frames only when they are not ahead in the tracking direction.
    only_past_pointers: bool = True

    @model_validator(mode="after")
    def _check_cond_limit(self):
        if self.max_cond_frames_in_attn != -1 and self.max_cond_frames_in_attn < 2:
            raise ValueError(
                "max_cond_frames_in_attn must be -1 (all) or at least 2 (the closest "
                f"conditioning frames before and after the current one), got {self.max_cond_frames_in_attn}"
            )
        return self


class RecentPolicyConfig(_PolicyConfigBase):
    """SAM2's default: conditioning frames + the most recent frames + object pointers."""

    name: Literal["recent"] = "recent"


class PrunePolicyConfig(_PolicyConfigBase):
    """SurgSAM2 efficient frame pruning: cap the spatial memories by dropping redundant ones."""

    name: Literal["prune"] = "prune"
    # num_maskmem - num_frame_to_prune (7 - 2) in the released SAM2.1 configs.
    max_spatial: int = Field(5, ge=2)


class DLMPolicyConfig(_PolicyConfigBase):
    """ReSurgSAM2 diversity-driven long-term memory."""

    name: Literal["dlm"] = "dlm"
    candidate_pool: int = Field(5, ge=1)  # N_p
    iou_gate: float = Field(
        0.95, ge=0.0, le=1.0
    )  # gamma_iou: candidates need predicted IoU above it
    bank_size: int = Field(4, ge=1)  # N_l: 4 in the paper, 3 in the released code (preset)
    similarity: Literal["channel", "width_axis"] = "channel"


class DiveMemPolicyConfig(_PolicyConfigBase):
    """SAM2S DiveMem long-term memory (inference side)."""

    name: Literal["divemem"] = "divemem"
    stability_window: int = Field(5, ge=1)  # Delta: consecutive confident frames before a candidate
    iou_gate: float = Field(0.95, ge=0.0, le=1.0)
    bank_size: int = Field(4, ge=1)  # N_l, besides the permanent initial conditioning frame
    candidate_pool: int = Field(5, ge=1)  # the paper leaves it open; DLM's N_p
    # "Stably present": besides the IoU, the object-score logit must say the object is there.
    require_object_present: bool = True
    similarity: Literal["channel", "pooled"] = "channel"


MemoryPolicyConfig = Annotated[
    RecentPolicyConfig | PrunePolicyConfig | DLMPolicyConfig | DiveMemPolicyConfig,
    Field(discriminator="name"),
]

_ADAPTER: TypeAdapter = TypeAdapter(MemoryPolicyConfig)


def parse_policy_config(data: dict | BaseModel) -> MemoryPolicyConfig:
    """A policy config from a mapping such as `{"name": "dlm", "bank_size": 3}`."""
    if isinstance(data, _PolicyConfigBase):
        return data
    return _ADAPTER.validate_python(data)


def resurgsam2_dlm_preset() -> DLMPolicyConfig:
    """DLM as the released ReSurgSAM2 code runs it (`num_long_mem_frame = 3`)."""
    return DLMPolicyConfig(bank_size=3)
