"""ReSurgSAM2 checkpoints: the released layout, ours, strict loading and building.

A released ReSurgSAM2 checkpoint (`{"model": state_dict}` from its trainer) holds the SAM2.1
keys unchanged plus the referring parts under the names of its `SAM2Base`. Ours keep every
referring parameter under `cross_modal_fusion.` (see `surgray.model.referring.resurgsam2`).
The mapping is a prefix rename, applied to the first matching row, and is its own inverse
row by row:

| released key prefix                                         | ours                                            |
|-------------------------------------------------------------|-------------------------------------------------|
| `token_projection.`                                         | `cross_modal_fusion.token_projection.`          |
| `sam_prompt_encoder.language_fusion_mlp.`                   | `cross_modal_fusion.language_fusion_mlp.`       |
| `cross_modal_fusion.transformer.layers.`                    | `cross_modal_fusion.layers.`                    |
| `cross_modal_fusion.transformer.final_attn_token_to_image.` | `cross_modal_fusion.final_attn_token_to_image.` |
| `cross_modal_fusion.transformer.norm_final_attn.`           | `cross_modal_fusion.norm_final_attn.`           |
| `cross_modal_fusion.cls_token.`, `.temporal_pos_embed`      | the same                                        |
| every SAM2 key (`image_encoder.`, `sam_mask_decoder.`, ...) | the same                                        |
| `language_model.` (frozen CLIP; not saved by the release)   | dropped: the text encoder loads from its folder |

Inside the fusion blocks the names are the release's (`self_attn`, `mamba_layers.{j}.mamba.
A_b_log`, `mlp.dwconv.dwconv`, ...), so no deeper renaming is needed. Anything else is checked
strictly (`surgray.model.checkpoints.sam2_checkpoint.check_state_dict`): a missing, unexpected or misshapen key
raises `CheckpointMismatchError`. Our own checkpoints (`save_referring_checkpoint`) are in our
layout and carry the referring config in their metadata, so `build_resurgsam2` can rebuild the
model from the file alone. A model with an embedded text tower (`ReferringConfig.text_tower`)
saves it under `text_tower.` like any other part; the released layout has no such keys (its
CLIP is frozen and dropped), so `init_from` with `text_tower` starts one fresh.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from surgray.io.storage import LOCAL, Storage
from surgray.model.checkpoints.resurgsam2_released import resurgsam2_released
from surgray.model.checkpoints.sam2_checkpoint import (
    CheckpointError,
    LoadReport,
    check_state_dict,
    read_state_dict,
    save_checkpoint,
    stored_or_variant_config,
)
from surgray.model.referring.config import ReferringConfig
from surgray.model.referring.resurgsam2 import ReSurgSAM2
from surgray.model.sam2.config import ModelConfig

log = logging.getLogger(__name__)

# (released prefix, our prefix), in the order they are tried.
RESURGSAM2_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("token_projection.", "cross_modal_fusion.token_projection."),
    ("sam_prompt_encoder.language_fusion_mlp.", "cross_modal_fusion.language_fusion_mlp."),
    ("cross_modal_fusion.transformer.layers.", "cross_modal_fusion.layers."),
    (
        "cross_modal_fusion.transformer.final_attn_token_to_image.",
        "cross_modal_fusion.final_attn_token_to_image.",
    ),
    ("cross_modal_fusion.transformer.norm_final_attn.", "cross_modal_fusion.norm_final_attn."),
)
DROPPED_PREFIXES: tuple[str, ...] = ("language_model.",)
REFERRING_METADATA_KEY = "referring"


def _rename(key: str, rows: Sequence[tuple[str, str]]) -> str:
    for source, target in rows:
        if key.startswith(source):
            return target + key[len(source) :]
    return key


def is_resurgsam2_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when keys only the released layout has are present."""
    released_only = [src for src, _ in RESURGSAM2_KEY_MAP] + list(DROPPED_PREFIXES)
    return any(k.startswith(p) for k in state_dict for p in released_only)


def from_resurgsam2_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Released key names -> ours (frozen CLIP weights dropped)."""
    out: dict[str, torch.Tensor] = {}
    dropped = 0
    for key, value in state_dict.items():
        if key.startswith(DROPPED_PREFIXES):
            dropped += 1
            continue
        new = _rename(key, RESURGSAM2_KEY_MAP)
        if new in out:
            raise CheckpointError(f"checkpoint holds {key!r} and a key that also maps to {new!r}")
        out[new] = value
    if dropped:
        log.info(
            "dropped %d frozen CLIP keys (language_model.*) of a ReSurgSAM2 checkpoint", dropped
        )
    return out


def to_resurgsam2_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our key names -> the released ones (for exporting to the reference code)."""
    inverse = [(ours, released) for released, ours in RESURGSAM2_KEY_MAP]
    return {_rename(k, inverse): v for k, v in state_dict.items()}


