"""The optional per-video exports of the annotation job: DAVIS PNGs, SA-V JSON, overlay MP4.

Written by the driver after a video's last segment is in and before its completion marker,
so a video never counts as complete with exports missing. They are built from the Parquet
parts just written and explicit arguments only (no source metadata reaches them), and the
overlay leaves out the frames the skip hook dropped, as those may show the patient.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from surgray.annotate.hooks import load_skip_hook
from surgray.annotate.outputs import VideoStatus
from surgray.annotate.rows import records_of_parts

if TYPE_CHECKING:
    from surgray.annotate.driver import JobPlan
    from surgray.io.video import Frame


def _sampled_fps(fps: float, stride: int, target_fps: float | None) -> float:
    if target_fps is not None:
        return min(fps, target_fps)
    return fps / stride


def export_video(plan: JobPlan, status: VideoStatus) -> None:
    """Write the formats `plan.config.exports` asks for besides Parquet, for one done video."""
    config = plan.config
    formats = [fmt for fmt in config.exports if fmt != "parquet"]
    if not formats:
        return
    from surgray.io.exports import write_davis, write_overlay_video, write_sav_json
    from surgray.io.video import VideoReader, probe

    layout, video_id = plan.layout, status.video_id
    storage = plan.layout.storage
    task = plan.tasks[video_id]
    records = records_of_parts(layout, video_id, status.parts)
    if not records:
        return
    info = plan.infos.get(video_id) or probe(task.video_uri, storage=storage)
    if "davis" in formats:
        write_davis(f"{layout.prefix}/exports/davis", records, storage=storage)
    if "sav_json" in formats:
        write_sav_json(
            layout.export_uri(video_id, "sav_json"),
            records,
            fps=info.fps,
            frame_count=info.frame_count,
            storage=storage,
        )
    if "overlay_mp4" in formats:
        frames = config.frames
        reader = VideoReader(
            task.video_uri,
            storage=storage,
            stride=frames.stride,
            target_fps=frames.target_fps,
        )
        skip = load_skip_hook(frames.skip_hook)

        def shown() -> Iterator[Frame]:
            with reader:
                for frame in reader:
                    if skip is None or not skip(frame):
                        yield frame

        write_overlay_video(
            layout.export_uri(video_id, "overlay_mp4"),
            shown(),
            records,
            _sampled_fps(info.fps, frames.stride, frames.target_fps),
            storage=storage,
        )
