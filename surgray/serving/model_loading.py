"""Build the served model and its tracker from a `ServedModel` config entry.

Weights come only from the server's config: a local path or an object-store URI (read through
fsspec by `surgray.model.checkpoint`), never from a hub and never from a client. For demos and
tests without a checkpoint, `checkpoint: "random:<seed>"` builds the variant with random
weights from that seed (the same seed gives the same weights in every process). Such a model
is announced as random in its `/v1/models` description and in the replica's log, because its
masks mean nothing.
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

    def info(self, *, text_prompts: bool) -> ModelInfo:
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
            text_prompts=text_prompts,
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


def load_served_model(
    served: ServedModel,
    *,
    device: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> LoadedModel:
    """Build the model (checkpoint or seeded random weights) and a `Tracker` over it."""
    import torch

    from surgray.model.checkpoint import CheckpointError, build_model
    from surgray.tracking.tracker import Tracker

    chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    seed = random_weights_seed(served.checkpoint)
    try:
        if seed is not None:
            # Seed only the construction, then put the global generator back as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = build_model(resolve_variant(served.variant), image_size=served.image_size)
            model = model.to(chosen)
        else:
            model = build_model(
                resolve_variant(served.variant),
                served.checkpoint,
                device=chosen,
                image_size=served.image_size,
                storage_options=storage_options,
            )
    except (CheckpointError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"model {served.name!r}: {exc}") from exc
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
            "model %r: variant %s at %d px from %s on %s",
            served.name,
            served.variant,
            served.image_size,
            served.checkpoint,
            chosen,
        )
    return LoadedModel(served=served, tracker=tracker, random_weights=seed is not None)
