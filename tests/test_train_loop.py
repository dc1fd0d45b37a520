"""The per-worker training loop without Ray: epochs, checkpoints, resume, stopping, freezing."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
import torch

from surgray.model.checkpoints.sam2_checkpoint import read_state_dict
from surgray.train.checkpoints import MODEL_FILE, STATE_FILE, load_trained_model
from surgray.train.config import parse_train_config
from surgray.train.loop import LoopHooks, WorkerLoop

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(tmp_path: Path, **sections):
    data = {
        "model": {"variant": "micro", "image_size": 64},
        "data": {
            "source": "synthetic",
            "synthetic": {"train_videos": 2, "valid_videos": 1, "num_frames": 6, "height": 64, "width": 64},
        },
        "sampling": {"clip_length": 3, "max_objects": 2, "hybrid_random_frames": 2, "hybrid_consecutive_frames": 1},
        "prompts": {"num_correction_clicks": 1},
        "optim": {"base_lr": 1e-3, "vision_lr": 1e-3, "grad_clip_norm": 1.0},
        "schedule": {"epochs": 2, "steps_per_epoch": 3, "log_every": 100},
        "validation": {"every_epochs": 2, "max_videos": 1, "max_frames": 4},
        "checkpoint": {"storage_path": str(tmp_path / "runs"), "progress_file": str(tmp_path / "progress.jsonl")},
    }  # fmt: skip
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return parse_train_config(data)


class Recorder:
    """Report hook that keeps each epoch's metrics and a copy of its checkpoint folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.reports: list[tuple[dict, Path | None]] = []

    def __call__(self, metrics: dict, folder: Path | None) -> None:
        kept = None
        if folder is not None:
            kept = self.root / f"epoch_{metrics['epoch']}"
            shutil.copytree(folder, kept)
        self.reports.append((metrics, kept))


def latest(folder: Path):
    return lambda: contextlib.nullcontext(folder)


def test_epochs_report_metrics_and_checkpoints_then_resume(tmp_path):
    recorder = Recorder(tmp_path)
    summary = WorkerLoop(tiny_config(tmp_path), hooks=LoopHooks(report=recorder)).run()
    assert [m["epoch"] for m, _ in recorder.reports] == [1, 2]
    assert [m["global_step"] for m, _ in recorder.reports] == [3, 6]
    first, second = recorder.reports[0][0], recorder.reports[1][0]
    for key in ("loss", "loss_focal", "loss_dice", "loss_iou", "loss_object_class", "lr"):
        assert torch.isfinite(torch.tensor(first[key]))
    assert "val_jf" not in first and 0.0 <= second["val_jf"] <= 1.0  # validation every 2 epochs
    assert sum(first[f"clips_{k}"] for k in ("sam2", "hybrid", "referring", "image")) == 3
    assert summary.global_step == 6
    folder = recorder.reports[1][1]
    assert {p.name for p in folder.iterdir()} == {MODEL_FILE, STATE_FILE, "metrics.json"}
    _, metadata = read_state_dict(folder / MODEL_FILE)
    assert (metadata["epoch"], metadata["global_step"]) == (2, 6)
    assert load_trained_model(folder).image_size == 64

    resumed = Recorder(tmp_path / "resumed")
    loop = WorkerLoop(
        tiny_config(tmp_path, schedule={"epochs": 3}),
        hooks=LoopHooks(report=resumed, open_latest=latest(folder)),
    )
    assert (loop.state.epoch, loop.state.global_step) == (2, 6)
    assert loop.scheduler.last_epoch == 6
    # AdamW's step counts come back (parameters without a gradient in a step skip it).
    steps = [int(s["step"]) for s in loop.optimizer.state_dict()["state"].values()]
    assert max(steps) == 6 and min(steps) >= 1
    loop.run()
    assert [(m["epoch"], m["global_step"]) for m, _ in resumed.reports] == [(3, 9)]


