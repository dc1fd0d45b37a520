"""Frames for the page: an uploaded clip or a synthetic demo clip decoded to JPEGs, and the
frames of a reviewed video read from where the annotation store says it came from.

The page gets every frame as a JPEG and sends those same bytes to `/v1/sessions/{id}/frames`,
so the masks it draws are computed from exactly the pixels it shows. Decoding happens here,
not in the browser, because Chromium builds without proprietary codecs cannot play H.264.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surgray.io.storage import LOCAL, Storage
from surgray.serving.errors import Unprocessable

JPEG_QUALITY = 90
DEMO_FRAMES = 48
DEMO_SIZE = 128
DEMO_SEEDS = (0, 1, 2)


class InvalidClip(Unprocessable):
    code = "invalid_video"


@dataclass
class Clip:
    name: str
    frames: list[bytes]  # JPEG
    fps: float
    height: int
    width: int
    expressions: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fps": self.fps,
            "height": self.height,
            "width": self.width,
            "num_frames": len(self.frames),
            "expressions": self.expressions,
            "frames": [base64.b64encode(f).decode() for f in self.frames],
        }


def jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def read_frames(
    uri: str,
    *,
    storage: Storage,
    max_frames: int,
    max_side: int,
    what: str,
) -> tuple[list[bytes], float, int, int]:
    """JPEGs of the first `max_frames` frames of `uri`; refuses frames larger than `max_side`."""
    from surgray.io.errors import VideoError
    from surgray.io.video import VideoReader

    frames: list[bytes] = []
    fps, height, width = 0.0, 0, 0
    try:
        with VideoReader(uri, storage=storage, end_frame=max_frames) as reader:
            fps = float(reader.info.fps or 0.0)
            for frame in reader:
                height, width = frame.image.shape[:2]
                if max(height, width) > max_side:
                    raise InvalidClip(
                        f"{what}: frames are {width}x{height}; at most {max_side} pixels a side"
                    )
                frames.append(jpeg(frame.image))
    except VideoError as exc:
        raise InvalidClip(f"cannot decode {what}: {str(exc).replace(uri, what)}") from None
    if not frames:
        raise InvalidClip(f"{what} holds no frames")
    return frames, fps or 25.0, height, width


def decode_upload(data: bytes, name: str, *, max_frames: int, max_side: int) -> Clip:
    """An uploaded video's frames (at most `max_frames`)."""
    if not data:
        raise InvalidClip("the uploaded video is empty")
    handle, path = tempfile.mkstemp(prefix="surgray-ui-", suffix=".video")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        frames, fps, height, width = read_frames(
            path, storage=LOCAL, max_frames=max_frames, max_side=max_side, what="the uploaded video"
        )
    finally:
        os.unlink(path)
    return Clip(name, frames, fps, height, width)


def demo_clip(seed: int) -> Clip:
    """A synthetic demo clip (48 frames, 128 px) and the referring expressions it supports."""
    from surgray.data.synthetic import generate_clip
    from surgray.demo_inputs import clip_config

    config, _ = clip_config(DEMO_FRAMES, DEMO_SIZE)
    clip = generate_clip(config, seed)
    expressions = list(dict.fromkeys(e.text for e in clip.expressions))
    frames = [jpeg(image) for image in clip.frames]
    height, width = clip.frames[0].shape[:2]
    return Clip(f"demo-clip-{seed}", frames, float(config.fps), height, width, expressions)


def frames_zip(frames: list[bytes]) -> bytes:
    """The frames of a live clip as one zip of JPEGs (saved beside its first revision)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, frame in enumerate(frames):
            archive.writestr(f"{index:05d}.jpg", frame)
    return buffer.getvalue()


def frames_from_zip(payload: bytes) -> list[bytes]:
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        return [archive.read(name) for name in sorted(archive.namelist())]
