"""Value types shared by the video reader and its frame producers."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One decoded frame; `index` is its position in the source video, `time` in seconds."""

    index: int
    time: float
    image: np.ndarray  # HxWx3 uint8 RGB


@dataclass(frozen=True)
class VideoInfo:
    uri: str
    frame_count: int
    frame_count_exact: bool  # False when estimated from duration x fps
    fps: float
    width: int
    height: int
    duration: float | None  # seconds
    codec: str  # decoder name, or "jpeg"/"png" for frame folders
    is_frame_folder: bool = False


@dataclass(frozen=True)
class FrameSelection:
    """Which source frames to emit: [start, end) then every `stride`-th or `target_fps`."""

    start: int = 0
    end: int | None = None
    stride: int = 1
    target_fps: float | None = None

    def past_end(self, index: int) -> bool:
        return self.end is not None and index >= self.end

    def keeps(self, index: int, fps: float) -> bool:
        if index < self.start or self.past_end(index):
            return False
        offset = index - self.start
        if self.target_fps is None or self.target_fps >= fps:
            return offset % self.stride == 0
        # Keep the first frame of each 1/target_fps slot, counted from the range start.
        ratio = self.target_fps / fps
        return offset == 0 or math.floor(offset * ratio + 1e-9) != math.floor(
            (offset - 1) * ratio + 1e-9
        )


@dataclass
class ReaderStats:
    """Counters written by the producer thread, read by tests and monitoring."""

    frames_put: int = 0
    peak_queue_depth: int = 0
    bytes_fetched: int | None = None  # remote objects only: bytes requested from the store
    seeked: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
