"""Seeded synthetic surgical clips with exact ground truth and long-term-tracking events.

A clip shows textured tissue seen by a slowly panning/zooming camera, tissue organs with their
own object ids, and 1-4 articulated instruments of distinct-looking categories on smooth paths.
Events that stress long-term tracking can be switched on one by one: an instrument leaves the
view and comes back, one instrument passes in front of another, surgical smoke, motion blur.

Ground truth: per-frame instance ids (the object in front wins), per-frame action and 3x3-grid
location per object, Ref-EndoVis-style referring expressions, and the events as they really
happened in the masks. `synthetic_plan` decides what happens, `synthetic_scene` draws it,
`synthetic_writers` saves clips as MP4, Ref-EndoVis/DAVIS folders or SA-V JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from surgray.data.categories import NO_ACTION, ObjectKind, location_of_point
from surgray.data.expressions import ReferringExpression, object_expression
from surgray.data.synthetic_effects import add_smoke, cast_shadow, motion_blur, vignette
from surgray.data.synthetic_plan import (
    ClipPlan,
    EventKind,
    SyntheticClipConfig,
    SyntheticEvent,
    plan_clip,
)
from surgray.data.synthetic_scene import (
    Backdrop,
    camera_view,
    draw_backdrop,
    fill_mask,
    fill_shapes,
    instrument_shapes,
    noise_field,
)

__all__ = [
    "ObjectInfo",
    "SyntheticClip",
    "SyntheticClipConfig",
    "SyntheticEvent",
    "generate_clip",
]

_NOISE_BANK = 4  # sensor-noise fields drawn once per clip and reused, to keep frames cheap


@dataclass(frozen=True)
class ObjectInfo:
    obj_id: int
    category: str
    kind: ObjectKind


@dataclass(frozen=True)
class SyntheticClip:
    frames: np.ndarray  # [T, H, W, 3] uint8 RGB
    masks: np.ndarray  # [T, H, W] uint8 object id per pixel, 0 = background
    objects: tuple[ObjectInfo, ...]
    actions: np.ndarray  # [T, N] int16; column n describes objects[n]
    locations: np.ndarray  # [T, N] int8; 0 where not visible
    visible_pixels: np.ndarray  # [T, N] int32
    full_pixels: np.ndarray  # [T, N] int32
    smoke_level: np.ndarray  # [T] float32 haze opacity, 0 outside smoke
    motion_blurred: np.ndarray  # [T] bool
    events: tuple[SyntheticEvent, ...]
    expressions: tuple[ReferringExpression, ...]
    fps: float
    seed: int

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def column(self, obj_id: int) -> int:
        for index, info in enumerate(self.objects):
            if info.obj_id == obj_id:
                return index
        raise KeyError(f"object id {obj_id} is not in this clip")

    def unique(self, obj_id: int) -> bool:
        """Whether no other object of the clip shares this object's category."""
        category = self.objects[self.column(obj_id)].category
        return sum(o.category == category for o in self.objects) == 1

    def events_of(self, kind: EventKind) -> list[SyntheticEvent]:
        return [event for event in self.events if event.kind == kind]


def generate_clip(config: SyntheticClipConfig | None = None, seed: int = 0) -> SyntheticClip:
    """Draw one clip; the same (config, seed) always gives identical bytes."""
    cfg = config or SyntheticClipConfig()
    rng = np.random.default_rng(seed)
    plan = plan_clip(cfg, rng)
    backdrop = draw_backdrop(
        rng, *plan.canvas_size, plan.tissues, organ_size=0.55 * min(cfg.height, cfg.width)
    )
    objects = tuple(ObjectInfo(t.obj_id, t.category, "instrument") for t in plan.tools) + tuple(
        ObjectInfo(obj_id, name, "tissue") for obj_id, name, _ in plan.tissues
    )
    frames, masks, full_pixels = _render(cfg, plan, backdrop, objects, rng)
    visible_pixels, locations = _measure(masks, objects)
    actions = np.zeros((cfg.num_frames, len(objects)), np.int16)
    for n, tool in enumerate(plan.tools):
        actions[:, n] = tool.actions
    events = list(plan.scene_events)
    if plan.leave is not None:
        obj_id, hidden_from = plan.leave
        events.append(_absence_event(obj_id, visible_pixels[:, obj_id - 1], hidden_from))
    if plan.occlusion is not None:
        events.append(plan.occlusion)
    events.sort(key=lambda e: (e.start, e.kind))
    clip = SyntheticClip(
        frames=frames, masks=masks, objects=objects, actions=actions, locations=locations,
        visible_pixels=visible_pixels, full_pixels=full_pixels, smoke_level=plan.smoke_level,
        motion_blurred=plan.motion_blurred, events=tuple(events), expressions=(),
        fps=cfg.fps, seed=seed,
    )  # fmt: skip
    return replace(clip, expressions=_expressions(clip))


