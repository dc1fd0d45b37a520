"""Work items of the annotation job: one per video, or one per segment of a long video.

An actor tracks a work item from its first frame to its last, in order, reading the frames
itself; work items therefore must not depend on each other.

Only videos prompted by text alone are cut into segments. A text prompt is resolved inside
each segment anew (the referring pipeline detects the described object and picks a credible
initial frame there), so every segment can start cold. A point, box or mask prompt belongs to
one frame: the tracker's memory bank is seeded on that frame and every later (and, tracking
backwards, earlier) frame is segmented from memories that descend from it. A segment that
does not contain the prompt frame would have nothing to start from, and one after it would
need the memory state at its first frame, which exists only after tracking everything in
between; so such videos stay whole.

Segment bounds are in source frames, half-open [start, end), and their length is a multiple
of the frame stride, so each segment samples exactly the frames the whole video would. (With
`target_fps`, sampling restarts at each segment start, which may move a frame by one.)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from surgray.annotate.manifest import VideoTask
from surgray.annotate.prompts import VideoPrompts
from surgray.io.video_types import VideoInfo

_OPEN_END = -1  # rows hold -1 for "to the end of the video": Arrow-friendly, no nulls


@dataclass(frozen=True)
class WorkItem:
    video_id: str
    video_uri: str
    prompts_json: str
    segment_index: int
    num_segments: int
    start_frame: int
    end_frame: int | None  # exclusive; None reads to the end of the video

    @property
    def prompts(self) -> VideoPrompts:
        return VideoPrompts.from_json(self.prompts_json)

    def to_row(self) -> dict[str, Any]:
        """A flat dict of str and int, for `ray.data.from_items`."""
        row = asdict(self)
        row["end_frame"] = _OPEN_END if self.end_frame is None else self.end_frame
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> WorkItem:
        end = int(row["end_frame"])
        return cls(
            video_id=str(row["video_id"]),
            video_uri=str(row["video_uri"]),
            prompts_json=str(row["prompts_json"]),
            segment_index=int(row["segment_index"]),
            num_segments=int(row["num_segments"]),
            start_frame=int(row["start_frame"]),
            end_frame=None if end == _OPEN_END else end,
        )


def segment_bounds(frame_count: int, max_frames: int, stride: int = 1) -> list[tuple[int, int]]:
    """Near-equal [start, end) pieces of at most `max_frames` covering `frame_count` frames.

    Pieces are as even as the stride allows, so a video just over the limit becomes two
    halves rather than a full piece and a sliver.
    """
    if frame_count < 0 or max_frames < 1 or stride < 1:
        raise ValueError(f"bad segmenting: {frame_count=}, {max_frames=}, {stride=}")
    if max_frames < stride:
        raise ValueError(f"max_frames ({max_frames}) must be at least the stride ({stride})")
    if frame_count == 0:
        return [(0, 0)]
    longest = max_frames - max_frames % stride
    pieces = math.ceil(frame_count / longest)
    length = math.ceil(math.ceil(frame_count / pieces) / stride) * stride
    return [(start, min(start + length, frame_count)) for start in range(0, frame_count, length)]


def needs_frame_count(task: VideoTask, max_segment_frames: int | None) -> bool:
    """Whether planning `task` needs its video probed (only splittable videos do)."""
    return max_segment_frames is not None and task.prompts.text_only


def plan_video(
    task: VideoTask,
    *,
    max_segment_frames: int | None = None,
    stride: int = 1,
    info: VideoInfo | None = None,
) -> list[WorkItem]:
    prompts_json = task.prompts.to_json()

    def item(index: int, count: int, start: int, end: int | None) -> WorkItem:
        return WorkItem(task.video_id, task.video_uri, prompts_json, index, count, start, end)

    if not needs_frame_count(task, max_segment_frames):
        return [item(0, 1, 0, None)]
    if info is None:
        raise ValueError(
            f"video {task.video_id} is split by text segments and needs its frame count; probe it"
        )
    assert max_segment_frames is not None
    bounds = segment_bounds(info.frame_count, max_segment_frames, stride)
    items = [item(n, len(bounds), start, end) for n, (start, end) in enumerate(bounds)]
    # An estimated count can be short: the last piece reads on to the real end.
    last = items[-1]
    if len(items) == 1 or not info.frame_count_exact:
        items[-1] = item(last.segment_index, len(items), last.start_frame, None)
    return items


def plan_work_items(
    tasks: Iterable[VideoTask],
    *,
    max_segment_frames: int | None = None,
    stride: int = 1,
    infos: Mapping[str, VideoInfo] | None = None,
) -> list[dict[str, Any]]:
    """Rows for `ray.data.from_items`: each video's items in segment order, videos in order.

    `infos` (video id -> probe result) is needed for the videos `needs_frame_count` names.
    """
    infos = infos or {}
    rows = []
    for task in tasks:
        items = plan_video(
            task,
            max_segment_frames=max_segment_frames,
            stride=stride,
            info=infos.get(task.video_id),
        )
        rows.extend(item.to_row() for item in items)
    return rows
