"""The frame size an uploaded video declares, read from its container header before any frame
is decoded, so `POST /v1/segment` refuses a video of frames over `limits.max_image_side` (413)
without decoding one: a small file can declare huge frames, as an image or an RLE can.

Only the header is read (PyAV opens the container from memory; no packet is decoded). A body
PyAV cannot open at all is left to the decoder, which reports it as `invalid_video` (422).
"""

from __future__ import annotations

import io

from surgray.serving.errors import PayloadTooLarge


class VideoFramesTooLarge(PayloadTooLarge):
    code = "video_too_large"


def declared_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of the first video stream's frames, or None when it cannot be read."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            streams = container.streams.video
            if not streams:
                return None
            context = streams[0].codec_context
            return int(context.width), int(context.height)
    except (av.FFmpegError, OSError, ValueError, EOFError):
        return None


def check_video_header(data: bytes, max_side: int) -> None:
    size = declared_frame_size(data)
    if size is not None and max(size) > max_side:
        raise VideoFramesTooLarge(
            f"the video's frames are {size[0]}x{size[1]}; the largest side allowed is {max_side}"
        )
