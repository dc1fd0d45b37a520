"""Checks of a task's prompts against its video, once the video has been probed.

A manifest row can be valid on its own and still not fit its video: a prompt past the last
frame, on a frame the sampling never reaches, or a box outside the picture. Those are reported
like bad rows, naming the video by id, and the video is not annotated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from surgray.annotate.config import FramesConfig
from surgray.annotate.logsafe import redact
from surgray.annotate.manifest import ManifestError, VideoTask
from surgray.io.storage import Storage
from surgray.io.video_types import FrameSelection, VideoInfo


@dataclass(frozen=True)
class ProbeResult:
    video_id: str
    info: VideoInfo | None  # None when the video could not be read
    errors: tuple[ManifestError, ...]

    @property
    def ok(self) -> bool:
        return self.info is not None and not self.errors


def check_prompt_frames(
    task: VideoTask, info: VideoInfo, frames: FramesConfig | None = None
) -> list[ManifestError]:
    """Problems of `task`'s object prompts on a video described by `info`."""
    selection = FrameSelection(
        stride=frames.stride if frames else 1, target_fps=frames.target_fps if frames else None
    )
    count_note = "" if info.frame_count_exact else " (estimated)"
    problems = []
    for obj in task.prompts.objects:
        where = f"prompt of obj_id {obj.obj_id} at frame {obj.frame}"
        if obj.frame >= info.frame_count:
            reason = f"{where} is past the end of the video ({info.frame_count} frames{count_note})"
        elif not selection.keeps(obj.frame, info.fps):
            reason = f"{where} is not a sampled frame (stride {selection.stride}, target_fps {selection.target_fps})"
        else:
            reason = _geometry_problem(where, obj, info.width, info.height)
        if reason:
            problems.append(ManifestError(task.row, reason, task.video_id))
    return problems


def _geometry_problem(where: str, obj: Any, width: int, height: int) -> str | None:
    if any(x > width or y > height for x, y in obj.points):
        return f"{where}: a point lies outside the {width}x{height} frame"
    if obj.box is not None and (obj.box[2] > width or obj.box[3] > height):
        return f"{where}: the box reaches outside the {width}x{height} frame"
    if obj.mask_rle is not None and tuple(obj.mask_rle.size) != (height, width):
        return f"{where}: mask size {list(obj.mask_rle.size)} differs from the frame ({height}, {width})"
    return None


def probe_task(
    task: VideoTask,
    frames: FramesConfig | None = None,
    *,
    storage: Storage,
) -> ProbeResult:
    """Probe `task`'s video and check its prompts; read errors are reported, not raised."""
    from surgray.io.video import VideoError, probe

    try:
        info = probe(task.video_uri, storage=storage)
        last = max((obj.frame for obj in task.prompts.objects), default=-1)
        if last >= info.frame_count and not info.frame_count_exact:
            # An estimated count may be short; count the frames before calling a prompt late.
            info = probe(task.video_uri, storage=storage, count_exact=True)
    except (VideoError, OSError) as exc:
        reason = "cannot read the video: " + redact(str(exc), task.video_uri, task.video_id)
        return ProbeResult(task.video_id, None, (ManifestError(task.row, reason, task.video_id),))
    return ProbeResult(task.video_id, info, tuple(check_prompt_frames(task, info, frames)))


def needs_probe(task: VideoTask, max_segment_frames: int | None) -> bool:
    """Whether the job must probe `task`'s video before planning: to check its object prompts
    against the video, or to count the frames of a text-prompted video it may split."""
    return bool(task.prompts.objects) or (max_segment_frames is not None and task.prompts.text_only)