def _render(
    cfg: SyntheticClipConfig,
    plan: ClipPlan,
    backdrop: Backdrop,
    objects: tuple[ObjectInfo, ...],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    T, H, W = cfg.num_frames, cfg.height, cfg.width
    column = {o.obj_id: n for n, o in enumerate(objects)}
    tissue_columns = [(obj_id, column[obj_id]) for obj_id, _, _ in plan.tissues]
    haze = noise_field(rng, int(H * 1.5), int(W * 1.5), (3, 6))
    gain = vignette(H, W)
    noise = [
        np.round(rng.standard_normal((H, W, 3), dtype=np.float32) * cfg.sensor_noise).astype(
            np.int16
        )
        for _ in range(_NOISE_BANK if cfg.sensor_noise > 0 else 0)
    ]
    shadow_offset = (max(2, H // 64), max(2, W // 48))
    frames = np.empty((T, H, W, 3), np.uint8)
    masks = np.empty((T, H, W), np.uint8)
    full_pixels = np.zeros((T, len(objects)), np.int32)
    scratch = np.zeros((H, W), np.uint8)
    for t in range(T):
        image, labels = camera_view(backdrop, plan.camera[t], H, W)
        counts = np.bincount(labels.ravel(), minlength=256)
        for obj_id, n in tissue_columns:
            full_pixels[t, n] = counts[obj_id]
        union = np.zeros((H, W), np.uint8)
        drawn = []
        for tool in plan.draw_order:  # back to front: whoever is drawn later owns the pixel
            if tool.hidden[t]:
                continue
            shapes = instrument_shapes(
                tool.category, tool.port, tool.wrists[t], float(tool.openings[t]), plan.shaft_width
            )
            scratch[:] = 0
            fill_mask(scratch, shapes)
            full_pixels[t, column[tool.obj_id]] = int(np.count_nonzero(scratch))
            fill_mask(labels, shapes, tool.obj_id)
            cv2.bitwise_or(union, scratch, dst=union)
            drawn.append(shapes)
        image = cast_shadow(image, union, shadow_offset)
        for shapes in drawn:
            fill_shapes(image, shapes)
        image = cv2.multiply(image, gain, scale=1 / 255)
        if plan.smoke_level[t] > 0:
            image = add_smoke(image, _haze_window(haze, t, H, W), float(plan.smoke_level[t]))
        if plan.motion_blurred[t]:
            image = motion_blur(image, cfg.motion_blur_length, plan.blur_angle)
        if noise:
            image = cv2.add(image, noise[int(rng.integers(len(noise)))], dtype=cv2.CV_8U)
        frames[t] = image
        masks[t] = labels
    return frames, masks, full_pixels


def _haze_window(haze: np.ndarray, t: int, height: int, width: int) -> np.ndarray:
    """A frame-sized view of the smoke field that drifts slowly, bouncing at the field's edges."""
    span_y, span_x = haze.shape[0] - height, haze.shape[1] - width
    dy = int(abs((t * 0.7) % (2 * span_y) - span_y)) if span_y else 0
    dx = int(abs((t * 0.5) % (2 * span_x) - span_x)) if span_x else 0
    return haze[dy : dy + height, dx : dx + width]


def _measure(masks: np.ndarray, objects: tuple[ObjectInfo, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Visible pixel count and centroid grid cell of every object in every frame."""
    T, H, W = masks.shape
    xs = np.tile(np.arange(W, dtype=np.float64), H)
    ys = np.repeat(np.arange(H, dtype=np.float64), W)
    ids = np.array([o.obj_id for o in objects])
    visible = np.zeros((T, len(objects)), np.int32)
    locations = np.zeros((T, len(objects)), np.int8)
    for t in range(T):
        flat = masks[t].ravel()
        counts = np.bincount(flat, minlength=256)[ids]
        sum_x = np.bincount(flat, weights=xs, minlength=256)[ids]
        sum_y = np.bincount(flat, weights=ys, minlength=256)[ids]
        visible[t] = counts
        for n in np.nonzero(counts)[0]:
            locations[t, n] = location_of_point(sum_x[n] / counts[n], sum_y[n] / counts[n], W, H)
    return visible, locations


def _absence_event(obj_id: int, visible: np.ndarray, hidden_from: int) -> SyntheticEvent:
    """The whole run of frames with an empty mask around the planned hidden stretch."""
    start = end = hidden_from
    while end < len(visible) and visible[end] == 0:
        end += 1
    while start > 0 and visible[start - 1] == 0:
        start -= 1
    return SyntheticEvent("absence", start, end, (obj_id,))


def _expressions(clip: SyntheticClip) -> tuple[ReferringExpression, ...]:
    """One expression per object, written for the first frame it is visible in."""
    expressions: list[ReferringExpression] = []
    for n, info in enumerate(clip.objects):
        seen = np.nonzero(clip.visible_pixels[:, n])[0]
        if seen.size == 0:
            continue
        first = int(seen[0])
        action = int(clip.actions[first, n]) if info.kind == "instrument" else NO_ACTION
        location = int(clip.locations[first, n])
        text = object_expression(
            info.category, info.kind, action, location, clip.unique(info.obj_id)
        )
        expressions.append(ReferringExpression(str(len(expressions)), text, info.obj_id, first))
    return tuple(expressions)
