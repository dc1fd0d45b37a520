"""Frames from a video container through PyAV, with keyframe seeking and truncation checks.

Every failure becomes a `VideoError` that names the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from surgray.io.errors import VideoError
from surgray.io.storage import Storage
from surgray.io.video_types import Frame, FrameSelection, ReaderStats, VideoInfo

# A container that knows its duration but not its frame count is called truncated when it
# decodes fewer than this share of the frames its duration implies.
_TRUNCATION_SHARE = 0.95


@dataclass(frozen=True)
class _StreamLayout:
    fps: float
    time_base: float | None
    start_pts: int
    declared_frames: int  # 0 when the container does not say
    duration: float | None

    def index_of(self, pts: int) -> int:
        assert self.time_base is not None
        return round((pts - self.start_pts) * self.time_base * self.fps)

    def expected_frames(self) -> tuple[int, bool]:
        if self.declared_frames > 0:
            return self.declared_frames, True
        if self.duration:
            return max(1, round(self.duration * self.fps)), False
        return 0, False


def _open_container(handle: Any, uri: str) -> Any:
    import av

    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    if size == 0:
        raise VideoError(f"{uri}: file is empty (0 bytes)")
    try:
        return av.open(handle, mode="r")
    except av.error.FFmpegError as exc:
        raise VideoError(f"{uri}: not a readable video container ({exc})") from exc


def _video_stream(container: Any, uri: str) -> Any:
    import av

    if not container.streams.video:
        raise VideoError(f"{uri}: container has no video stream")
    stream = container.streams.video[0]
    codec_context = stream.codec_context
    name = codec_context.name if codec_context is not None else None
    if not name or name == "none":
        raise VideoError(f"{uri}: video codec is not supported by this FFmpeg build")
    try:
        av.codec.Codec(name, "r")
    except Exception as exc:
        raise VideoError(
            f"{uri}: no decoder for video codec {name!r} in this FFmpeg build"
        ) from exc
    stream.thread_type = "AUTO"
    return stream


def _layout(container: Any, stream: Any, uri: str) -> _StreamLayout:
    import av

    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or float(rate) <= 0:
        raise VideoError(f"{uri}: frame rate is unknown")
    time_base = float(stream.time_base) if stream.time_base else None
    duration = None
    if stream.duration is not None and time_base is not None:
        duration = stream.duration * time_base
    elif container.duration is not None:
        duration = container.duration / av.time_base
    return _StreamLayout(
        fps=float(rate),
        time_base=time_base,
        start_pts=stream.start_time or 0,
        declared_frames=max(stream.frames, 0),
        duration=duration,
    )


def probe_container(
    uri: str, *, storage: Storage, block_size: int, count_exact: bool = False
) -> VideoInfo:
    """Header facts; with `count_exact`, count packets by demuxing (no decoding)."""
    import av

    with storage.open_for_read(uri, block_size) as handle:
        container = _open_container(handle, uri)
        try:
            stream = _video_stream(container, uri)
            layout = _layout(container, stream, uri)
            count, exact = layout.expected_frames()
            if count_exact or count == 0:
                try:
                    count = sum(1 for p in container.demux(stream) if p.size > 0)
                except av.error.FFmpegError as exc:
                    raise VideoError(f"{uri}: demuxing failed: {exc}") from exc
                exact = True
            return VideoInfo(
                uri=uri,
                frame_count=count,
                frame_count_exact=exact,
                fps=layout.fps,
                width=stream.codec_context.width,
                height=stream.codec_context.height,
                duration=layout.duration,
                codec=stream.codec_context.name,
            )
        finally:
            container.close()


class _SeekMissed(Exception):
    """Seeking landed after the wanted frame or frames lack timestamps: decode from the start."""


def _decode(
    uri: str,
    container: Any,
    stream: Any,
    layout: _StreamLayout,
    selection: FrameSelection,
    resize_to: tuple[int, int] | None,
    use_pts_index: bool,
) -> Iterator[Frame]:
    counter = 0
    last_index = -1
    reformat: dict[str, Any] = {"format": "rgb24"}
    if resize_to is not None:
        reformat.update(height=resize_to[0], width=resize_to[1], interpolation="AREA")
    for packet in container.demux(stream):
        for frame in packet.decode():
            if use_pts_index:
                if last_index < 0 and (
                    frame.pts is None or layout.index_of(frame.pts) > selection.start
                ):
                    raise _SeekMissed
                index = layout.index_of(frame.pts) if frame.pts is not None else last_index + 1
            else:
                index = counter
            counter += 1
            last_index = index
            if selection.past_end(index):
                return
            if not selection.keeps(index, layout.fps):
                continue
            if frame.pts is not None and layout.time_base is not None:
                time = (frame.pts - layout.start_pts) * layout.time_base
            else:
                time = index / layout.fps
            yield Frame(index=index, time=time, image=frame.to_ndarray(**reformat))
    _check_complete(uri, last_index + 1, layout, selection)


def _check_complete(uri: str, seen: int, layout: _StreamLayout, selection: FrameSelection) -> None:
    expected, exact = layout.expected_frames()
    if selection.end is not None:
        expected = min(expected, selection.end)
    if exact and seen < expected:
        raise VideoError(f"{uri}: truncated or corrupt: decoded {seen} of {expected} frames")
    if not exact and expected and seen < _TRUNCATION_SHARE * expected - 1:
        raise VideoError(
            f"{uri}: truncated or corrupt: decoded {seen} frames, duration implies about {expected}"
        )


def iter_container(
    uri: str,
    selection: FrameSelection,
    resize_to: tuple[int, int] | None,
    block_size: int,
    stats: ReaderStats,
    *,
    storage: Storage,
) -> Iterator[Frame]:
    import av

    with storage.open_for_read(uri, block_size) as handle:
        cache = getattr(handle, "cache", None)
        container = _open_container(handle, uri)
        try:
            stream = _video_stream(container, uri)
            layout = _layout(container, stream, uri)
            try:
                if selection.start > 0 and layout.time_base:
                    # Land on the keyframe before the range, half a frame early for rounding.
                    target = (selection.start - 0.5) / layout.fps / layout.time_base
                    container.seek(int(target) + layout.start_pts, stream=stream, backward=True)
                    stats.seeked = True
                    try:
                        yield from _decode(
                            uri, container, stream, layout, selection, resize_to, True
                        )
                        return
                    except _SeekMissed:
                        stats.seeked = False
                        container.close()
                        container = _open_container(handle, uri)
                        stream = _video_stream(container, uri)
                yield from _decode(uri, container, stream, layout, selection, resize_to, False)
            except av.error.FFmpegError as exc:
                raise VideoError(
                    f"{uri}: decoding failed (corrupt or truncated data?): {exc}"
                ) from exc
        finally:
            container.close()
            if cache is not None:
                stats.bytes_fetched = getattr(cache, "total_requested_bytes", None)
