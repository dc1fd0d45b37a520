"""Frames from a folder of JPEG/PNG files (local or object storage), in natural order."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from surgray.io.errors import VideoError
from surgray.io.storage import Storage, is_local, local_path
from surgray.io.video_types import Frame, FrameSelection, VideoInfo

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def natural_key(name: str) -> list[Any]:
    """Sort key where 'frame2' < 'frame10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


# Names with these endings are taken as video files without asking the store (saves a LIST).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts")


def is_frame_folder(uri: str, *, storage: Storage) -> bool:
    if is_local(uri):
        return local_path(uri).is_dir()
    if uri.endswith("/"):
        return True
    fs, path = storage.filesystem(uri)
    if path.lower().endswith(VIDEO_SUFFIXES):
        return False
    return fs.isdir(path)


def list_frame_files(uri: str, *, storage: Storage) -> tuple[Any, list[str]]:
    fs, path = storage.filesystem(uri)
    try:
        listing = fs.ls(path, detail=False)
    except FileNotFoundError as exc:
        raise VideoError(f"{uri}: folder not found") from exc
    names = [name for name in listing if name.lower().endswith(IMAGE_SUFFIXES)]
    if not names:
        raise VideoError(f"{uri}: folder holds no JPEG/PNG frames")
    return fs, sorted(names, key=lambda name: natural_key(os.path.basename(name)))


def _read_image(fs: Any, name: str, resize_to: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(fs.cat_file(name))) as image:
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise VideoError(f"{name}: not a readable JPEG/PNG frame: {exc}") from exc
    if resize_to is not None and rgb.shape[:2] != resize_to:
        import cv2

        rgb = cv2.resize(rgb, (resize_to[1], resize_to[0]), interpolation=cv2.INTER_AREA)
    return rgb


def probe_folder(uri: str, fps: float, *, storage: Storage) -> VideoInfo:
    fs, names = list_frame_files(uri, storage=storage)
    first = _read_image(fs, names[0], None)
    suffix = os.path.splitext(names[0])[1].lower()
    return VideoInfo(
        uri=uri,
        frame_count=len(names),
        frame_count_exact=True,
        fps=fps,
        width=first.shape[1],
        height=first.shape[0],
        duration=len(names) / fps,
        codec="png" if suffix == ".png" else "jpeg",
        is_frame_folder=True,
    )


def iter_folder(
    uri: str,
    selection: FrameSelection,
    fps: float,
    resize_to: tuple[int, int] | None,
    *,
    storage: Storage,
) -> Iterator[Frame]:
    fs, names = list_frame_files(uri, storage=storage)
    size: tuple[int, int] | None = None
    for index, name in enumerate(names):
        if selection.past_end(index):
            return
        if not selection.keeps(index, fps):
            continue
        image = _read_image(fs, name, resize_to)
        if size is None:
            size = image.shape[:2]
        elif image.shape[:2] != size:
            raise VideoError(
                f"{name}: frame is {image.shape[1]}x{image.shape[0]}, earlier frames are {size[1]}x{size[0]}"
            )
        yield Frame(index=index, time=index / fps, image=image)
