"""Checks run before any worker starts, so a bad dataset or storage fails in seconds, not in
epoch 3: every problem found is listed in one `PreflightError`.

- model: the variant exists, the overrides make a valid network, the initial checkpoint fits
  it (strictly, apart from `model.init_from` modules);
- data: the training (and validation) split opens, is not empty, every video's frames have
  their masks and the masks have the frames' size (from file headers; `data.preflight_videos`
  limits how many videos are read), and clips can be drawn from the videos;
- storage: `checkpoint.storage_path` can be written (a probe file is written and removed),
  `checkpoint.resume_from` holds a training checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from surgray.errors import UserError
from surgray.io.storage import Storage
from surgray.train.config import TrainConfig


class PreflightError(UserError, ValueError):
    """The run cannot start; the message lists every problem found."""


@dataclass
class PreflightReport:
    train_videos: int = 0
    valid_videos: int = 0
    annotated_frames: int = 0
    problems: list[str] = field(default_factory=list)


def check_storage(uri: str, what: str, *, storage: Storage) -> None:
    """Write and remove a probe file under `uri` (a folder, created if needed)."""
    import uuid

    probe_name = f".surgray-probe-{uuid.uuid4().hex[:8]}"
    try:
        if "://" not in uri or uri.startswith("file://"):
            from pathlib import Path

            folder = Path(uri[len("file://") :] if uri.startswith("file://") else uri)
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / probe_name
            probe.write_bytes(b"ok")
            probe.unlink()
            return
        fs, path = storage.filesystem(uri)
        probe = f"{path.rstrip('/')}/{probe_name}"
        fs.pipe_file(probe, b"ok")
        fs.rm_file(probe)
    except Exception as exc:  # any failure means the run could not save its checkpoints
        raise PreflightError(
            f"{what} {uri!r} is not writable ({type(exc).__name__}: {exc})"
        ) from exc


def _check_split(config: TrainConfig, split: str, report: PreflightReport, role: str) -> list:
    from surgray.data.files import DatasetError
    from surgray.train.clip_data import SampleVideo, open_videos

    try:
        videos = open_videos(config.data, split, storage=config.storage.build())
    except (DatasetError, ValueError, OSError) as exc:
        report.problems.append(f"{role} split {split!r}: {exc}")
        return []
    if not videos:
        report.problems.append(f"{role} split {split!r}: no videos (empty split)")
        return []
    limit = config.data.preflight_videos
    for video in videos[: limit or len(videos)]:
        try:
            if isinstance(video, SampleVideo):
                video.sample.validate()
            else:
                video.load((0,))  # draws the synthetic clip: checks its settings
        except (DatasetError, ValueError, OSError) as exc:
            report.problems.append(f"{role} video {video.video_id!r}: {exc}")
        if video.num_frames == 0:
            report.problems.append(f"{role} video {video.video_id!r}: no annotated frame")
    return videos


def preflight(config: TrainConfig) -> PreflightReport:
    """Check model, data and storage; raise `PreflightError` listing every problem."""
    from surgray.train.checkpoints import (
        build_training_model,
        fetch_checkpoint_dir,
        read_training_state,
    )
    from surgray.train.samplers import ClipSampler

    report = PreflightReport()
    try:
        build_training_model(config)
    except Exception as exc:  # unknown variant, bad overrides, checkpoint missing or not fitting
        report.problems.append(f"model: {exc}")

    videos = _check_split(config, config.data.train_split, report, "training")
    report.train_videos = len(videos)
    report.annotated_frames = sum(v.num_frames for v in videos)
    if videos and not report.problems:
        try:
            ClipSampler([v.num_frames for v in videos], config.sampling, config.data.image_fraction)
        except ValueError as exc:
            report.problems.append(f"sampling: {exc}")
    if config.validation.every_epochs and config.validation_split:
        report.valid_videos = len(
            _check_split(config, config.validation_split, report, "validation")
        )

    section = config.checkpoint
    storage = config.storage.build()
    try:
        check_storage(section.storage_path, "checkpoint.storage_path", storage=storage)
    except PreflightError as exc:
        report.problems.append(str(exc))
    if section.resume_from is not None:
        try:
            read_training_state(fetch_checkpoint_dir(section.resume_from, storage=storage))
        except Exception as exc:
            report.problems.append(f"checkpoint.resume_from: {exc}")
    if report.problems:
        listed = "\n  - ".join(report.problems)
        raise PreflightError(f"training cannot start:\n  - {listed}")
    return report
