"""Training checkpoints: a folder with the model (our checkpoint format) and the training state.

    <checkpoint>/model.pt            `surgray.model.checkpoints.sam2_checkpoint.save_checkpoint` output: loads into
                                     a `SAM2Model` strictly, with the model config in its metadata
                                     (a `ReSurgSAM2` also carries its referring config, as
                                     `save_referring_checkpoint` writes it, so annotate, serve and
                                     `load_trained_model` rebuild the referring model)
    <checkpoint>/training_state.pt   optimizer, lr scheduler, epoch and step to resume from
    <checkpoint>/metrics.json        the epoch's metrics (for people and tools)

Ray Train copies such a folder to the run's storage (local or object storage) when a worker
reports it, and hands it back after a failure (`ray.train.get_checkpoint()`). A folder given
as `checkpoint.resume_from` (local path or URI) is read the same way.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from surgray.errors import UserError
from surgray.io.storage import LOCAL, Storage
from surgray.model.checkpoints.sam2_checkpoint import (
    build_model,
    load_checkpoint,
    read_state_dict,
    save_checkpoint,
)
from surgray.model.sam2.config import ModelConfig
from surgray.model.sam2.network import SAM2Model
from surgray.train.config import ModelSection, TrainConfig

MODEL_FILE = "model.pt"
STATE_FILE = "training_state.pt"
METRICS_FILE = "metrics.json"


class ResumeError(UserError, RuntimeError):
    """A checkpoint to resume from is missing or incomplete."""


@dataclass
class TrainingState:
    """Where a run stands: the next epoch to run and the optimizer steps taken so far."""

    epoch: int  # epochs completed
    global_step: int
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None


def model_config(section: ModelSection) -> ModelConfig:
    """The network a training config describes (variant, size and overrides)."""
    from surgray.model.checkpoints.variants import get_variant

    return get_variant(section.variant, image_size=section.image_size, **section.overrides)


def build_training_model(config: TrainConfig) -> SAM2Model:
    """The model at the start of training: fresh, or from `model.init_checkpoint`.

    With `model.referring` it is a `ReSurgSAM2`; its initial checkpoint may be a plain SAM2
    one (or the release's layout) when `model.init_from` names the new modules
    (`cross_modal_fusion`, `text_tower`, `semantic_head`). A CLIP text folder named by
    `referring.text_encoder` is loaded (frozen, never saved).
    """
    section = config.model
    storage = config.storage.build()
    if section.referring is None:
        model = SAM2Model(model_config(section))
        if section.init_checkpoint is not None:
            load_checkpoint(
                model, section.init_checkpoint, section.init_from or None, storage=storage
            )
        return model
    from surgray.model.checkpoints.referring_checkpoint import load_referring_checkpoint
    from surgray.model.referring.resurgsam2 import ReSurgSAM2

    model = ReSurgSAM2(model_config(section), section.referring)
    if section.init_checkpoint is not None:
        load_referring_checkpoint(
            model, section.init_checkpoint, section.init_from or None, storage=storage
        )
    if section.referring.text_encoder is not None:
        model.load_text_encoder(storage=storage)
    return model


def is_referring(model) -> bool:
    from surgray.model.referring.resurgsam2 import ReSurgSAM2

    return isinstance(model, ReSurgSAM2)


def save_model(model: SAM2Model, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Our checkpoint format; a referring model's file also holds its referring config."""
    if is_referring(model):
        from surgray.model.checkpoints.referring_checkpoint import save_referring_checkpoint

        save_referring_checkpoint(model, path, extra_metadata=extra)
    else:
        save_checkpoint(model, path, extra_metadata=extra)


def write_checkpoint(
    directory: str | Path,
    model: SAM2Model,
    state: TrainingState,
    metrics: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
) -> Path:
    """Fill `directory` (created if needed) with the three files of the module docstring."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra = {"epoch": state.epoch, "global_step": state.global_step}
    if config is not None:
        extra["train_config"] = config.model_dump_json()
    save_model(model, directory / MODEL_FILE, extra)
    torch.save(
        {
            "epoch": state.epoch,
            "global_step": state.global_step,
            "optimizer": state.optimizer,
            "scheduler": state.scheduler,
        },
        directory / STATE_FILE,
    )
    (directory / METRICS_FILE).write_text(json.dumps(metrics or {}, indent=1, default=float))
    return directory


def read_training_state(directory: str | Path) -> TrainingState:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise ResumeError(f"{directory}: no {STATE_FILE} (not a surgray training checkpoint)")
    data = torch.load(path, map_location="cpu", weights_only=False)
    return TrainingState(
        epoch=int(data["epoch"]),
        global_step=int(data["global_step"]),
        optimizer=data.get("optimizer"),
        scheduler=data.get("scheduler"),
    )


def restore(directory: str | Path, model: SAM2Model) -> TrainingState:
    """Load the model weights (strictly) and return the training state of a checkpoint folder."""
    weights = Path(directory) / MODEL_FILE
    if not weights.is_file():
        raise ResumeError(f"{directory}: no {MODEL_FILE} in the checkpoint folder")
    state = read_training_state(directory)
    load_checkpoint(model, weights)
    return state


def fetch_checkpoint_dir(uri: str, target: str | None = None, *, storage: Storage) -> Path:
    """A local copy of a checkpoint folder given by path or URI (`checkpoint.resume_from`)."""
    if "://" not in uri or uri.startswith("file://"):
        path = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
        if not path.is_dir():
            raise ResumeError(f"checkpoint.resume_from {uri}: folder not found")
        return path
    fs, remote = storage.filesystem(uri)
    try:
        names = [os.path.basename(p.rstrip("/")) for p in fs.ls(remote, detail=False)]
    except FileNotFoundError:
        raise ResumeError(f"checkpoint.resume_from {uri}: not found") from None
    missing = [n for n in (MODEL_FILE, STATE_FILE) if n not in names]
    if missing:
        raise ResumeError(f"checkpoint.resume_from {uri}: missing {', '.join(missing)}")
    local = Path(target or tempfile.mkdtemp(prefix="surgray-resume-"))
    for name in (MODEL_FILE, STATE_FILE):
        fs.get(f"{remote.rstrip('/')}/{name}", str(local / name))
    return local


def load_trained_model(
    checkpoint: str | Path,
    device: torch.device | str = "cpu",
    storage: Storage = LOCAL,
    load_text_encoder: bool = True,
) -> SAM2Model:
    """The model of a training checkpoint (a folder or its model.pt), built from the config
    stored in the checkpoint and loaded strictly: a `ReSurgSAM2` when the metadata holds a
    referring config (its CLIP text folder loaded when it names one and `load_text_encoder`)."""
    from surgray.model.checkpoints.referring_checkpoint import (
        REFERRING_METADATA_KEY,
        build_resurgsam2,
    )

    path = str(checkpoint)
    if os.path.isdir(path):
        path = os.path.join(path, MODEL_FILE)
    _, metadata = read_state_dict(path, storage=storage)
    if not metadata or "config" not in metadata:
        raise ResumeError(f"{path}: no model config in the checkpoint metadata")
    cfg = ModelConfig.model_validate_json(metadata["config"])
    if REFERRING_METADATA_KEY in metadata:
        return build_resurgsam2(
            cfg,
            checkpoint=path,
            device=device,
            storage=storage,
            load_text_encoder=load_text_encoder,
        )
    return build_model(cfg, path, device=device, storage=storage)
