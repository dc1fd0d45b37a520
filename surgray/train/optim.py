"""AdamW parameter groups, freezing and the warm-up + cosine schedule for fine-tuning.

Rules, in the order they are applied to each parameter name:
1. Frozen for the whole run (`frozen_prefixes`): left out of the optimizer, requires_grad off.
   Frozen for a first phase (`trainable_prefixes` with `unfreeze_at_step`, as ReSurgSAM2's
   pretraining trains only the fusion modules first): kept in the optimizer, so unfreezing
   needs no new optimizer (AdamW skips parameters without a gradient). Parameters the model
   itself marks requires_grad=False and the config does not mention are left out too.
   `trainable_prefixes` without `unfreeze_at_step` trains only those prefixes for the whole
   run (e.g. only ReSurgSAM2's new modules on a fixed SAM2: `cross_modal_fusion.`,
   `text_tower.`, `semantic_head.`); the training loop then turns requires_grad off for the
   rest, so the frozen image encoder runs without autograd.
2. Learning rate: `new_module_lr` for names under `new_module_prefixes`; else `vision_lr`
   under `vision_prefix` (the image encoder); else `base_lr`.
3. Layer-wise decay on the Hiera trunk (SAM2's BEiT-style rule, `training/optimizer.py`
   with Hiera's `get_layer_id`): with L trunk blocks, patch embedding and position
   embeddings are layer 0, block i is layer i + 1, anything else in the trunk is layer
   L + 1; the lr is multiplied by layer_decay ** (L + 1 - layer). Parameters outside the
   trunk keep a factor 1. `layer_scale_overrides` (fnmatch pattern -> factor) replaces the
   factor, as SAM2.1's configs do with {'*pos_embed*': 1.0}.
4. Weight decay `weight_decay`, except 0 for: names matching `no_decay_patterns` (default:
   biases '*bias*', position embeddings '*pos_embed*' and encodings '*pos_enc*'), and, with
   `no_decay_norms`, every parameter owned directly by a normalisation module (a class whose
   name ends in "Norm" or "Norm1d/2d/3d": LayerNorm, our LayerNorm2d, GroupNorm, BatchNorm...).
   SAM2's configs exempt only biases and torch.nn.LayerNorm; position embeddings and
   LayerNorm2d are exempt here too.

Schedule (ReSurgSAM2's LinearWarmupCosine; SAM2 is the case warmup_fraction = 0): with
progress p = step / total_steps, the lr factor rises linearly from `warmup_start_factor` to
1 over the first `warmup_fraction`, then follows a cosine from 1 down to the group's end
factor (`end_factor`, or `new_module_end_factor` for new modules) at p = 1.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

_BLOCK_INDEX = re.compile(r"(?:^|\.)blocks\.(\d+)(?:\.|$)")
_NORM_CLASS = re.compile(r"Norm(?:[123]d)?$")


class OptimConfig(BaseModel):
    """Optimizer, schedule and freezing; defaults follow the SAM2.1 / ReSurgSAM2 recipes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_lr: float = Field(5e-5, gt=0)
    vision_lr: float = Field(5e-5, gt=0)
    vision_prefix: str = "image_encoder."
    new_module_lr: float = Field(3e-4, gt=0)
    new_module_prefixes: tuple[str, ...] = (
        "cross_modal_fusion.",
        "text_tower.",
        "text_projection.",
        "semantic_head.",
        "category_probes.",
        "text_pixel.",
    )
    end_factor: float = Field(0.1, ge=0, le=1)
    new_module_end_factor: float = Field(1 / 30, ge=0, le=1)
    warmup_fraction: float = Field(0.0, ge=0, lt=1)
    warmup_start_factor: float = Field(0.01, ge=0, le=1)
    weight_decay: float = Field(0.1, ge=0)
    no_decay_patterns: tuple[str, ...] = ("*bias*", "*pos_embed*", "*pos_enc*")
    no_decay_norms: bool = True
    layer_decay: float = Field(0.9, gt=0, le=1)
    layer_decay_prefix: str = "image_encoder.trunk."
    layer_scale_overrides: dict[str, float] = Field(default_factory=dict)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    grad_clip_norm: float | None = Field(0.1, gt=0)  # for the training loop (SAM2: 0.1)
    frozen_prefixes: tuple[str, ...] = ()  # e.g. ("image_encoder.",) or a text encoder
    trainable_prefixes: tuple[str, ...] | None = None  # only these train until unfreeze
    unfreeze_at_step: int | None = Field(None, ge=0)  # None: the phase lasts the whole run