def load_referring_state_dict(
    model: ReSurgSAM2,
    state_dict: dict[str, torch.Tensor],
    source: str = "<state dict>",
    init_from: Sequence[str] | None = None,
) -> list[str]:
    """Load a state dict in either layout, strictly; returns the keys left at their init."""
    if is_resurgsam2_layout(state_dict):
        state_dict = from_resurgsam2_layout(state_dict)
    allowed = check_state_dict(model, state_dict, source, init_from or ())
    model.load_state_dict(state_dict, strict=not allowed)
    return allowed


def load_referring_checkpoint(
    model: ReSurgSAM2,
    source: str | os.PathLike[str],
    init_from: Sequence[str] | None = None,
    *,
    storage: Storage = LOCAL,
) -> LoadReport:
    """Load a ReSurgSAM2 checkpoint (released or ours) into `model`, strictly.

    init_from: key prefixes that may be missing (e.g. `NEW_MODULE_PREFIXES` to start the
    referring head from scratch on a SAM2.1 checkpoint, as ReSurgSAM2's pretraining does).
    """
    text = os.fspath(source)
    state_dict, metadata = read_state_dict(text, storage=storage)
    allowed = load_referring_state_dict(model, state_dict, text, init_from)
    return LoadReport(text, loaded=len(state_dict), initialised=allowed, metadata=metadata)


def save_referring_checkpoint(
    model: ReSurgSAM2,
    destination: str | os.PathLike[str],
    extra_metadata: dict[str, Any] | None = None,
    *,
    storage: Storage = LOCAL,
) -> None:
    """Our layout, with the referring config in the metadata (a frozen text encoder is not
    saved; an embedded text tower is, under `text_tower.`)."""
    metadata = {REFERRING_METADATA_KEY: model.referring_cfg.model_dump_json()}
    save_checkpoint(model, destination, metadata | (extra_metadata or {}), storage=storage)


def build_resurgsam2(
    variant_or_config: str | ModelConfig,
    referring: ReferringConfig | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
    storage: Storage = LOCAL,
    init_from: Sequence[str] | None = None,
    load_text_encoder: bool = True,
) -> ReSurgSAM2:
    """A `ReSurgSAM2` in eval mode, with weights from `checkpoint` when given.

    variant_or_config: a `ModelConfig` is used as given; a variant name stands for the
    network config our checkpoint's metadata records (else the variant's).

    referring: None takes the config saved in our checkpoint's metadata; for a released
    checkpoint (no metadata), the `resurgsam2_released` preset (its network settings too,
    see `surgray.model.checkpoints.resurgsam2_released`); else the default.
    load_text_encoder: load `referring.text_encoder` when it is set (an embedded text tower
    needs no loading: its weights are in the checkpoint).
    """
    state_dict = metadata = None
    source = ""
    if checkpoint is not None:
        source = os.fspath(checkpoint)
        state_dict, metadata = read_state_dict(source, storage=storage)
    if isinstance(variant_or_config, ModelConfig):
        cfg = variant_or_config
        if image_size is not None:
            cfg = cfg.with_image_size(image_size)
    else:
        # A variant name: the network our checkpoint recorded (settings that leave no trace
        # in the weights included), as `load_network` builds it; else the variant's.
        cfg = stored_or_variant_config(variant_or_config, metadata, image_size)
    if referring is None and metadata and REFERRING_METADATA_KEY in metadata:
        referring = ReferringConfig.model_validate_json(metadata[REFERRING_METADATA_KEY])
    elif referring is None and state_dict is not None and is_resurgsam2_layout(state_dict):
        # A released checkpoint records no config: it runs as the released code runs it.
        cfg, referring = resurgsam2_released(cfg, state_dict)
    model = ReSurgSAM2(cfg, referring)
    if state_dict is not None:
        load_referring_state_dict(model, state_dict, source, init_from)
    model = model.to(device).eval()
    if load_text_encoder and model.referring_cfg.text_encoder is not None:
        model.load_text_encoder(storage=storage)
    return model