def test_resume_from_a_stored_checkpoint_folder(tmp_path):
    recorder = Recorder(tmp_path)
    WorkerLoop(
        tiny_config(tmp_path, schedule={"epochs": 1}), hooks=LoopHooks(report=recorder)
    ).run()
    folder = recorder.reports[0][1]
    config = tiny_config(tmp_path, schedule={"epochs": 2}, checkpoint={"resume_from": str(folder)})
    loop = WorkerLoop(config)
    assert (loop.state.epoch, loop.state.global_step) == (1, 3)
    saved, _ = read_state_dict(folder / MODEL_FILE)
    assert all(torch.equal(saved[k], v) for k, v in loop.model.state_dict().items())


def test_clips_are_fixed_by_seed_rank_and_step(tmp_path):
    config = tiny_config(tmp_path)
    a, b = WorkerLoop(config), WorkerLoop(config)
    other_rank = WorkerLoop(config, rank=1)
    for step in (0, 5):
        clip_a, clip_b = a.clip_for_step(step), b.clip_for_step(step)
        assert torch.equal(clip_a.images, clip_b.images) and torch.equal(clip_a.masks, clip_b.masks)
    differs = [
        not torch.equal(a.clip_for_step(s).images, other_rank.clip_for_step(s).images)
        for s in range(4)
    ]
    assert any(differs)


def test_max_steps_ends_the_run_with_a_partial_epoch(tmp_path):
    recorder = Recorder(tmp_path)
    config = tiny_config(
        tmp_path, schedule={"epochs": 3, "max_steps": 4}, validation={"every_epochs": 0}
    )
    WorkerLoop(config, hooks=LoopHooks(report=recorder)).run()
    assert [(m["epoch"], m["global_step"]) for m, _ in recorder.reports] == [(1, 3), (2, 4)]
    assert "stopped_early" not in recorder.reports[0][0]
    assert recorder.reports[1][0]["stopped_early"] == 1.0


def test_first_phase_freezing_trains_only_the_listed_modules(tmp_path):
    config = tiny_config(
        tmp_path,
        optim={"trainable_prefixes": ["sam_mask_decoder."], "unfreeze_at_step": 1},
        validation={"every_epochs": 0},
    )
    loop = WorkerLoop(config)
    encoder = [p for n, p in loop.model.named_parameters() if n.startswith("image_encoder.")]
    decoder = [p for n, p in loop.model.named_parameters() if n.startswith("sam_mask_decoder.")]
    before = [p.detach().clone() for p in encoder + decoder]
    loop.train_step(0)
    after = [p.detach() for p in encoder + decoder]
    assert all(torch.equal(x, y) for x, y in zip(before[: len(encoder)], after[: len(encoder)]))
    assert any(not torch.equal(x, y) for x, y in zip(before[len(encoder) :], after[len(encoder) :]))
    loop.train_step(1)  # the phase is over: the encoder trains too
    assert any(not torch.equal(x, p.detach()) for x, p in zip(before, encoder))


def test_progress_lines_reach_stdout_once_under_ray_trains_print_patch(tmp_path, capsys, caplog):
    """Ray Train replaces print() in its workers by one that writes to stdout and also logs to
    the root logger, whose console handler wrote every progress line to the driver again."""
    from ray.train.v2._internal.logging.patch_print import print_context_manager, redirected_print

    config = tiny_config(tmp_path, schedule={"epochs": 1, "steps_per_epoch": 2, "log_every": 1})
    with caplog.at_level("INFO"), print_context_manager(redirected_print):
        WorkerLoop(config).run()
    lines = [line for line in capsys.readouterr().out.splitlines() if "[surgray train]" in line]
    assert [line.split(" (global ")[1].split(")")[0] for line in lines] == ["1/2", "2/2"]
    assert "(focal " in lines[0] and " tsl 0 text_cat 0 pixel_cat 0) " in lines[0]
    assert not [r for r in caplog.records if "[surgray train]" in r.getMessage()]
