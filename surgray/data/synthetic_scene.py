"""Drawing for the synthetic surgical scene: tissue backdrop, tissue organs, instruments, effects.

Everything is numpy + OpenCV and driven by a caller-supplied `numpy.random.Generator`, so a
seed fixes every pixel. Colours are RGB. Instruments are built as lists of filled polygons
(`Shape`) so the same geometry paints the frame (anti-aliased) and the ground-truth mask (hard
edges), and an occluder drawn later simply overwrites what is behind it in both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

_SHIFT = 4  # sub-pixel bits for cv2 polygon coordinates; keeps slow motion smooth
_SCALE = 1 << _SHIFT


@dataclass(frozen=True)
class Shape:
    """A filled polygon in image coordinates (float, x then y) with an RGB colour."""

    points: np.ndarray
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Backdrop:
    """The camera-independent scene: an RGB canvas larger than the frame and its tissue ids."""

    image: np.ndarray  # [Hc, Wc, 3] uint8
    labels: np.ndarray  # [Hc, Wc] uint8, tissue object id per pixel, 0 elsewhere


@dataclass(frozen=True)
class InstrumentStyle:
    """How a category's tip looks; lengths are multiples of the shaft width."""

    tip: str  # "jaws", "scissors", "fan", "probe", "tube", "clip"
    jaw_length: float
    jaw_width: float
    jaw_color: tuple[int, int, int]
    max_opening_deg: float
    slot: bool = False  # dark centre slot (fenestrated or sealing jaws)


INSTRUMENT_STYLES: dict[str, InstrumentStyle] = {
    "bipolar forceps": InstrumentStyle("jaws", 1.5, 0.34, (196, 196, 200), 34.0),
    "prograsp forceps": InstrumentStyle("jaws", 1.6, 0.48, (178, 180, 186), 38.0, slot=True),
    "large needle driver": InstrumentStyle("jaws", 1.0, 0.52, (120, 122, 128), 24.0),
    "vessel sealer": InstrumentStyle("jaws", 2.0, 0.55, (170, 172, 176), 26.0, slot=True),
    "grasping retractor": InstrumentStyle("fan", 1.7, 0.26, (188, 190, 194), 40.0),
    "monopolar curved scissors": InstrumentStyle("scissors", 1.4, 0.36, (205, 205, 210), 28.0),
    "ultrasound probe": InstrumentStyle("probe", 1.9, 1.3, (222, 222, 216), 0.0),
    "suction instrument": InstrumentStyle("tube", 0.5, 0.75, (160, 162, 168), 0.0),
    "clip applier": InstrumentStyle("clip", 1.4, 0.42, (176, 178, 182), 30.0),
}

TISSUE_COLORS: dict[str, tuple[int, int, int]] = {
    "kidney parenchyma": (142, 46, 42),
    "covered kidney": (214, 178, 112),
    "small intestine": (226, 146, 134),
    "gallbladder": (150, 162, 74),
    "liver": (112, 34, 32),
}


def noise_field(
    rng: np.random.Generator, height: int, width: int, cells: tuple[int, ...]
) -> np.ndarray:
    """Smooth noise in [0, 1]: random grids of `cells` per side, upsampled and summed."""
    total = np.zeros((height, width), np.float32)
    for weight, count in enumerate(cells, start=1):
        grid = rng.random((count, count), dtype=np.float32)
        total += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC) / weight
    total -= total.min()
    return total / max(float(total.max()), 1e-6)


def fill_shapes(image: np.ndarray, shapes: list[Shape], antialias: bool = True) -> None:
    line = cv2.LINE_AA if antialias else cv2.LINE_8
    for shape in shapes:
        points = np.round(shape.points * _SCALE).astype(np.int32)
        cv2.fillPoly(image, [points], shape.color, lineType=line, shift=_SHIFT)


