"""The per-worker training loop (Ray Train `TorchTrainer` workers, or plain Python).

`WorkerLoop` owns one worker's model, optimizer and data; Ray only enters through
`LoopHooks` (wrap the module for DDP, report an epoch, open the latest checkpoint), so the loop
runs the same without Ray in tests. `surgray.train.ray_worker.train_loop_per_worker` is the
Ray entry point.

Per step: draw a clip (seeded by run seed, worker rank and global step, so a resumed run draws
the same clips), run it (`step.ClipTrainer`, under bf16 autocast on GPU), backpropagate, clip
gradients, step AdamW and the warm-up + cosine schedule. Per epoch: mean loss terms (averaged
over workers), J&F on the validation split (rank 0), then every rank calls `report` (rank 0
with the checkpoint folder: model, optimizer, scheduler, epoch). A restarted worker group
resumes from the latest reported checkpoint: the next epoch, the same step counter.

Stopping early (`schedule.max_steps`, `schedule.time_limit_s`) is decided together by all
workers, so they report the same number of times.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from surgray.train.checkpoints import TrainingState, build_training_model, restore, write_checkpoint
from surgray.train.clip_data import TrainingClip, TrainVideo, load_clip, open_videos
from surgray.train.config import TrainConfig
from surgray.train.losses import SAM2Loss, average_object_count
from surgray.train.optim import apply_freeze, build_optimizer, build_scheduler, is_frozen
from surgray.train.progress import (
    LOSS_PARTS,
    line_due,
    progress_line,
    record_progress,
    show,
)
from surgray.train.samplers import ClipSampler
from surgray.train.step import ClipTrainer

_CLIP_KINDS = ("sam2", "hybrid", "referring", "image")
_CLIP_DRAWS = 32  # clips drawn before giving up on finding a visible object


@dataclass
class LoopHooks:
    """How the loop talks to its runner; the defaults run it alone, without Ray."""

    prepare_module: Callable[[nn.Module], nn.Module] = lambda module: module
    # report(metrics, checkpoint folder or None), called by every worker once per epoch.
    report: Callable[[dict, Path | None], None] = lambda metrics, folder: None
    # A context manager giving the latest checkpoint folder, or None.
    open_latest: Callable[[], contextlib.AbstractContextManager] = lambda: contextlib.nullcontext()


@dataclass
class LoopSummary:
    epochs: list[dict] = field(default_factory=list)  # metrics reported by this worker
    start_epoch: int = 0
    global_step: int = 0


def worker_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def referring_stage_for(model: nn.Module):
    """ReSurgSAM2's stage 1 for referring clips, or None for a plain SAM2 model."""
    from surgray.model.referring.resurgsam2 import ReSurgSAM2, referring_stage

    return referring_stage if isinstance(model, ReSurgSAM2) else None


def torch_threads(config: TrainConfig) -> int:
    explicit = config.scaling.torch_threads
    return explicit if explicit is not None else max(1, int(config.scaling.cpus_per_worker))


