"""Ray Train glue for the training loop: `train_loop_per_worker` runs on every `TorchTrainer`
worker, and `ray_hooks` connects `loop.WorkerLoop` to Ray (DDP wrapping with
`prepare_model`, `ray.train.report` with the checkpoint folder, `ray.train.get_checkpoint`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from surgray.train.config import parse_train_config
from surgray.train.loop import LoopHooks, WorkerLoop, torch_threads


def ray_hooks() -> LoopHooks:
    import ray.train
    import ray.train.torch

    def prepare(module: nn.Module) -> nn.Module:
        return ray.train.torch.prepare_model(
            module, parallel_strategy_kwargs={"find_unused_parameters": True}
        )

    def report(metrics: dict, folder: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(folder)) if folder else None
        name = f"epoch_{int(metrics['epoch']):04d}" if folder else None
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)

    @contextlib.contextmanager
    def open_latest() -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    return LoopHooks(prepare_module=prepare, report=report, open_latest=open_latest)


def train_loop_per_worker(config: dict) -> None:
    """Run by every `TorchTrainer` worker with the `TrainConfig` as plain data."""
    import ray.train
    import ray.train.torch

    cfg = parse_train_config(config)
    # Ray sets OMP_NUM_THREADS from the worker's CPUs, but a reused worker process may keep an
    # older torch setting: state it explicitly.
    torch.set_num_threads(torch_threads(cfg))
    context = ray.train.get_context()
    loop = WorkerLoop(
        cfg,
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        hooks=ray_hooks(),
    )
    loop.run()