def fill_mask(mask: np.ndarray, shapes: list[Shape], value: int = 255) -> None:
    for shape in shapes:
        points = np.round(shape.points * _SCALE).astype(np.int32)
        cv2.fillPoly(mask, [points], value, lineType=cv2.LINE_8, shift=_SHIFT)


def _ellipse_points(
    center: np.ndarray, axes: tuple[float, float], angle: float, n: int = 24
) -> np.ndarray:
    phi = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    local = np.stack([axes[0] * np.cos(phi), axes[1] * np.sin(phi)], axis=1)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return center + local @ rot.T


def _band(
    start: np.ndarray, end: np.ndarray, width_start: float, width_end: float, offset: float = 0.0
) -> np.ndarray:
    """Quad along start->end, `offset` shifting it sideways (for shading stripes)."""
    axis = end - start
    axis = axis / max(float(np.hypot(*axis)), 1e-6)
    normal = np.array([-axis[1], axis[0]])
    return np.array(
        [
            start + normal * (offset + width_start / 2),
            end + normal * (offset + width_end / 2),
            end + normal * (offset - width_end / 2),
            start + normal * (offset - width_start / 2),
        ]
    )


def _rotate(vector: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * vector[0] - s * vector[1], s * vector[0] + c * vector[1]])


# ---------------------------------------------------------------------------------------------
# Backdrop


def _tissue_region(
    rng: np.random.Generator, category: str, center: np.ndarray, size: float, shape: tuple[int, int]
) -> np.ndarray:
    """A 0/1 uint8 map (canvas-sized) of one organ."""
    angle = float(rng.uniform(0, math.pi))
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    region = np.zeros(shape, np.uint8)
    if category == "small intestine":
        # A loop of bowel: a thick tube along a wavy centre line.
        s = np.linspace(-0.5, 0.5, 32)
        bend = 0.18 * size * np.sin(2.5 * math.pi * s + float(rng.uniform(0, math.pi)))
        path = center + np.stack([s * 0.9 * size, bend], axis=1) @ rot.T
        cv2.polylines(region, [np.round(path).astype(np.int32)], False, 1, max(3, int(0.18 * size)))
        return region
    phi = np.linspace(0.0, 2.0 * math.pi, 48, endpoint=False)
    if category in ("kidney parenchyma", "covered kidney"):
        # A bean: an ellipse pushed in on one side.
        dent = 1.0 - 0.3 * np.exp(-(((phi + math.pi / 2) % (2 * math.pi) - math.pi) ** 2) / 0.25)
        local = np.stack([0.34 * size * np.cos(phi), 0.22 * size * np.sin(phi) * dent], axis=1)
    elif category == "gallbladder":
        local = np.stack([0.3 * size * np.cos(phi), 0.15 * size * np.sin(phi)], axis=1)
    else:  # liver: a large irregular lobe
        wobble = 1.0 + 0.12 * np.sin(3 * phi + float(rng.uniform(0, 2 * math.pi)))
        local = (
            np.stack([0.45 * size * np.cos(phi), 0.28 * size * np.sin(phi)], axis=1)
            * wobble[:, None]
        )
    fill_mask(region, [Shape(center + local @ rot.T, (0, 0, 0))], 1)
    return region


