"""Overlay labels stay inside the frame and off each other, and their text stays in its box,
for objects crowded at the frame's edges (where labels used to be clipped and pile up)."""

from __future__ import annotations

import numpy as np
import pytest

from surgray.io.label_layout import Box, place_labels
from surgray.io.overlay import draw_overlay, label_boxes
from surgray.io.records import MaskRecord

LABELS = ("grasper", "clip applier is idle", "kidney parenchyma", "needle driver", "bipolar")


def _records(height: int, width: int, boxes: list[tuple[int, int, int, int]]):
    masks = np.zeros((len(boxes), height, width), bool)
    for n, (x0, y0, x1, y1) in enumerate(boxes):
        masks[n, y0:y1, x0:x1] = True
    ids = list(range(1, len(boxes) + 1))
    labels = [LABELS[n % len(LABELS)] for n in range(len(boxes))]
    scores = [0.834 - 0.1 * n for n in range(len(boxes))]
    return MaskRecord.from_masks("v", 0, ids, labels, scores, masks), masks


def _edge_boxes(rng: np.random.Generator, height: int, width: int, count: int):
    """Objects hugging the four edges and corners, many of them overlapping."""
    boxes = []
    for _ in range(count):
        w, h = int(rng.integers(4, width // 3)), int(rng.integers(4, height // 3))
        x = int(rng.choice([0, width - w, rng.integers(0, width - w)]))
        y = int(rng.choice([0, height - h, 0]))
        boxes.append((x, y, x + w, y + h))
    return boxes


def _check(boxes: list[Box], height: int, width: int) -> None:
    for n, box in enumerate(boxes):
        assert box.inside(height, width), (box, height, width)
        for other in boxes[n + 1 :]:
            assert not box.overlaps(other), (box, other)


@pytest.mark.parametrize(("height", "width"), [(128, 128), (256, 256), (480, 854), (1080, 1920)])
def test_labels_of_crowded_edge_objects_stay_inside_and_apart(height, width):
    rng = np.random.default_rng(height)
    for trial in range(8):
        records, masks = _records(height, width, _edge_boxes(rng, height, width, 3 + trial))
        placed = label_boxes(records, list(masks), height, width)
        _check([box for box, _, _ in placed], height, width)
        # A frame as large as 256 px has room for every label of these objects.
        if min(height, width) >= 256:
            assert len(placed) == len(records), trial


def test_the_top_edge_label_moves_inside_and_the_text_stays_in_its_box():
    height, width = 96, 160
    boxes = [(0, 0, 50, 20), (10, 0, 70, 12), (120, 0, 160, 30)]  # all touching the top edge
    records, masks = _records(height, width, boxes)
    image = np.full((height, width, 3), 60, np.uint8)
    out = draw_overlay(image, records)
    placed = label_boxes(records, list(masks), height, width)
    assert len(placed) == 3
    _check([box for box, _, _ in placed], height, width)
    # Label text is the only white there is (mask colours and the background are not): no
    # white pixel lies outside a label box, so neither text nor outline spills out of it.
    white = np.all(out >= 230, axis=-1)
    inside = np.zeros_like(white)
    for box, text, obj_id in placed:
        inside[box.y : box.bottom, box.x : box.right] = True
        assert text.startswith(f"{obj_id}: ")  # the label names the object id of the outputs
        assert white[box.y : box.bottom, box.x : box.right].any(), text  # text was drawn
    assert not (white & ~inside).any()


def test_long_labels_are_shortened_to_the_frame_and_hopeless_ones_left_out():
    records, masks = _records(40, 72, [(0, 0, 72, 40)])
    ((box, text, _),) = label_boxes(records, list(masks), 40, 72)
    # The label gives way; the object id and the score stay whole.
    assert text.startswith("1: gra") and text.endswith(".. 0.83") and box.inside(40, 72)
    # Placement itself: a label that no free spot fits is left out, never drawn over another.
    sizes, anchors = [(30, 10)] * 5, [Box(0, 0, 10, 10)] * 5
    placed = place_labels(sizes, anchors, 20, 60)
    kept = [b for b in placed if b is not None]
    assert len(kept) == 4 and placed[-1] is None
    _check(kept, 20, 60)