@dataclass
class ParamGroupSpec:
    """One AdamW parameter group: its peak lr, weight decay and end-of-schedule factor."""

    name: str
    lr: float
    weight_decay: float
    end_factor: float
    lr_scale: float  # layer-decay factor already folded into `lr`
    param_names: list[str] = field(default_factory=list)


def _has_prefix(name: str, prefixes: tuple[str, ...] | None) -> bool:
    return bool(prefixes) and any(name.startswith(p) for p in prefixes)


def _phase_frozen(name: str, config: OptimConfig) -> bool:
    """Frozen during the first phase only (outside `trainable_prefixes`)."""
    return (
        config.trainable_prefixes is not None
        and not _has_prefix(name, config.trainable_prefixes)
        and not _has_prefix(name, config.frozen_prefixes)
    )


def is_frozen(name: str, config: OptimConfig, step: int = 0) -> bool:
    """Whether the config freezes this parameter at this step."""
    if _has_prefix(name, config.frozen_prefixes):
        return True
    in_phase = config.unfreeze_at_step is None or step < config.unfreeze_at_step
    return in_phase and _phase_frozen(name, config)


def apply_freeze(model: nn.Module, config: OptimConfig, step: int = 0) -> list[str]:
    """Set requires_grad for what the config freezes at `step`; return the frozen names.

    Parameters the config never mentions are not touched. Once the first phase is over, the
    phase-frozen ones are released, so parts that must never train (a CLIP text encoder)
    belong in `frozen_prefixes`.
    """
    frozen = []
    for name, param in model.named_parameters():
        if is_frozen(name, config, step):
            param.requires_grad_(False)
            frozen.append(name)
        elif _phase_frozen(name, config):
            param.requires_grad_(True)
    return frozen


def trunk_block_count(names: list[str], prefix: str) -> int:
    """Number of trunk blocks, from the largest `blocks.{i}` index under `prefix`."""
    indices = [
        int(match.group(1))
        for name in names
        if name.startswith(prefix) and (match := _BLOCK_INDEX.search(name[len(prefix) :]))
    ]
    return max(indices) + 1 if indices else 0


def trunk_layer_id(name_in_trunk: str, num_blocks: int) -> int:
    """SAM2 Hiera's layer id of a trunk parameter (name relative to the trunk)."""
    if "rel_pos" in name_in_trunk:
        return num_blocks + 1
    if "pos_embed" in name_in_trunk or "patch_embed" in name_in_trunk:
        return 0
    match = _BLOCK_INDEX.search(name_in_trunk)
    return int(match.group(1)) + 1 if match else num_blocks + 1


def _norm_owned_names(model: nn.Module) -> set[str]:
    owned = set()
    for module_name, module in model.named_modules():
        if any(_NORM_CLASS.search(cls.__name__) for cls in type(module).__mro__):
            for param_name, _ in module.named_parameters(recurse=False):
                owned.add(f"{module_name}.{param_name}" if module_name else param_name)
    return owned