def draw_backdrop(
    rng: np.random.Generator,
    canvas_height: int,
    canvas_width: int,
    tissues: list[tuple[int, str, np.ndarray]],
    organ_size: float,
) -> Backdrop:
    """Pink-red textured tissue with vessels, organ regions (id, category, centre) and glints."""
    h, w = canvas_height, canvas_width
    coarse = noise_field(rng, h, w, (3, 6, 12))
    fine = noise_field(rng, h, w, (24, 48))
    fat = noise_field(rng, h, w, (4, 8))
    base = np.array([198, 92, 96], np.float32)
    fat_color = np.array([222, 176, 122], np.float32)
    shade = (0.72 + 0.38 * coarse + 0.1 * (fine - 0.5))[..., None]
    fat_weight = np.clip((fat - 0.68) * 4.0, 0.0, 0.8)[..., None]
    image = (base * (1 - fat_weight) + fat_color * fat_weight) * shade

    # Vessels: dark red random-walk curves, softened so they read as under the surface.
    vessels = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(4, 9))):
        point = rng.uniform([0, 0], [w, h])
        heading = float(rng.uniform(0, 2 * math.pi))
        points = [point.copy()]
        for _ in range(int(rng.integers(12, 30))):
            heading += float(rng.normal(0, 0.35))
            point = point + 0.03 * min(h, w) * np.array([math.cos(heading), math.sin(heading)])
            points.append(point.copy())
        thickness = int(rng.integers(1, 4))
        cv2.polylines(
            vessels,
            [np.round(np.array(points)).astype(np.int32)],
            False,
            1.0,
            thickness,
            cv2.LINE_AA,
        )
    vessels = cv2.GaussianBlur(vessels, (3, 3), 0)[..., None]
    image = image * (1 - 0.55 * vessels) + np.array([96, 14, 24], np.float32) * 0.55 * vessels

    labels = np.zeros((h, w), np.uint8)
    for obj_id, category, center in tissues:
        region = _tissue_region(rng, category, center, organ_size, (h, w))
        inside = region.astype(bool)
        # Rounded look: darker towards the organ's rim.
        depth = cv2.distanceTransform(region, cv2.DIST_L2, 3)
        rim = np.sqrt(np.clip(depth / max(float(depth.max()), 1.0) * 2.5, 0, 1))
        color = np.array(TISSUE_COLORS[category], np.float32)
        texture = (0.62 + 0.3 * rim[inside] + 0.25 * fine[inside] + 0.1 * coarse[inside])[:, None]
        image[inside] = color * texture
        labels[inside] = obj_id

    # Specular glints from the endoscope light on wet tissue.
    glints = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(6, 14))):
        center = rng.uniform([0, 0], [w, h])
        axes = (float(rng.uniform(1.0, 4.0)), float(rng.uniform(0.8, 2.5)))
        polygon = _ellipse_points(center, axes, float(rng.uniform(0, math.pi)), 12)
        cv2.fillPoly(glints, [np.round(polygon).astype(np.int32)], 1.0, cv2.LINE_AA)
    glints = cv2.GaussianBlur(glints, (5, 5), 0)[..., None]
    image = image + (255.0 - image) * np.clip(glints * 1.6, 0, 1)
    return Backdrop(image=np.clip(image, 0, 255).astype(np.uint8), labels=labels)


