"""Visual exports: translucent coloured masks with labels, as an MP4 or a contact sheet PNG."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from surgray.io.encode import WrittenVideo, write_png, write_video
from surgray.io.errors import MaskFormatError
from surgray.io.masks import davis_palette
from surgray.io.records import MaskRecord, by_frame, by_video
from surgray.io.video_types import Frame


def object_colour(obj_id: int) -> tuple[int, int, int]:
    """The object's DAVIS palette colour (as in the PNG exports); white for black entries."""
    colour = davis_palette()[obj_id % 256]
    if not colour.any():
        return 255, 255, 255
    r, g, b = (int(v) for v in colour)
    return r, g, b


def _fit_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    # Frames may be decoded at a preview size; masks follow with nearest-neighbour scaling.
    if mask.shape == (height, width):
        return mask
    import cv2

    return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0


def _put_text(canvas: np.ndarray, text: str, x: int, y: int, scale: float) -> None:
    import cv2

    thickness = max(1, round(scale * 2))
    origin = (max(0, x), max(int(14 * scale), y))
    cv2.putText(
        canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA
    )
    cv2.putText(
        canvas,
        text,
        origin,
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (255, 255, 255),
        thickness,
        cv2.LINE_AA,
    )


def draw_overlay(
    image: np.ndarray,
    records: Sequence[MaskRecord],
    *,
    alpha: float = 0.5,
    show_labels: bool = True,
) -> np.ndarray:
    """A copy of `image` (HxWx3 uint8 RGB) with each record's mask blended in its colour,
    outlined, and labelled "label score" at its box corner."""
    import cv2

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise MaskFormatError(
            f"overlay needs an HxWx3 uint8 image, got {image.dtype} {image.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise MaskFormatError(f"alpha must be in [0, 1], got {alpha}")
    height, width = image.shape[:2]
    canvas = image.astype(np.float32)
    masks = [_fit_mask(record.mask(), height, width) for record in records]
    for record, mask in zip(records, masks):
        colour = np.array(object_colour(record.obj_id), np.float32)
        canvas[mask] = (1.0 - alpha) * canvas[mask] + alpha * colour
    out = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    scale = max(0.35, min(height, width) / 600)
    for record, mask in zip(records, masks):
        if not mask.any():
            continue
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, object_colour(record.obj_id), max(1, round(scale * 2)))
        if show_labels:
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            _put_text(
                out, f"{record.label} {record.score:.2f}", int(cols[0]), int(rows[0]) - 4, scale
            )
    return out


def _one_video(records: Iterable[MaskRecord]) -> dict[int, list[MaskRecord]]:
    groups = by_video(records)
    if len(groups) > 1:
        raise MaskFormatError(f"an overlay shows one video, got records of {sorted(groups)}")
    return by_frame(next(iter(groups.values()))) if groups else {}


def _overlaid(
    frames: Iterable[Frame], per_frame: dict[int, list[MaskRecord]], alpha: float
) -> Iterator[np.ndarray]:
    for frame in frames:
        yield draw_overlay(frame.image, per_frame.get(frame.index, []), alpha=alpha)


def write_overlay_video(
    uri: str | os.PathLike[str],
    frames: Iterable[Frame],
    records: Iterable[MaskRecord],
    fps: float,
    *,
    alpha: float = 0.5,
    codec: str = "libx264",
    crf: int | None = 23,
    storage_options: dict[str, Any] | None = None,
) -> WrittenVideo:
    """Stream `frames` (e.g. a VideoReader) with their records drawn on, into an MP4."""
    per_frame = _one_video(records)
    return write_video(
        uri,
        _overlaid(frames, per_frame, alpha),
        fps,
        codec=codec,
        crf=crf,
        storage_options=storage_options,
    )


def contact_sheet(
    tiles: Sequence[np.ndarray], captions: Sequence[str], *, columns: int, tile_width: int
) -> np.ndarray:
    """Tiles scaled to `tile_width` (keeping the first tile's aspect) on a black grid."""
    import cv2

    if not tiles:
        raise MaskFormatError("a contact sheet needs at least one frame")
    if columns < 1 or tile_width < 8:
        raise MaskFormatError(
            f"columns must be >= 1 and tile_width >= 8, got {columns}, {tile_width}"
        )
    height, width = tiles[0].shape[:2]
    tile_height = max(1, round(tile_width * height / width))
    used_columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    sheet = np.zeros((rows * tile_height, used_columns * tile_width, 3), np.uint8)
    for n, (tile, caption) in enumerate(zip(tiles, captions)):
        scaled = cv2.resize(tile, (tile_width, tile_height), interpolation=cv2.INTER_AREA)
        _put_text(scaled, caption, 4, 16, 0.45)
        top, left = (n // columns) * tile_height, (n % columns) * tile_width
        sheet[top : top + tile_height, left : left + tile_width] = scaled
    return sheet


def write_contact_sheet(
    uri: str | os.PathLike[str],
    frames: Iterable[Frame],
    records: Iterable[MaskRecord],
    *,
    columns: int = 4,
    tile_width: int = 256,
    max_tiles: int = 16,
    alpha: float = 0.5,
    storage_options: dict[str, Any] | None = None,
) -> tuple[int, int]:
    """A PNG grid of overlaid frames, captioned with their index; returns (height, width).

    Pass the frames to show (e.g. VideoReader(..., target_fps=0.2)); at most `max_tiles`
    are taken, so a long iterable is not read to its end.
    """
    per_frame = _one_video(records)
    tiles: list[np.ndarray] = []
    captions: list[str] = []
    for frame in frames:
        tiles.append(draw_overlay(frame.image, per_frame.get(frame.index, []), alpha=alpha))
        captions.append(f"#{frame.index}")
        if len(tiles) == max_tiles:
            break
    sheet = contact_sheet(tiles, captions, columns=columns, tile_width=tile_width)
    write_png(uri, sheet, storage_options=storage_options)
    return sheet.shape[0], sheet.shape[1]
