"""Build the served model and its tracker from a `ServedModel` config entry.

Weights come only from the server's config: a local path or an object-store URI (read through
fsspec by `surgray.model.checkpoint`), never from a hub and never from a client. For demos and
tests without a checkpoint, `checkpoint: "random:<seed>"` builds the variant with random
weights from that seed (the same seed gives the same weights in every process). Such a model
is announced as random in its `/v1/models` description and in the replica's log, because its
masks mean nothing. `checkpoint: "demo:referring"` (or `"demo:model"`) names a checkpoint
shipped in `surgray/assets/demo/` (`surgray.model.checkpoint.read_state_dict`).

Text prompts need a `ReSurgSAM2` (referring fusion + CLIP text encoder). One is built when the
checkpoint is a referring one (our metadata carries its `ReferringConfig`, or it holds the
released ReSurgSAM2 keys) or when the config names `text_encoder`; that folder, when given,
replaces the one the checkpoint's metadata names. A checkpoint with an embedded text tower (the
shipped `surgray/assets/demo/referring.pt`) brings its own and takes no folder. The checkpoint
file is read once.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from surgray.serving.config import ServedModel
from surgray.serving.schemas import ModelInfo

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_PREFIX = "random:"
_RANDOM = re.compile(r"^random:(\d{1,10})$")
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS (demo only: masks are meaningless)"
_PRECISIONS = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


class ModelLoadError(RuntimeError):
    """The configured model cannot be built; the replica must not start."""


def resolve_variant(variant: str) -> str:
    """A registry variant name; bare sizes (`tiny`, `small`, `base_plus`, `large`) mean SAM2.1."""
    size = {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}.get(variant, variant)
    if size in ("tiny", "small", "base_plus", "large"):
        return f"sam2.1_hiera_{size}"
    return variant


def random_weights_seed(checkpoint: str) -> int | None:
    """The seed of a `random:<seed>` checkpoint value, None for a real path or URI."""
    if not checkpoint.startswith(RANDOM_WEIGHTS_PREFIX):
        return None
    match = _RANDOM.match(checkpoint)
    if match is None:
        raise ModelLoadError(
            f"model.checkpoint {checkpoint!r}: random weights are written 'random:<seed>', "
            "e.g. 'random:0'"
        )
    return int(match.group(1))


@dataclass
class LoadedModel:
    """A model ready to serve: its tracker and what `/v1/models` says about it."""

    served: ServedModel
    tracker: Any  # surgray.tracking.tracker.Tracker
    random_weights: bool
    text_prompts: bool = False  # a ReSurgSAM2 with its text encoder loaded

    def info(self, *, text_prompts: bool | None = None) -> ModelInfo:
        description = self.served.description
        if self.random_weights:
            description = (
                f"{RANDOM_WEIGHTS_NOTE}; {description}" if description else RANDOM_WEIGHTS_NOTE
            )
        return ModelInfo(
            name=self.served.name,
            variant=self.served.variant,
            image_size=self.served.image_size,
            policy=self.served.policy,
            text_prompts=self.text_prompts if text_prompts is None else text_prompts,
            description=description,
        )


def _autocast(precision: str, device: Any) -> Any:
    import torch

    if precision not in _PRECISIONS:
        raise ModelLoadError(
            f"model.precision {precision!r} is not supported; use one of {sorted(_PRECISIONS)}"
        )
    name = _PRECISIONS[precision]
    if name is None:
        return None
    if name == "float16" and device.type != "cuda":
        raise ModelLoadError("model.precision fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return getattr(torch, name)


def _referring_config(served: ServedModel, cfg: Any, metadata: dict | None) -> Any:
    """The checkpoint's referring config (or the default for the network), with the config's
    text encoder folder in place of the checkpoint's; a checkpoint with an embedded text tower
    (the shipped `referring.pt`) needs no folder."""
    from surgray.model.referring import ReferringConfig, _default_referring
    from surgray.model.referring_checkpoint import REFERRING_METADATA_KEY

    saved = (metadata or {}).get(REFERRING_METADATA_KEY)
    referring = ReferringConfig.model_validate_json(saved) if saved else _default_referring(cfg)
    if referring.text_tower is not None:  # the checkpoint carries its own trained text tower
        if served.text_encoder is not None:
            raise ModelLoadError(
                f"model {served.name!r}: the checkpoint embeds its own text tower, trained "
                "with it; remove model.text_encoder (a separate CLIP text encoder would not "
                "match the checkpoint's fusion)"
            )
        return referring
    if served.text_encoder is not None:
        referring = referring.model_copy(update={"text_encoder": served.text_encoder})
    if referring.text_encoder is None:
        raise ModelLoadError(
            f"model {served.name!r}: the checkpoint is a referring (ReSurgSAM2) one but no "
            "text encoder folder is known; set model.text_encoder to a CLIP text directory"
        )
    return referring


def _build(
    served: ServedModel, seed: int | None, storage_options: dict[str, Any] | None
) -> tuple[Any, bool]:
    """(model on the CPU, whether it is a ReSurgSAM2), weights from the checkpoint or seed."""
    import torch

    from surgray.model.checkpoint import (
        check_state_dict,
        read_state_dict,
        stored_or_variant_config,
    )
    from surgray.model.referring import ReSurgSAM2
    from surgray.model.referring_checkpoint import (
        REFERRING_METADATA_KEY,
        is_resurgsam2_layout,
        load_referring_state_dict,
    )
    from surgray.model.sam2 import SAM2Model
    from surgray.model.variants import get_variant

    if seed is not None:
        cfg = get_variant(resolve_variant(served.variant), image_size=served.image_size)
        referring = served.text_encoder is not None
        # Seed only the construction, then put the global generator back as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if referring:
                model = ReSurgSAM2(cfg, _referring_config(served, cfg, None))
            else:
                model = SAM2Model(cfg)
        return model, referring
    state_dict, metadata = read_state_dict(served.checkpoint, storage_options)
    cfg = stored_or_variant_config(
        resolve_variant(served.variant), metadata, image_size=served.image_size
    )
    referring = (
        served.text_encoder is not None
        or REFERRING_METADATA_KEY in (metadata or {})
        or is_resurgsam2_layout(state_dict)
    )
    if referring:
        model = ReSurgSAM2(cfg, _referring_config(served, cfg, metadata))
        load_referring_state_dict(model, state_dict, served.checkpoint)
    else:
        model = SAM2Model(cfg)
        check_state_dict(model, state_dict, served.checkpoint, ())
        model.load_state_dict(state_dict)
    return model, referring


def load_served_model(
    served: ServedModel,
    *,
    device: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> LoadedModel:
    """Build the model (checkpoint or seeded random weights) and a `Tracker` over it."""
    import torch

    from surgray.model.checkpoint import CheckpointError
    from surgray.tracking.tracker import Tracker

    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = random_weights_seed(served.checkpoint)
    try:
        model, referring = _build(served, seed, storage_options)
        model = model.to(chosen).eval()
    except (CheckpointError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"model {served.name!r}: {exc}") from exc
    if referring:
        try:
            model.load_text_encoder(storage_options)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"model {served.name!r}: text encoder {model.referring_cfg.text_encoder}: {exc}"
            ) from exc
    try:
        tracker = Tracker(
            model,
            {"name": served.policy, **served.policy_options},
            autocast_dtype=_autocast(served.precision, chosen),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"model {served.name!r}: memory policy: {exc}") from exc
    if seed is not None:
        logger.warning(
            "model %r: variant %s at %d px with %s (seed %d); do not use its masks",
            served.name,
            served.variant,
            served.image_size,
            RANDOM_WEIGHTS_NOTE,
            seed,
        )
    else:
        logger.info(
            "model %r: variant %s at %d px from %s on %s%s",
            served.name,
            served.variant,
            served.image_size,
            served.checkpoint,
            chosen,
            " with text prompts" if referring else "",
        )
    return LoadedModel(
        served=served, tracker=tracker, random_weights=seed is not None, text_prompts=referring
    )
