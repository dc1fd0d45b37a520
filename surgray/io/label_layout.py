"""Where an overlay's labels go: inside the frame, never on top of each other.

Each label is a box (its text plus padding) that wants to sit at its object's top-left corner:
just above the object, else just inside its top edge, else just below it. A candidate is moved
inside the frame (labels of objects at the frame's edge are not clipped), and a candidate that
overlaps a label already placed is dropped for the next one. When every candidate near the
object is taken, the label slides down and then across the frame in steps of its own size, and
takes the free spot nearest its object. A label that finds no room at all (a frame more crowded
with labels than it has space for) is left out rather than drawn over another one.

Pure geometry (no OpenCV): `surgray.io.overlay` measures the text and draws the boxes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: `x`, `y` its top-left corner, `w`, `h` its size."""

    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h

    def overlaps(self, other: Box) -> bool:
        return (
            self.x < other.right
            and other.x < self.right
            and self.y < other.bottom
            and other.y < self.bottom
        )

    def inside(self, height: int, width: int) -> bool:
        return self.x >= 0 and self.y >= 0 and self.right <= width and self.bottom <= height


def _clamped(x: int, y: int, w: int, h: int, height: int, width: int) -> Box:
    return Box(min(max(0, x), width - w), min(max(0, y), height - h), w, h)


def _candidates(size: tuple[int, int], anchor: Box, height: int, width: int) -> list[Box]:
    """Spots near the object, best first, each already moved inside the frame."""
    w, h = size
    spots = [
        (anchor.x, anchor.y - h),  # above the object, left-aligned with it
        (anchor.x, anchor.y),  # inside its top edge
        (anchor.x, anchor.bottom),  # below it
        (anchor.right - w, anchor.y - h),  # above, right-aligned
        (anchor.right - w, anchor.bottom),  # below, right-aligned
    ]
    out: list[Box] = []
    for x, y in spots:
        box = _clamped(x, y, w, h, height, width)
        if box not in out:
            out.append(box)
    return out


def _scan(size: tuple[int, int], anchor: Box, height: int, width: int) -> list[Box]:
    """Every spot of a grid over the frame (steps of the label's size), nearest first."""
    w, h = size
    xs = sorted({min(max(0, x), width - w) for x in range(0, width, max(1, w // 2))})
    ys = sorted({min(max(0, y), height - h) for y in range(0, height, max(1, h))})
    spots = [Box(x, y, w, h) for y in ys for x in xs]
    return sorted(spots, key=lambda b: (abs(b.y - anchor.y) + abs(b.x - anchor.x), b.y, b.x))


def _spots(size: tuple[int, int], anchor: Box, height: int, width: int) -> Iterator[Box]:
    yield from _candidates(size, anchor, height, width)
    # The grid is only built when every spot near the object is taken.
    yield from _scan(size, anchor, height, width)


def place_labels(
    sizes: Sequence[tuple[int, int]],
    anchors: Sequence[Box],
    height: int,
    width: int,
) -> list[Box | None]:
    """A box for each label (`sizes` are (w, h), `anchors` the objects' bounding boxes), in
    order: each inside the frame and overlapping no other; None where no room is left.

    Labels are placed in the order given, so put the ones that matter most first.
    """
    if len(sizes) != len(anchors):
        raise ValueError(f"{len(sizes)} label sizes for {len(anchors)} objects")
    placed: list[Box] = []
    out: list[Box | None] = []
    for (w, h), anchor in zip(sizes, anchors):
        if w > width or h > height or w < 1 or h < 1:
            out.append(None)  # the caller shrinks a label to fit before asking
            continue
        spots = _spots((w, h), anchor, height, width)
        free = next((b for b in spots if not any(b.overlaps(o) for o in placed)), None)
        if free is not None:
            placed.append(free)
        out.append(free)
    return out
