"""Loading and saving SAM2 weights, strictly, from local paths or object storage.

Accepted files: official SAM2/SAM2.1 checkpoints (`{"model": state_dict}`), bare state dicts,
surgical fine-tunes in either form (SurgSAM2's `sam2_hiera_s_endo18.pth`, ...), and our own
checkpoints (`{"model": state_dict, "surgray": metadata}`). A `module.` prefix left by
DistributedDataParallel is removed. Loading is strict: a missing key, an unexpected key or a
shape mismatch raises `CheckpointMismatchError`, which names the first few of each, their
counts, the variant the model was built as and the variant the checkpoint looks like
(inferred from the Hiera trunk's width and depth).

Training from a published checkpoint may add modules it does not have: `init_from=[prefix,
...]` lets keys under those prefixes be missing (they keep their initialisation and are
logged); everything else stays strict.

Modules without a published checkpoint (their keys are ours; add a row when adding one):

| key                  | shape                    | exists when                                  |
|----------------------|--------------------------|----------------------------------------------|
| `long_term_tpos_enc` | [N, 1, 1, mem_dim]       | `memory.num_long_term_embeddings = N > 0`    |
|                      |                          | (SAM2S DiveMem long-term temporal slots)     |
| `cross_modal_fusion` | CSTMamba: token          | `ReSurgSAM2` (`referring.resurgsam2`);       |
|                      | projection, class token, | released ReSurgSAM2 checkpoints lay it out   |
|                      | blocks, language fusion  | differently: table in `referring_checkpoint` |
| `semantic_head`      | SAM2S TSL head           | `ReferringConfig.semantic_head` is set       |
| `text_tower`         | small CLIP text tower    | `ReferringConfig.text_tower` is set          |
| `text_pixel`         | stride-8 text-pixel head | `ReferringConfig.text_pixel` is set          |
| `category_probes`    | training-only probes     | `ReferringConfig.grounding_categories` set   |
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from surgray.errors import UserError
from surgray.io.storage import LOCAL, Storage
from surgray.model.checkpoints.shipped import SHIPPED_DIR, SHIPPED_PREFIX
from surgray.model.sam2.config import ModelConfig
from surgray.model.sam2.network import SAM2Model

log = logging.getLogger(__name__)

# Keys of modules no published checkpoint has (see the table above); `init_from` default.
NEW_MODULE_PREFIXES: tuple[str, ...] = (
    "long_term_tpos_enc",
    "cross_modal_fusion",
    "semantic_head",
    "text_tower",
    "text_pixel",
    "category_probes",
)
METADATA_KEY = "surgray"
_SHOWN = 5  # keys named per kind of problem


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be read or does not fit the model."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file at the given path or URI."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes differ from the model's."""


@dataclass
class LoadReport:
    """What `load_checkpoint` did: keys loaded, and new-module keys left at their init."""

    source: str
    loaded: int
    initialised: list[str] = field(default_factory=list)
    metadata: dict[str, Any] | None = None


