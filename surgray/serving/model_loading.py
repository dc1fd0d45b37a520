"""Build the served model and its tracker from a `ServedModel` config entry.

Weights come only from the server's config: a local path or an object-store URI (read through
fsspec by `surgray.model.checkpoints.sam2_checkpoint`), never from a hub and never from a client. For demos and
tests without a checkpoint, `checkpoint: "random:<seed>"` builds the variant with random
weights from that seed (the same seed gives the same weights in every process). Such a model
is announced as random in its `/v1/models` description and in the replica's log, because its
masks mean nothing. `checkpoint: "demo:referring"` (or `"demo:model"`) names a checkpoint
shipped in `surgray/assets/demo/` (`surgray.model.checkpoints.sam2_checkpoint.read_state_dict`).

Text prompts need a `ReSurgSAM2` (referring fusion + CLIP text encoder). Which network a
checkpoint holds, and which text encoder folder it uses, is decided by
`surgray.model.checkpoints.network_loading.load_network`, as in the annotate job. A replica also needs the
text features before it accepts requests: a referring checkpoint without an embedded text tower
and without a folder (in the config or its metadata) is refused, and the folder is loaded at
start-up.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from surgray.io.storage import LOCAL, Storage
from surgray.serving.config import ServedModel
from surgray.serving.schemas import ModelInfo

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS_PREFIX = "random:"
_RANDOM = re.compile(r"^random:(\d{1,10})$")
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS (demo only: masks are meaningless)"


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


def _precision(precision: str, device: Any) -> str:
    """The precision name for the tracker (surgray.tracking.precision), checked for `device`."""
    from surgray.tracking.precision import PrecisionError, resolve_precision

    try:
        return resolve_precision(precision, device).name
    except PrecisionError as exc:
        raise ModelLoadError(f"model.{exc}") from exc


def _has_text_source(referring: Any) -> bool:
    return referring.text_tower is not None or referring.text_encoder is not None


def _build(served: ServedModel, seed: int | None, *, storage: Storage) -> tuple[Any, bool]:
    """(model on the CPU, whether it is a ReSurgSAM2), weights from the checkpoint or seed."""
    import torch

    from surgray.model.checkpoints.network_loading import load_network, referring_config_for
    from surgray.model.checkpoints.variants import get_variant
    from surgray.model.referring.resurgsam2 import ReSurgSAM2
    from surgray.model.sam2.network import SAM2Model

    variant = resolve_variant(served.variant)
    if seed is None:
        model = load_network(
            served.checkpoint,
            variant,
            image_size=served.image_size,
            text_encoder=served.text_encoder,
            storage=storage,
        )
        referring = isinstance(model, ReSurgSAM2)
        if served.text_encoder is not None and not referring:
            raise ModelLoadError(
                f"model {served.name!r}: model.text_encoder is set but {served.checkpoint} is a "
                "plain SAM2 checkpoint, which takes mask, point and box prompts only; text "
                "prompts need a referring (ReSurgSAM2) checkpoint"
            )
        if referring and not _has_text_source(model.referring_cfg):
            raise ModelLoadError(
                f"model {served.name!r}: the checkpoint is a referring (ReSurgSAM2) one but no "
                "text encoder folder is known; set model.text_encoder to a CLIP text directory"
            )
        return model, referring
    cfg = get_variant(variant, image_size=served.image_size)
    referring = served.text_encoder is not None
    # Seed only the construction, then put the global generator back as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if referring:
            model = ReSurgSAM2(
                cfg, referring_config_for(cfg, None, served.text_encoder, served.checkpoint)
            )
        else:
            model = SAM2Model(cfg)
    return model, referring


def load_served_model(
    served: ServedModel,
    *,
    device: str | None = None,
    storage: Storage = LOCAL,
) -> LoadedModel:
    """Build the model (checkpoint or seeded random weights) and a `Tracker` over it."""
    import torch

    from surgray.model.checkpoints.sam2_checkpoint import CheckpointError
    from surgray.tracking.tracker import Tracker

    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = random_weights_seed(served.checkpoint)
    try:
        model, referring = _build(served, seed, storage=storage)
        model = model.to(chosen).eval()
    except (CheckpointError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"model {served.name!r}: {exc}") from exc
    if referring:
        try:
            model.load_text_encoder(storage=storage)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"model {served.name!r}: text encoder {model.referring_cfg.text_encoder}: {exc}"
            ) from exc
    try:
        tracker = Tracker(
            model,
            {"name": served.policy, **served.policy_options},
            precision=_precision(served.precision, chosen),
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
