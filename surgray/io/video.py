"""Streaming video decode from local paths and object storage, with decode-ahead in a thread.

`VideoReader` decodes containers (whatever the installed FFmpeg reads: H.264, H.265, VP9, AV1,
MJPEG, MPEG-4...) and folders of JPEG/PNG frames. Remote objects are opened through fsspec in
modest blocks and handed to PyAV, so a faststart MP4 is read only as far as it is decoded.
Decoded frames wait in a queue of `prefetch` frames; memory does not depend on video length.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from surgray.io.container_decode import iter_container, probe_container
from surgray.io.errors import VideoError
from surgray.io.frame_folder import is_frame_folder, iter_folder, probe_folder
from surgray.io.storage import DEFAULT_BLOCK_SIZE, LOCAL, Storage
from surgray.io.video_types import Frame, FrameSelection, ReaderStats, VideoInfo

__all__ = ["Frame", "ReaderStats", "VideoError", "VideoInfo", "VideoReader", "probe"]

DEFAULT_FOLDER_FPS = 30.0  # frame folders carry no rate; this is what their times assume
_POLL_SECONDS = 0.05


def probe(
    uri: str | os.PathLike[str],
    *,
    storage: Storage = LOCAL,
    count_exact: bool = False,
    folder_fps: float = DEFAULT_FOLDER_FPS,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> VideoInfo:
    """Frame count, fps, size, duration and codec of a video file or frame folder.

    The count is exact when the container indexes its frames (MP4/MOV/AVI); otherwise it is
    estimated from the duration and `frame_count_exact` is False, unless `count_exact` asks
    for a demux pass over the whole file.
    """
    text = os.fspath(uri)
    if is_frame_folder(text, storage=storage):
        return probe_folder(text, folder_fps, storage=storage)
    return probe_container(text, storage=storage, block_size=block_size, count_exact=count_exact)


@dataclass(frozen=True)
class _End:
    pass


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class _Producer:
    """Runs one frame iterator in a daemon thread, handing frames over a bounded queue."""

    def __init__(self, frames: Iterator[Frame], capacity: int, stats: ReaderStats, uri: str):
        self._frames = frames
        self._queue: queue.Queue[Frame | _End | _Failure] = queue.Queue(maxsize=capacity)
        self._stop = threading.Event()
        self._stats = stats
        self._uri = uri
        self._thread = threading.Thread(target=self._run, name=f"decode:{uri}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _offer(self, item: Frame | _End | _Failure) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for frame in self._frames:
                if not self._offer(frame):
                    return
                with self._stats._lock:
                    self._stats.frames_put += 1
                    depth = self._queue.qsize()
                    self._stats.peak_queue_depth = max(self._stats.peak_queue_depth, depth)
            self._offer(_End())
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._offer(_Failure(exc))
        finally:
            # Closes the generator chain so the container and the remote file are released.
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()

    def get(self) -> Frame | _End | _Failure:
        while True:
            if self._stop.is_set():  # closed by the owner: the iteration simply ends
                return _End()
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return _Failure(VideoError(f"{self._uri}: decode thread ended unexpectedly"))

    def stop(self) -> None:
        self._stop.set()
        # Free a slot so a producer blocked in put() notices the stop promptly.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def _as_size(resize_to: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if resize_to is None:
        return None
    size = (resize_to, resize_to) if isinstance(resize_to, int) else tuple(resize_to)
    if len(size) != 2 or any(int(v) <= 0 for v in size):
        raise ValueError(f"resize_to must be a positive int or (height, width), got {resize_to!r}")
    return int(size[0]), int(size[1])


class VideoReader:
    """Iterate `Frame`s of a video file or frame folder, decoded ahead in a background thread.

    Ranges are half-open: [start_frame, end_frame) or [start_time, end_time) in seconds (give
    one kind, not both). Then `stride` keeps every n-th frame, or `target_fps` keeps the first
    frame of each 1/target_fps slot. `resize_to` is an int (square) or (height, width).
    Leaving the loop early, `close()` or the context manager stop the decode thread.
    """

    def __init__(
        self,
        uri: str | os.PathLike[str],
        *,
        storage: Storage = LOCAL,
        stride: int = 1,
        target_fps: float | None = None,
        start_frame: int = 0,
        end_frame: int | None = None,
        start_time: float | None = None,
        end_time: float | None = None,
        resize_to: int | tuple[int, int] | None = None,
        prefetch: int = 8,
        folder_fps: float = DEFAULT_FOLDER_FPS,
        block_size: int = DEFAULT_BLOCK_SIZE,
    ) -> None:
        self.uri = os.fspath(uri)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if target_fps is not None and target_fps <= 0:
            raise ValueError(f"target_fps must be positive, got {target_fps}")
        if target_fps is not None and stride != 1:
            raise ValueError("give stride or target_fps, not both")
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        uses_frames = start_frame != 0 or end_frame is not None
        uses_times = start_time is not None or end_time is not None
        if uses_frames and uses_times:
            raise ValueError("give a frame range or a time range, not both")
        if start_frame < 0 or (end_frame is not None and end_frame < start_frame):
            raise ValueError(f"bad frame range [{start_frame}, {end_frame})")
        if (start_time or 0.0) < 0 or (end_time is not None and end_time < (start_time or 0.0)):
            raise ValueError(f"bad time range [{start_time}, {end_time})")
        self.storage = storage
        self.stride = stride
        self.target_fps = target_fps
        self.start_frame = start_frame
        self.end_frame = end_frame
        self.start_time = start_time
        self.end_time = end_time
        self.resize_to = _as_size(resize_to)
        self.prefetch = prefetch
        self.folder_fps = folder_fps
        self.block_size = block_size
        self.stats = ReaderStats()
        self._info: VideoInfo | None = None
        self._folder: bool | None = None
        self._producers: list[_Producer] = []

    @property
    def info(self) -> VideoInfo:
        if self._info is None:
            self._info = probe(
                self.uri,
                storage=self.storage,
                folder_fps=self.folder_fps,
                block_size=self.block_size,
            )
        return self._info

    def _is_folder(self) -> bool:
        if self._folder is None:
            self._folder = is_frame_folder(self.uri, storage=self.storage)
        return self._folder

    def _selection(self, fps: float) -> FrameSelection:
        start, end = self.start_frame, self.end_frame
        # A frame at time t = index / fps is inside [start_time, end_time) when its index is.
        if self.start_time is not None:
            start = _ceil_frames(self.start_time, fps)
        if self.end_time is not None:
            end = _ceil_frames(self.end_time, fps)
        return FrameSelection(start=start, end=end, stride=self.stride, target_fps=self.target_fps)

    def _frames(self) -> Iterator[Frame]:
        if self._is_folder():
            selection = self._selection(self.folder_fps)
            return iter_folder(
                self.uri, selection, self.folder_fps, self.resize_to, storage=self.storage
            )
        needs_fps = self.start_time is not None or self.end_time is not None
        selection = self._selection(self.info.fps if needs_fps else 1.0)
        return iter_container(
            self.uri,
            selection,
            self.resize_to,
            self.block_size,
            self.stats,
            storage=self.storage,
        )

    def __iter__(self) -> Iterator[Frame]:
        self.stats = ReaderStats()
        producer = _Producer(self._frames(), self.prefetch, self.stats, self.uri)
        self._producers.append(producer)
        producer.start()
        try:
            while True:
                item = producer.get()
                if isinstance(item, _End):
                    return
                if isinstance(item, _Failure):
                    raise _named(item.error, self.uri)
                yield item
        finally:
            producer.stop()
            self._producers.remove(producer)

    def close(self) -> None:
        for producer in list(self._producers):
            producer.stop()

    @property
    def running_threads(self) -> int:
        return sum(producer.alive for producer in self._producers)

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _ceil_frames(seconds: float, fps: float) -> int:
    import math

    return max(0, math.ceil(seconds * fps - 1e-6))


def _named(error: BaseException, uri: str) -> BaseException:
    """Errors from the decode thread, as VideoErrors that name the file."""
    if isinstance(error, VideoError):
        return error
    wrapped = VideoError(f"{uri}: {type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped
