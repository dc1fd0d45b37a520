"""Build and run the Ray Train `TorchTrainer` of a `TrainConfig`.

    result = run_training(TrainConfig.from_yaml("configs/train_demo.yaml"))

Checks come first (`preflight`), then Ray: the current Ray connection if there is one, else
`ray.init(address=scaling.address)` (None starts a local cluster; under `ray job submit` it
joins the job's cluster). Checkpoints go to `checkpoint.storage_path` (a local folder or an
object-store URI; with a `storage:` section, e.g. a custom S3 endpoint, the fsspec
filesystem is handed to Ray through pyarrow). Ray Train resumes a run whose name already has
checkpoints under the storage path, and restarts failed workers up to `failure.max_failures`
times from the latest checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from surgray.io.storage import Storage
from surgray.train.config import TrainConfig
from surgray.train.preflight import PreflightReport, preflight
from surgray.train.ray_worker import train_loop_per_worker


@dataclass
class TrainOutcome:
    result: Any  # ray.train.Result
    preflight: PreflightReport | None

    @property
    def checkpoint_path(self) -> str | None:
        checkpoint = self.result.checkpoint
        return None if checkpoint is None else checkpoint.path

    @property
    def metrics(self) -> dict:
        return dict(self.result.metrics or {})


def ray_storage(uri: str, *, storage: Storage):
    """(storage_path, storage_filesystem) for Ray's `RunConfig`."""
    if "://" not in uri or uri.startswith("file://"):
        local = uri[len("file://") :] if uri.startswith("file://") else uri
        return os.path.abspath(os.path.expanduser(local)), None
    if not storage.options:
        return uri, None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = storage.filesystem(uri)
    return path, PyFileSystem(FSSpecHandler(fs))


def backend_of(config: TrainConfig) -> str:
    backend = config.scaling.backend
    if backend == "auto":
        return "nccl" if config.scaling.use_gpu else "gloo"
    return backend


def build_trainer(config: TrainConfig):
    """The `TorchTrainer` of a config (nothing runs until `.fit()`)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = config.scaling
    storage_path, filesystem = ray_storage(
        config.checkpoint.storage_path, storage=config.storage.build()
    )
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.model_dump(mode="json"),
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy,
        ),
        torch_config=TorchConfig(backend=backend_of(config)),
        run_config=RunConfig(
            name=config.checkpoint.name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoint.keep),
            failure_config=FailureConfig(max_failures=config.failure.max_failures),
        ),
    )


def _absolute(path: str | None, base: str) -> str | None:
    if path is None or "://" in path:
        return path
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))


def with_absolute_paths(config: TrainConfig, base: str | None = None) -> TrainConfig:
    """Local paths made absolute against `base` (the current directory): Ray Train workers
    run in a working directory of their own, where relative paths would name nothing."""
    base = base or os.getcwd()
    model = config.model
    updates = {"init_checkpoint": _absolute(model.init_checkpoint, base)}
    if model.referring is not None and model.referring.text_encoder is not None:
        updates["referring"] = model.referring.model_copy(
            update={"text_encoder": _absolute(model.referring.text_encoder, base)}
        )
    section = config.checkpoint
    checkpoint = section.model_copy(
        update={
            "resume_from": _absolute(section.resume_from, base),
            "progress_file": _absolute(section.progress_file, base),
        }
    )
    return config.model_copy(
        update={"model": model.model_copy(update=updates), "checkpoint": checkpoint}
    )


def run_training(config: TrainConfig, check: bool = True) -> TrainOutcome:
    """Check, then train on Ray; returns Ray's result (metrics, latest checkpoint)."""
    import ray

    config = with_absolute_paths(config)
    report = preflight(config) if check else None
    if not ray.is_initialized():
        ray.init(address=config.scaling.address)
    result = build_trainer(config).fit()
    return TrainOutcome(result=result, preflight=report)
