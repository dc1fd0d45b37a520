"""Visual exports: translucent coloured masks with labels, as an MP4 or a contact sheet PNG."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from surgray.io.encode import WrittenVideo, write_png, write_video
from surgray.io.errors import MaskFormatError
from surgray.io.label_layout import Box, place_labels
from surgray.io.masks import davis_palette
from surgray.io.records import MaskRecord, by_frame, by_video
from surgray.io.storage import LOCAL, Storage
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


FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX (cv2 is imported lazily)
MIN_FONT_SCALE = 0.35


@dataclass(frozen=True)
class TextStyle:
    """How a label is drawn: Hershey text at `scale` with stroke `thickness`, `pad` pixels of
    dark box around it. One thickness for all text, no outline: an outline drawn thicker than
    the glyphs spreads right of them and makes "0.834" read "0.8334"."""

    scale: float
    thickness: int
    pad: int

    @classmethod
    def for_frame(cls, height: int, width: int) -> TextStyle:
        scale = max(MIN_FONT_SCALE, min(height, width) / 600)
        return cls(scale, max(1, round(scale * 1.5)), max(2, round(3 * scale)))

    def measure(self, text: str) -> tuple[int, int, int]:
        """(width, height, baseline) of the label box around `text`, padding included."""
        import cv2

        (w, h), baseline = cv2.getTextSize(text, FONT, self.scale, self.thickness)
        return w + 2 * self.pad, h + baseline + 2 * self.pad, baseline


def fit_text(text: str, style: TextStyle, max_width: int) -> str:
    """`text`, shortened with ".." at its end until its box is at most `max_width` wide."""
    if style.measure(text)[0] <= max_width:
        return text
    for keep in range(len(text) - 1, 0, -1):
        short = text[:keep].rstrip() + ".."
        if style.measure(short)[0] <= max_width:
            return short
    return ""


def draw_label(canvas: np.ndarray, box: Box, text: str, style: TextStyle, colour) -> None:
    """A dark box with a stripe of the object's colour on its left and `text` in white."""
    import cv2

    x0, y0, x1, y1 = box.x, box.y, box.right - 1, box.bottom - 1
    region = canvas[y0 : y1 + 1, x0 : x1 + 1]
    region[:] = (region.astype(np.float32) * 0.25).astype(np.uint8)  # 75% dark, still see-through
    stripe = max(1, style.pad // 2)
    canvas[y0 : y1 + 1, x0 : x0 + stripe] = colour
    _, _, baseline = style.measure(text)
    origin = (x0 + style.pad, y1 - style.pad - baseline + 1)
    cv2.putText(
        canvas, text, origin, FONT, style.scale, (255, 255, 255), style.thickness, cv2.LINE_AA
    )


def _put_text(canvas: np.ndarray, text: str, x: int, y: int, scale: float) -> None:
    """A caption in a box at (x, y) (its top-left corner), kept inside `canvas`."""
    style = TextStyle(scale, 1, 2)
    height, width = canvas.shape[:2]
    text = fit_text(text, style, width)
    if not text:
        return
    w, h, _ = style.measure(text)
    box = Box(min(max(0, x), width - w), min(max(0, y), max(0, height - h)), w, min(h, height))
    draw_label(canvas, box, text, style, (255, 255, 255))


def label_text(record: MaskRecord, style: TextStyle, max_width: int) -> str:
    """ "obj_id: label score", the label shortened (never the id or the score) to fit."""
    head, tail = f"{record.obj_id}: ", f" {record.score:.2f}"
    room = max_width - style.measure(head + tail)[0]  # width left for the label's glyphs
    label = fit_text(record.label, style, room + 2 * style.pad) if record.label and room > 0 else ""
    text = head + label + tail if label else head + tail.strip()
    return text if style.measure(text)[0] <= max_width else fit_text(text, style, max_width)


def label_boxes(
    records: Sequence[MaskRecord], masks: Sequence[np.ndarray], height: int, width: int
) -> list[tuple[Box, str, int]]:
    """(box, text, obj_id) of every label to draw: inside the frame, none overlapping."""
    style = TextStyle.for_frame(height, width)
    texts, sizes, anchors, ids = [], [], [], []
    for record, mask in zip(records, masks):
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        text = label_text(record, style, width)
        if not text:
            continue
        w, h, _ = style.measure(text)
        texts.append(text)
        sizes.append((w, h))
        anchors.append(Box(int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
                           int(rows[-1] - rows[0] + 1)))  # fmt: skip
        ids.append(record.obj_id)
    boxes = place_labels(sizes, anchors, height, width)
    return [(b, t, i) for b, t, i in zip(boxes, texts, ids) if b is not None]


def draw_overlay(
    image: np.ndarray,
    records: Sequence[MaskRecord],
    *,
    alpha: float = 0.5,
    show_labels: bool = True,
) -> np.ndarray:
    """A copy of `image` (HxWx3 uint8 RGB) with each record's mask blended in its colour,
    outlined, and labelled "obj_id: label score" near its top-left corner (inside the frame,
    labels never overlapping: `surgray.io.label_layout`)."""
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
    style = TextStyle.for_frame(height, width)
    for record, mask in zip(records, masks):
        if not mask.any():
            continue
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, object_colour(record.obj_id), style.thickness)
    if show_labels:
        # Labels last, so no outline crosses a label.
        for box, text, obj_id in label_boxes(records, masks, height, width):
            draw_label(out, box, text, style, object_colour(obj_id))
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
    storage: Storage = LOCAL,
) -> WrittenVideo:
    """Stream `frames` (e.g. a VideoReader) with their records drawn on, into an MP4."""
    per_frame = _one_video(records)
    return write_video(
        uri,
        _overlaid(frames, per_frame, alpha),
        fps,
        codec=codec,
        crf=crf,
        storage=storage,
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
        _put_text(scaled, caption, 2, 2, 0.45)
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
    storage: Storage = LOCAL,
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
    write_png(uri, sheet, storage=storage)
    return sheet.shape[0], sheet.shape[1]