def _is_remote(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


def _read_bytes_or_path(source: str, *, storage: Storage) -> Any:
    """A local path, or the remote object's bytes (checkpoints are read whole anyway)."""
    if not _is_remote(source):
        path = source[len("file://") :] if source.startswith("file://") else source
        if not os.path.isfile(path):
            raise CheckpointNotFoundError(f"checkpoint {source}: file not found")
        return path
    try:
        fs, path = storage.filesystem(source)
    except (ImportError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {source}: cannot open its filesystem: {exc}") from exc
    try:
        with fs.open(path, "rb") as handle:
            return io.BytesIO(handle.read())
    except FileNotFoundError as exc:
        raise CheckpointNotFoundError(f"checkpoint {source}: object not found") from exc
    except PermissionError as exc:
        raise CheckpointError(f"checkpoint {source}: access denied: {exc}") from exc


def shipped_checkpoint_path(source: str) -> str:
    """The file of a `demo:<name>` checkpoint (one shipped in `surgray/assets/demo/`); any
    other source unchanged."""
    if not source.startswith(SHIPPED_PREFIX):
        return source
    name = source[len(SHIPPED_PREFIX) :]
    shipped = sorted(path.stem for path in SHIPPED_DIR.glob("*.pt"))
    if name not in shipped:
        raise CheckpointError(
            f"checkpoint {source!r}: no such shipped checkpoint; shipped: "
            f"{', '.join(SHIPPED_PREFIX + n for n in shipped)}"
        )
    return str(SHIPPED_DIR / f"{name}.pt")


def _load_failure(exc: Exception) -> str:
    """Why torch.load failed, in one line. torch's own text for a weights-only failure
    recommends unpickling arbitrary code; we keep only its diagnosis."""
    text = " ".join(str(exc).split())
    if "Weights only load failed" not in text:
        return f"{type(exc).__name__}: {text}"
    detail = text.split("WeightsUnpickler error:", 1)[-1].split(" Check the documentation")[0]
    detail = detail.strip() if "WeightsUnpickler error:" in text else ""
    return "its bytes are not a checkpoint of tensors" + (f": {detail}" if detail else "")


def read_state_dict(
    source: str | os.PathLike[str], *, storage: Storage = LOCAL
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state dict, our metadata or None) of a checkpoint file, tensors on the CPU.

    `demo:<name>` names a checkpoint shipped in `surgray/assets/demo/` (`demo:model`,
    `demo:referring`), resolved in the process that reads it, so every node of a cluster uses
    its own copy of the package."""
    text = os.fspath(source)
    target = _read_bytes_or_path(shipped_checkpoint_path(text), storage=storage)
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated pickle, foreign format, ...
        raise CheckpointError(
            f"checkpoint {text}: not a readable PyTorch checkpoint ({_load_failure(exc)})"
        ) from exc
    metadata = None
    if isinstance(payload, dict) and "model" in payload and isinstance(payload["model"], dict):
        metadata = payload.get(METADATA_KEY)
        payload = payload["model"]
    if not isinstance(payload, dict) or not payload:
        raise CheckpointError(
            f"checkpoint {text}: holds no state dict (got {type(payload).__name__})"
        )
    not_tensors = [k for k, v in payload.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"checkpoint {text}: not a state dict ({len(not_tensors)} non-tensor entries, "
            f"e.g. {not_tensors[:_SHOWN]})"
        )
    if all(k.startswith("module.") for k in payload):
        payload = {k[len("module.") :]: v for k, v in payload.items()}
    return payload, metadata


def infer_variant(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The named variant whose Hiera trunk (width, depth) and SAM version match, or None."""
    from surgray.model.checkpoints.variants import get_variant, variant_names

    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        return None
    prefix = "image_encoder.trunk.blocks."
    blocks = {int(k[len(prefix) :].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    depth = max(blocks) + 1 if blocks else 0
    is_v21 = "no_obj_embed_spatial" in state_dict
    for name in variant_names():
        trunk = get_variant(name).image_encoder.trunk
        if trunk.embed_dim != patch.shape[0] or sum(trunk.stages) != depth:
            continue
        if name == "micro" or name.startswith("sam2.1_") == is_v21:
            return name
    return None


def _describe(keys: Sequence[str]) -> str:
    shown = ", ".join(list(keys)[:_SHOWN])
    more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return f"{shown}{more}"


def check_state_dict(
    model: SAM2Model,
    state_dict: dict[str, torch.Tensor],
    source: str,
    allow_missing: Sequence[str] = (),
) -> list[str]:
    """Raise `CheckpointMismatchError` unless keys and shapes fit; return allowed missing keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    allowed = [k for k in missing if any(k == p or k.startswith(p + ".") for p in allow_missing)]
    missing = [k for k in missing if k not in allowed]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (checkpoint {list(state_dict[k].shape)} vs model {list(expected[k].shape)})"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return allowed
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_describe(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_describe(mismatched)}")
    guess = infer_variant(state_dict)
    model_name = model.cfg.name
    hint = ""
    if guess is not None and guess != model_name:
        hint = f"; the checkpoint looks like variant {guess!r}"
    elif guess is None:
        hint = "; its trunk matches no known variant"
    raise CheckpointMismatchError(
        f"checkpoint {source} does not fit model variant {model_name!r}: "
        + "; ".join(problems)
        + hint
    )


def load_checkpoint(
    model: SAM2Model,
    source: str | os.PathLike[str],
    init_from: Sequence[str] | None = None,
    *,
    storage: Storage = LOCAL,
) -> LoadReport:
    """Load weights into `model` strictly; `init_from` lists prefixes that may be missing."""
    text = os.fspath(source)
    state_dict, metadata = read_state_dict(text, storage=storage)
    allowed = check_state_dict(model, state_dict, text, init_from or ())
    model.load_state_dict(state_dict, strict=not allowed)
    if allowed:
        log.info(
            "checkpoint %s: %d keys of new modules keep their initialisation: %s",
            text,
            len(allowed),
            _describe(allowed),
        )
    return LoadReport(text, loaded=len(state_dict), initialised=allowed, metadata=metadata)


def checkpoint_metadata(cfg: ModelConfig) -> dict[str, Any]:
    import surgray

    return {
        "variant": cfg.name,
        "config": cfg.model_dump_json(),
        "surgray_version": surgray.__version__,
    }


def stored_or_variant_config(
    variant: str, metadata: dict[str, Any] | None, image_size: int | None = None
) -> ModelConfig:
    """The network a checkpoint was saved with when our metadata records it, else the variant.

    A fine-tuned checkpoint may change settings that leave no trace in its weights (e.g.
    `prompting.multimask_output_for_tracking`); building it from the bare variant would run
    a different tracker than the one that was trained and scored.
    """
    from surgray.model.checkpoints.variants import get_variant

    named = get_variant(variant, image_size=image_size)
    stored_json = (metadata or {}).get("config")
    if not stored_json:
        return named
    stored = ModelConfig.model_validate_json(stored_json)
    if stored.name != named.name:
        raise CheckpointError(
            f"the checkpoint was saved for variant {stored.name!r}, the config asks for "
            f"{variant!r} ({named.name!r}); set model.variant to {stored.name!r}"
        )
    return stored.with_image_size(image_size) if image_size is not None else stored


def save_checkpoint(
    model: SAM2Model,
    destination: str | os.PathLike[str],
    extra_metadata: dict[str, Any] | None = None,
    *,
    storage: Storage = LOCAL,
) -> None:
    """Write `{"model": state_dict, "surgray": metadata}` (official layout plus metadata)."""
    text = os.fspath(destination)
    metadata = checkpoint_metadata(model.cfg) | (extra_metadata or {})
    payload = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        METADATA_KEY: metadata,
    }
    if not _is_remote(text):
        path = text[len("file://") :] if text.startswith("file://") else text
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tmp = path + ".partial"
        torch.save(payload, tmp)
        os.replace(tmp, path)  # readers never see a half-written file
        return
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.write_bytes(text, buffer.getvalue())


def build_model(
    variant_or_config: str | ModelConfig,
    checkpoint: str | os.PathLike[str] | None = None,
    device: torch.device | str = "cpu",
    image_size: int | None = None,
    *,
    storage: Storage = LOCAL,
    init_from: Sequence[str] | None = None,
) -> SAM2Model:
    """A `SAM2Model` in eval mode, optionally with weights from `checkpoint`.

    variant_or_config: a variant name (`surgray.model.checkpoints.variants.variant_names()`, short
    official names accepted) or a `ModelConfig`. image_size: overrides the config's.
    """
    if isinstance(variant_or_config, ModelConfig):
        cfg = variant_or_config
        if image_size is not None:
            cfg = cfg.with_image_size(image_size)
    else:
        from surgray.model.checkpoints.variants import get_variant

        cfg = get_variant(variant_or_config, image_size=image_size)
    model = SAM2Model(cfg)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, init_from, storage=storage)
    return model.to(device).eval()
