"""`resurgsam2_released`: the configuration a released ReSurgSAM2 checkpoint runs with.

A released checkpoint (`{"model": state_dict}` from ReSurgSAM2's trainer) records no
configuration. Its code builds the model from `sam2.1_hiera_s_rvos.yaml`, overridden by the
training config (`configs/rvos_training/{17,18}/sam2.1_s_ref*_resurgsam.yaml`), and runs it
with the README's `tools/rvos_inference.py` command (`--apply_long_term_memory
--num_cifs_candidate_frame 5`, no `--apply_postprocessing`). The settings below are what that
code computes with; each one that differs from SAM2.1's video predictor (our defaults) or from
our referring defaults, and why:

| setting | released | SAM2.1 / ours | why |
|---|---|---|---|
| fusion GRN (`fusion.grn_norm`) | `tokens_and_channels` | `tokens` | their `GRN` takes `torch.norm(x, dim=(1, 2))` |
| text token on tracked frames (`tracked_text_token`) | on | off | `forward_text_emb: true`: `_forward_sam_heads` gets `text_emb_cls` on every frame |
| hole filling (`prompting.fill_hole_area`) | 0 | 8 | `apply_postprocessing` is off in their command |
| binarised memory of the selected frame (`memory.binarize_mask_from_pts_for_mem_enc`) | off | on | the same switch (their CIFS encodes it with `is_mask_from_pts=True`, a no-op then) |
| dynamic multimask (`mask_decoder.dynamic_multimask_via_stability`) | off | on | the same switch (no effect with 3 candidates, which they always decode) |
| lost objects search again (`cifs.lost_patience`) | never (None) | after 30 frames | their loop tracks to the end once a frame is selected |
| text objects' memory (`text_memory_policy`) | DLM, 3 long-term frames, `width_axis` similarity | the video's policy | `--apply_long_term_memory`, `num_long_mem_frame=3`, `torch.cosine_similarity(..., dim=-1)` |

Unchanged (already the released values): CIFS window 5 with thresholds 0.9 / 0.7 and one
candidate promoted; 3 stage-1 candidates ranked by predicted IoU, and 3 while tracking;
memories stored in bf16 (`memory.storage_dtype`); the DLM pool of 5 frames above IoU 0.95;
two earlier frames of sensory memory padded with the current one.

The fusion's sizes (text width, projection width, depth, Mamba state, ...) are read from the
checkpoint's tensors, so the same preset fits the published Hiera-S model and reduced ones.
Our own checkpoints never use this preset: they record the config they were trained with.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from surgray.model.referring.config import ReferringConfig
from surgray.model.referring.cstmamba import CSTMambaConfig
from surgray.model.sam2.config import ModelConfig

PRESET_NAME = "resurgsam2_released"
# Heads of their fusion attention: fixed in their code (`num_heads=8`), not in the tensors.
_RELEASED_FUSION_HEADS = 8
_RELEASED_TEXT_MEMORY_POLICY: dict[str, Any] = {
    "name": "dlm",
    "bank_size": 3,
    "candidate_pool": 5,
    "iou_gate": 0.95,
    "similarity": "width_axis",
}


def released_model_config(cfg: ModelConfig) -> ModelConfig:
    """The SAM2 network settings of the released inference (see the module table)."""
    return cfg.updated(
        prompting={"fill_hole_area": 0},
        memory={"binarize_mask_from_pts_for_mem_enc": False},
        mask_decoder={"dynamic_multimask_via_stability": False},
    )


def released_fusion_config(state_dict: dict[str, torch.Tensor], prefix: str = "") -> CSTMambaConfig:
    """CSTMamba sizes read from released-layout tensors (keys under `prefix`)."""

    def shape(key: str) -> tuple[int, ...]:
        return tuple(state_dict[prefix + key].shape)

    d_model = shape("cross_modal_fusion.cls_token.weight")[1]
    hidden, text_dim = shape("token_projection.layers.0.weight")
    block = "cross_modal_fusion.transformer.layers."
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := _index(k, prefix + block)))
    mamba = block + "0.mamba_layers."
    per_block = 1 + max(int(m.group(1)) for k in state_dict if (m := _index(k, prefix + mamba)))
    d_inner, d_state = shape(mamba + "0.mamba.A_log")
    mlp_hidden = shape(mamba + "0.mlp.fc1.weight")[0]
    token_mlp = shape(block + "0.mlp.layers.0.weight")[0]
    internal = shape(block + "0.cross_attn_token_to_image.q_proj.weight")[0]
    fusion_hidden = shape("sam_prompt_encoder.language_fusion_mlp.layers.0.weight")[0]
    return CSTMambaConfig(
        d_model=d_model,
        text_dim=text_dim,
        text_hidden_dim=hidden,
        depth=depth,
        num_heads=_RELEASED_FUSION_HEADS,
        attention_downsample_rate=d_model // internal,
        mlp_dim=token_mlp,
        mamba_layers_per_block=per_block,
        d_state=d_state,
        d_conv=shape(mamba + "0.mamba.conv1d.weight")[-1],
        expand=d_inner // d_model,
        dwmlp_ratio=mlp_hidden // d_model,
        grn_norm="tokens_and_channels",
        num_frames=shape("cross_modal_fusion.temporal_pos_embed")[1],
        forward_text_emb=True,
        fusion_hidden_dim=fusion_hidden,
    )


def _index(key: str, prefix: str) -> re.Match[str] | None:
    if not key.startswith(prefix):
        return None
    return re.match(r"(\d+)\.", key[len(prefix) :])


def resurgsam2_released(
    cfg: ModelConfig, state_dict: dict[str, torch.Tensor], text_encoder: str | None = None
) -> tuple[ModelConfig, ReferringConfig]:
    """(network config, referring config) for a released-layout state dict on `cfg`'s trunk.

    text_encoder: the CLIP text folder the fusion was trained with (B/32 for the published
    checkpoints); None leaves it to be attached later.
    """
    referring = ReferringConfig(
        fusion=released_fusion_config(state_dict),
        text_encoder=text_encoder,
        cifs=ReferringConfig().cifs.model_copy(update={"lost_patience": None}),
        tracked_text_token=True,
        text_memory_policy=dict(_RELEASED_TEXT_MEMORY_POLICY),
        preset=PRESET_NAME,
    )
    return released_model_config(cfg), referring