def plan_param_groups(model: nn.Module, config: OptimConfig) -> list[ParamGroupSpec]:
    """The parameter groups of `model`, in order of first appearance (deterministic)."""
    named = [
        (name, p)
        for name, p in model.named_parameters()
        if not _has_prefix(name, config.frozen_prefixes)
        and (p.requires_grad or _phase_frozen(name, config))
    ]
    names = [name for name, _ in named]
    num_blocks = trunk_block_count(names, config.layer_decay_prefix)
    norm_owned = _norm_owned_names(model) if config.no_decay_norms else set()
    groups: dict[tuple, ParamGroupSpec] = {}
    for name in names:
        if _has_prefix(name, config.new_module_prefixes):
            kind, lr, end = "new", config.new_module_lr, config.new_module_end_factor
        elif name.startswith(config.vision_prefix):
            kind, lr, end = "vision", config.vision_lr, config.end_factor
        else:
            kind, lr, end = "base", config.base_lr, config.end_factor
        layer, scale = "", 1.0
        if name.startswith(config.layer_decay_prefix) and num_blocks > 0:
            layer_id = trunk_layer_id(name[len(config.layer_decay_prefix) :], num_blocks)
            layer, scale = f"layer{layer_id}", config.layer_decay ** (num_blocks + 1 - layer_id)
        for pattern, override in config.layer_scale_overrides.items():
            if fnmatch.fnmatchcase(name, pattern):
                layer, scale = f"override[{pattern}]", float(override)
                break
        decays = not (
            name in norm_owned
            or any(fnmatch.fnmatchcase(name, p) for p in config.no_decay_patterns)
        )
        key = (kind, layer, decays)
        if key not in groups:
            label = "/".join(part for part in (kind, layer) if part)
            groups[key] = ParamGroupSpec(
                name=f"{label}/{'decay' if decays else 'no_decay'}",
                lr=lr * scale,
                weight_decay=config.weight_decay if decays else 0.0,
                end_factor=end,
                lr_scale=scale,
            )
        groups[key].param_names.append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `plan_param_groups`; each group also carries its `name` and `end_factor`."""
    params = dict(model.named_parameters())
    specs = plan_param_groups(model, config)
    if not specs:
        raise ValueError("build_optimizer: the config leaves no parameter to optimise")
    groups = [
        {
            "params": [params[n] for n in spec.param_names],
            "lr": spec.lr,
            "weight_decay": spec.weight_decay,
            "name": spec.name,
            "end_factor": spec.end_factor,
        }
        for spec in specs
    ]
    return torch.optim.AdamW(groups, lr=config.base_lr, betas=config.betas, eps=config.eps)


def warmup_cosine_factor(
    progress: float, warmup_fraction: float, start_factor: float, end_factor: float
) -> float:
    """Multiplier of the peak lr at `progress` in [0, 1] (clamped outside)."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup_fraction:
        return start_factor + (1.0 - start_factor) * progress / warmup_fraction
    decay = (progress - warmup_fraction) / (1.0 - warmup_fraction)
    return end_factor + 0.5 * (1.0 - end_factor) * (1.0 + math.cos(math.pi * decay))


@dataclass
class WarmupCosineFactor:
    """Per-group lr multiplier of a step (a picklable callable for `LambdaLR`)."""

    total_steps: int
    warmup_fraction: float
    start_factor: float
    end_factor: float

    def __call__(self, step: int) -> float:
        return warmup_cosine_factor(
            step / self.total_steps, self.warmup_fraction, self.start_factor, self.end_factor
        )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int
) -> LambdaLR:
    """Warm-up + cosine for every group, each ending at its own `end_factor`.

    Step k of training (0-based) runs with factor(k / total_steps): call `scheduler.step()`
    after each `optimizer.step()`.
    """
    if total_steps < 1:
        raise ValueError(f"build_scheduler: total_steps must be >= 1, got {total_steps}")
    factors = [
        WarmupCosineFactor(
            total_steps,
            config.warmup_fraction,
            config.warmup_start_factor,
            group.get("end_factor", config.end_factor),
        )
        for group in optimizer.param_groups
    ]
    return LambdaLR(optimizer, lr_lambda=factors)
