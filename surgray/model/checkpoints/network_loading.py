"""The network a checkpoint file holds: a `SAM2Model`, or a `ReSurgSAM2` for a referring one.

Every place that builds a model from a user's checkpoint (the annotate job's actors, the Serve
replicas) goes through `load_network`, so they accept the same files and refuse the same
mistakes. A checkpoint is referring when our metadata carries its `ReferringConfig` or when it
holds the released ReSurgSAM2 keys; a released one (no config of ours) runs with the
`resurgsam2_released` preset, network settings included
(`surgray.model.checkpoints.resurgsam2_released`).

Which text features a referring network uses:

- a checkpoint with an embedded text tower (the shipped `referring.pt`) brings its own; naming
  a separate folder is refused, since a different encoder would not match the fusion trained
  with the tower;
- otherwise the caller's folder, when given, replaces the one the metadata names. Loading that
  folder is left to the caller: Serve loads it before it accepts requests, an annotate actor
  only when the first text prompt arrives.

The checkpoint file is read once.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from surgray.io.storage import LOCAL, Storage
from surgray.model.checkpoints.memory_release import release_free_heap
from surgray.model.checkpoints.sam2_checkpoint import (
    CheckpointError,
    check_state_dict,
    read_state_dict,
    stored_or_variant_config,
)

if TYPE_CHECKING:
    import torch

    from surgray.model.referring.config import ReferringConfig
    from surgray.model.sam2.config import ModelConfig
    from surgray.model.sam2.network import SAM2Model


def is_referring_checkpoint(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, Any] | None
) -> bool:
    """Whether the file holds a ReSurgSAM2 (our referring metadata, or the released layout)."""
    from surgray.model.checkpoints.referring_checkpoint import (
        REFERRING_METADATA_KEY,
        is_resurgsam2_layout,
    )

    return REFERRING_METADATA_KEY in (metadata or {}) or is_resurgsam2_layout(state_dict)


def released_without_config(
    state_dict: dict[str, torch.Tensor], metadata: dict[str, Any] | None
) -> bool:
    """A released ReSurgSAM2 file: its key layout, and no referring config of ours."""
    from surgray.model.checkpoints.referring_checkpoint import (
        REFERRING_METADATA_KEY,
        is_resurgsam2_layout,
    )

    return REFERRING_METADATA_KEY not in (metadata or {}) and is_resurgsam2_layout(state_dict)


def referring_config_for(
    cfg: ModelConfig,
    metadata: dict[str, Any] | None,
    text_encoder: str | None,
    source: str,
) -> ReferringConfig:
    """The checkpoint's referring config (the network's default when it records none), with
    `text_encoder` in place of the folder it names."""
    from surgray.model.checkpoints.referring_checkpoint import REFERRING_METADATA_KEY
    from surgray.model.referring.config import ReferringConfig, default_referring

    saved = (metadata or {}).get(REFERRING_METADATA_KEY)
    referring = ReferringConfig.model_validate_json(saved) if saved else default_referring(cfg)
    if text_encoder is None:
        return referring
    if referring.text_tower is not None:
        raise CheckpointError(
            f"checkpoint {source}: it embeds its own text tower, trained with it; remove "
            "model.text_encoder (a separate CLIP text encoder would not match the checkpoint's "
            "fusion)"
        )
    return referring.model_copy(update={"text_encoder": text_encoder})


def load_network(
    source: str | os.PathLike[str],
    variant: str,
    *,
    image_size: int | None = None,
    text_encoder: str | None = None,
    storage: Storage = LOCAL,
) -> SAM2Model:
    """The checkpoint's network with its weights loaded strictly, on the CPU, in train mode
    (call `.eval()`): a `ReSurgSAM2` when the checkpoint is a referring one, its text encoder
    folder not loaded yet, else a `SAM2Model` (`text_encoder` is then unused: a caller that
    needs text prompts checks the type).

    variant / image_size: the network when the checkpoint's metadata does not record it.
    Raises `CheckpointError` for unreadable files, mismatched keys and a `text_encoder` the
    checkpoint cannot take (it embeds its own text tower).
    """
    from surgray.model.checkpoints.referring_checkpoint import load_referring_state_dict
    from surgray.model.checkpoints.resurgsam2_released import resurgsam2_released
    from surgray.model.referring.resurgsam2 import ReSurgSAM2
    from surgray.model.sam2.network import SAM2Model

    text = os.fspath(source)
    state_dict, metadata = read_state_dict(text, storage=storage)
    cfg = stored_or_variant_config(variant, metadata, image_size)
    if is_referring_checkpoint(state_dict, metadata):
        if released_without_config(state_dict, metadata):
            # No recorded config: run it as the released code does (resurgsam2_released).
            cfg, referring = resurgsam2_released(cfg, state_dict, text_encoder)
        else:
            referring = referring_config_for(cfg, metadata, text_encoder, text)
        model = ReSurgSAM2(cfg, referring)
        load_referring_state_dict(model, state_dict, text)
        del state_dict
        release_free_heap()
        return model
    model = SAM2Model(cfg)
    check_state_dict(model, state_dict, text, ())
    model.load_state_dict(state_dict)
    # The checkpoint's tensors and the network's initial weights are garbage now; without
    # this glibc keeps most of their pages resident (benchmarks/bench_load_memory.py).
    del state_dict
    release_free_heap()
    return model