def camera_view(
    backdrop: Backdrop, matrix: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The frame the camera sees through a 2x3 canvas->screen affine, and its tissue ids."""
    image = cv2.warpAffine(
        backdrop.image,
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    labels = cv2.warpAffine(
        backdrop.labels,
        matrix,
        (width, height),
        flags=cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    return image, labels


# ---------------------------------------------------------------------------------------------
# Instruments


def instrument_shapes(
    category: str, port: np.ndarray, wrist: np.ndarray, opening: float, shaft_width: float
) -> list[Shape]:
    """Polygons of an instrument whose shaft comes from `port` (outside the frame) to `wrist`,
    tip pointing away from the port; `opening` in [0, 1] opens the jaws."""
    style = INSTRUMENT_STYLES[category]
    axis = wrist - port
    axis = axis / max(float(np.hypot(*axis)), 1e-6)
    w = shaft_width * (0.7 if style.tip == "tube" else 1.0)
    shapes = [
        Shape(_band(port, wrist, w, w), (82, 84, 90)),
        Shape(_band(port, wrist, 0.55 * w, 0.55 * w, 0.12 * w), (142, 144, 150)),
        Shape(_band(port, wrist, 0.14 * w, 0.14 * w, 0.22 * w), (226, 228, 232)),
    ]
    if style.tip == "tube":
        end = wrist + axis * style.jaw_length * w
        shapes.append(Shape(_band(wrist, end, w * 1.05, w * 1.05), style.jaw_color))
        shapes.append(
            Shape(
                _ellipse_points(end, (0.22 * w, 0.45 * w), math.atan2(axis[1], axis[0]), 16),
                (40, 20, 22),
            )
        )
        return shapes
    if style.tip == "probe":
        head_end = wrist + axis * style.jaw_length * w
        shapes.append(
            Shape(_band(wrist, head_end, style.jaw_width * w, style.jaw_width * w), style.jaw_color)
        )
        shapes.append(
            Shape(
                _ellipse_points(head_end, (0.35 * w, 0.65 * w), math.atan2(axis[1], axis[0]), 20),
                style.jaw_color,
            )
        )
        shapes.append(Shape(_band(wrist, head_end, 0.12 * w, 0.12 * w, 0.3 * w), (120, 120, 118)))
        return shapes

    # Articulated tools: a dark wrist joint, then jaws hinged at its end.
    joint = wrist + axis * 0.55 * w
    shapes.append(Shape(_band(wrist, joint, 0.95 * w, 0.8 * w), (58, 58, 64)))
    if style.tip == "scissors":
        sleeve = joint + axis * 0.35 * w
        shapes.append(Shape(_band(joint, sleeve, 0.8 * w, 0.7 * w), (28, 28, 30)))
        joint = sleeve
    half_angle = math.radians(style.max_opening_deg) * float(np.clip(opening, 0, 1)) / 2
    length = style.jaw_length * w
    jaw_w = style.jaw_width * w
    if style.tip == "fan":
        angles = (-2 * half_angle, 0.0, 2 * half_angle)
    else:
        angles = (-half_angle, half_angle)
    for angle in angles:
        direction = _rotate(axis, angle)
        if style.tip == "scissors":
            # Curved blade: a bent centre line widened into a tapering polygon.
            normal = np.array([-direction[1], direction[0]])
            s = np.linspace(0.0, 1.0, 8)
            centre = (
                joint + np.outer(s * length, direction) + np.outer(0.25 * length * s**2, normal)
            )
            half = (jaw_w / 2) * (1 - 0.7 * s)
            outline = np.concatenate(
                [centre + normal * half[:, None], (centre - normal * half[:, None])[::-1]]
            )
            shapes.append(Shape(outline, style.jaw_color))
            continue
        tip = joint + direction * length
        shapes.append(Shape(_band(joint, tip, jaw_w, 0.55 * jaw_w), style.jaw_color))
        shapes.append(
            Shape(_ellipse_points(tip, (0.28 * jaw_w, 0.28 * jaw_w), 0.0, 10), style.jaw_color)
        )
        if style.slot:
            slot_start = joint + direction * 0.25 * length
            slot_end = joint + direction * 0.8 * length
            shapes.append(
                Shape(_band(slot_start, slot_end, 0.3 * jaw_w, 0.2 * jaw_w), (70, 64, 66))
            )
    if style.tip == "clip":
        clip_at = joint + axis * 0.65 * length
        shapes.append(
            Shape(
                _band(
                    clip_at - axis * 0.25 * jaw_w,
                    clip_at + axis * 0.25 * jaw_w,
                    0.9 * jaw_w,
                    0.9 * jaw_w,
                ),
                (214, 178, 72),
            )
        )
    return shapes


def tip_reach(category: str, shaft_width: float) -> float:
    """How far the drawn tip reaches beyond the wrist point (used to aim and to hide tools)."""
    style = INSTRUMENT_STYLES[category]
    w = shaft_width * (0.7 if style.tip == "tube" else 1.0)
    if style.tip == "tube":
        return style.jaw_length * w + 0.25 * w
    if style.tip == "probe":
        return style.jaw_length * w + 0.35 * w
    sleeve = 0.35 * w if style.tip == "scissors" else 0.0
    return 0.55 * w + sleeve + style.jaw_length * w + 0.3 * style.jaw_width * w