class WorkerLoop:
    def __init__(
        self,
        config: TrainConfig,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        hooks: LoopHooks | None = None,
    ) -> None:
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.hooks = hooks or LoopHooks()
        # Fresh modules start the same on every run and rank; dropout then differs per rank.
        torch.manual_seed(worker_seed(config.schedule.seed, 2**31))
        self.model = build_training_model(config)
        torch.manual_seed(worker_seed(config.schedule.seed, 2**31, rank + 1))
        apply_freeze(self.model, config.optim, step=2**62)  # permanent freezing only
        self.state = TrainingState(epoch=0, global_step=0)
        with self.hooks.open_latest() as latest:
            if latest is not None:
                self.state = restore(latest, self.model)
            elif config.checkpoint.resume_from is not None:
                from surgray.train.checkpoints import fetch_checkpoint_dir

                folder = fetch_checkpoint_dir(
                    config.checkpoint.resume_from, storage=config.storage.build()
                )
                self.state = restore(folder, self.model)
        # On the device before the optimizer exists, so restored moments land there too.
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.scheduler = build_scheduler(self.optimizer, config.optim, config.schedule.total_steps)
        self._load_optimizer_state()
        self.module = self.hooks.prepare_module(
            ClipTrainer(
                self.model, config.prompts, SAM2Loss(config.loss), referring_stage_for(self.model)
            )
        )
        self.videos: list[TrainVideo] = open_videos(
            config.data, config.data.train_split, storage=config.storage.build()
        )
        self.sampler = ClipSampler(
            [v.num_frames for v in self.videos], config.sampling, config.data.image_fraction
        )
        self.valid_videos: list[TrainVideo] | None = None
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="surgray-clips")
        self._prefetched: dict[int, Future] = {}
        self._phase_frozen = [
            (name, p)
            for name, p in self.model.named_parameters()
            if p.requires_grad and config.optim.trainable_prefixes is not None
        ]

    # ------------------------------------------------------------------ setup helpers

    def _load_optimizer_state(self) -> None:
        if self.state.optimizer is not None:
            self.optimizer.load_state_dict(self.state.optimizer)
        if self.state.scheduler is not None:
            self.scheduler.load_state_dict(self.state.scheduler)

    @property
    def use_autocast(self) -> bool:
        return self.device.type == "cuda" and self.config.scaling.bf16

    # ------------------------------------------------------------------ data

    def clip_for_step(self, global_step: int) -> TrainingClip:
        """The clip of a global step on this worker (deterministic), on the CPU."""
        seed = self.config.schedule.seed
        rng = np.random.default_rng(worker_seed(seed, self.rank, global_step))
        image_size = self.model.image_size
        for _ in range(_CLIP_DRAWS):
            spec = self.sampler.sample(rng)
            clip = load_clip(
                self.videos[spec.video],
                spec,
                image_size,
                self.config.sampling.max_objects,
                rng,
                self.config.data.object_ids,
                self.model.cfg.image_mean,
                self.model.cfg.image_std,
            )
            if clip is not None:
                return clip
        raise RuntimeError(
            f"no clip with a visible object in {_CLIP_DRAWS} draws (step {global_step}); "
            "check data.object_ids and the masks"
        )

    # ------------------------------------------------------------------ one step

    def next_clip(self, global_step: int) -> TrainingClip:
        """The step's clip, decoded in a background thread while the previous step ran; the
        next step's clip starts decoding now (reading frames overlaps with compute)."""
        future = self._prefetched.pop(global_step, None)
        clip = future.result() if future is not None else self.clip_for_step(global_step)
        self._prefetched.clear()  # a step that jumped ahead leaves nothing stale behind
        self._prefetched[global_step + 1] = self._loader.submit(self.clip_for_step, global_step + 1)
        return clip.to(self.device)

    def close(self) -> None:
        self._prefetched.clear()
        self._loader.shutdown(wait=True, cancel_futures=True)

    def train_step(self, global_step: int) -> tuple[dict[str, float], str]:
        clip = self.next_clip(global_step)
        generator = torch.Generator().manual_seed(
            worker_seed(self.config.schedule.seed, self.rank, global_step, 1)
        )
        num_objects = average_object_count(clip.num_objects, self.device)
        self.module.train()
        autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.use_autocast
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.module(clip, generator, num_objects)
        loss = out.loss.total
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss is {float(loss)} at step {global_step} (video {clip.video_id!r}, "
                f"{clip.kind} clip); lower the learning rate or check the masks"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._drop_phase_frozen_grads(global_step)
        clip_norm = self.config.optim.grad_clip_norm
        if clip_norm is not None:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        return out.loss.as_floats(), clip.kind

    def _drop_phase_frozen_grads(self, step: int) -> None:
        """First-phase freezing (ReSurgSAM2 pretraining) without touching requires_grad, which
        DDP fixes at construction: AdamW skips parameters whose gradient is None."""
        for name, param in self._phase_frozen:
            if is_frozen(name, self.config.optim, step):
                param.grad = None

    # ------------------------------------------------------------------ the run

    def should_stop(self, global_step: int, started: float) -> bool:
        schedule = self.config.schedule
        stop = global_step >= schedule.total_steps
        if schedule.time_limit_s is not None and time.monotonic() - started > schedule.time_limit_s:
            stop = True
        if self.world_size > 1 and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if stop else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item() > 0)
        return stop

    def run(self) -> LoopSummary:
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> LoopSummary:
        cfg = self.config
        schedule = cfg.schedule
        summary = LoopSummary(start_epoch=self.state.epoch, global_step=self.state.global_step)
        self._progress("start", epoch=self.state.epoch, resumed_from_epoch=self.state.epoch)
        started = time.monotonic()
        global_step = first_step = self.state.global_step
        stop = self.should_stop(global_step, started)
        for epoch in range(self.state.epoch, schedule.epochs):
            if stop:
                break
            sums, kinds, steps, epoch_start = Counter(), Counter(), 0, time.monotonic()
            for step in range(schedule.steps_per_epoch):
                parts, kind = self.train_step(global_step)
                global_step += 1
                steps += 1
                sums.update({k: parts[k] for k in LOSS_PARTS})
                kinds[kind] += 1
                self._progress(
                    "step", epoch=epoch, step=step, global_step=global_step, loss=parts["total"]
                )
                due = line_due(global_step, first_step, schedule.total_steps, schedule.log_every)
                if self.rank == 0 and due:
                    lr = max(g["lr"] for g in self.optimizer.param_groups)
                    per_step = (time.monotonic() - epoch_start) / steps
                    show(progress_line(schedule, epoch, step, global_step, parts, lr, per_step))
                stop = self.should_stop(global_step, started)
                if stop:
                    break
            metrics = self._epoch_metrics(epoch, global_step, sums, kinds, steps, epoch_start)
            if stop and step + 1 < schedule.steps_per_epoch:
                metrics["stopped_early"] = 1.0
            self.state = TrainingState(
                epoch=epoch + 1,
                global_step=global_step,
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
            )
            self._report(metrics)
            summary.epochs.append(metrics)
            self._progress("epoch", epoch=epoch, global_step=global_step, loss=metrics["loss"])
        summary.global_step = global_step
        return summary

    # ------------------------------------------------------------------ epoch end

    def _epoch_metrics(self, epoch, global_step, sums, kinds, steps, epoch_start) -> dict:
        values = torch.tensor([sums[k] for k in LOSS_PARTS] + [float(steps)], dtype=torch.float64)
        if self.world_size > 1 and torch.distributed.is_initialized():
            values = values.to(self.device)
            torch.distributed.all_reduce(values)
            values = values.cpu()
        count = max(float(values[-1]), 1.0)
        means = {k: float(values[i]) / count for i, k in enumerate(LOSS_PARTS)}
        metrics = {
            "epoch": epoch + 1,
            "global_step": global_step,
            "loss": means["total"],
            **{f"loss_{k}": v for k, v in means.items() if k != "total"},
            "lr": max(float(g["lr"]) for g in self.optimizer.param_groups),
            "seconds_per_step": (time.monotonic() - epoch_start) / max(steps, 1),
            **{f"clips_{kind}": float(kinds[kind]) for kind in _CLIP_KINDS},
        }
        every = self.config.validation.every_epochs
        if self.rank == 0 and every and (epoch + 1) % every == 0:
            metrics.update(self._validate())
        return metrics

    def _validate(self) -> dict[str, float]:
        from surgray.train.validation import can_refer, validate

        if self.valid_videos is None:
            self.valid_videos = open_videos(
                self.config.data, self.config.validation_split, storage=self.config.storage.build()
            )
        section = self.config.validation
        say = lambda text: show(f"[surgray train] validation {text}")  # noqa: E731
        result = validate(
            self.valid_videos, self.model, section.max_videos, section.max_frames, progress=say
        )
        metrics = result.as_metrics()
        if section.text and can_refer(self.model):
            text = validate(
                self.valid_videos, self.model, section.max_videos, section.max_frames, "text", say
            )
            metrics.update(text.as_metrics("val_text_"))
        return metrics

    def _report(self, metrics: dict) -> None:
        if self.rank != 0:
            self.hooks.report(metrics, None)
            return
        with tempfile.TemporaryDirectory(prefix="surgray-ckpt-") as folder:
            write_checkpoint(folder, self.model, self.state, metrics, self.config)
            self.hooks.report(metrics, Path(folder))

    def _progress(self, event: str, **fields) -> None:
        record_progress(self.config.checkpoint.progress_file, event, self.rank, **fields)
