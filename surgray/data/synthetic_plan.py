"""What happens in a synthetic clip, decided before any pixel is drawn.

`plan_clip` turns a `SyntheticClipConfig` and a seeded generator into categories, instrument
paths (wrist position, jaw opening and action per frame), the camera path, where tissue organs
sit, and when each event takes place. Events are placed in time windows that do not overlap
when they move the same objects, so each one can be checked on its own in the ground truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from surgray.data.categories import (
    INSTRUMENT_CATEGORIES,
    TISSUE_CATEGORIES,
    canonical_category,
    category_kind,
)
from surgray.data.synthetic_scene import INSTRUMENT_STYLES, tip_reach

RAMP_FRAMES = 5  # frames an instrument takes to slide out of (or back into) the view
FIRST_TISSUE_ID = 11  # tissue ids start here, as Ref-EndoVis18 keeps tissue apart (11, 12, 17)
DRAWABLE_INSTRUMENTS = tuple(c for c in INSTRUMENT_CATEGORIES if c in INSTRUMENT_STYLES)

# Actions an instrument of each category plausibly performs (Ref-EndoVis action ids).
PLAUSIBLE_ACTIONS: dict[str, tuple[int, ...]] = {
    "bipolar forceps": (6, 13, 5, 1),
    "prograsp forceps": (6, 7, 5, 2, 1),
    "large needle driver": (4, 3, 2, 1),
    "vessel sealer": (12, 13, 1),
    "grasping retractor": (7, 1),
    "monopolar curved scissors": (8, 13, 1),
    "ultrasound probe": (11, 1),
    "suction instrument": (9, 1),
    "clip applier": (10, 1),
}

EventKind = Literal["absence", "occlusion", "smoke", "motion_blur"]


class SyntheticClipConfig(BaseModel):
    """What to draw; every event can be switched off. Sizes in pixels, durations in frames."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_frames: int = Field(64, ge=2)
    height: int = Field(256, ge=32)
    width: int = Field(256, ge=32)
    fps: float = Field(24.0, gt=0)
    num_instruments: int = Field(2, ge=1, le=4)
    num_tissues: int = Field(1, ge=0, le=len(TISSUE_CATEGORIES))
    instrument_categories: tuple[str, ...] | None = None
    tissue_categories: tuple[str, ...] | None = None
    duplicate_category_prob: float = Field(0.25, ge=0, le=1)
    camera_motion: bool = True
    leave_and_return: bool = True
    absence_frames: int = Field(12, ge=1)
    occlusion: bool = True
    occlusion_frames: int = Field(16, ge=3)
    smoke: bool = True
    smoke_frames: int = Field(14, ge=1)
    smoke_strength: float = Field(0.65, gt=0, le=1)
    motion_blur: bool = True
    motion_blur_frames: int = Field(4, ge=1)
    motion_blur_length: int = Field(11, ge=3)
    sensor_noise: float = Field(2.0, ge=0)

    @field_validator("instrument_categories", "tissue_categories")
    @classmethod
    def _canonical(cls, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if names is None else tuple(canonical_category(n) for n in names)


@dataclass(frozen=True)
class SyntheticEvent:
    """`obj_ids`: (object,) for absence, (occluded, occluder) for occlusion, () otherwise.
    Frames run from `start` to `end` exclusive."""

    kind: EventKind
    start: int
    end: int
    obj_ids: tuple[int, ...] = ()

    @property
    def frames(self) -> range:
        return range(self.start, self.end)


@dataclass
class ToolTrack:
    """One instrument's path; the shaft always comes from `port`, far outside the frame."""

    obj_id: int
    category: str
    port: np.ndarray
    exit_point: np.ndarray  # wrist position at which the whole tool is out of view
    wrists: np.ndarray  # [T, 2] x, y
    openings: np.ndarray  # [T] jaw opening in [0, 1]
    actions: np.ndarray  # [T] Ref-EndoVis action id
    hidden: np.ndarray  # [T] bool: fully retracted, not drawn


@dataclass
class ClipPlan:
    tools: list[ToolTrack]  # by object id
    draw_order: list[ToolTrack]  # back to front
    tissues: list[tuple[int, str, np.ndarray]]  # (object id, category, centre on the canvas)
    canvas_size: tuple[int, int]  # (height, width) of the camera-independent backdrop
    camera: np.ndarray  # [T, 2, 3] canvas -> frame affine per frame
    shaft_width: float
    smoke_level: np.ndarray  # [T] haze opacity
    motion_blurred: np.ndarray  # [T] bool
    blur_angle: float
    scene_events: list[SyntheticEvent]  # smoke and motion blur windows
    leave: tuple[int, int] | None  # (object id, first frame of the hidden stretch)
    occlusion: SyntheticEvent | None


def _smooth_step(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _place_in_sequence(
    rng: np.random.Generator, windows: list[tuple[str, int]], total: int, margin: int
) -> list[int]:
    """Start frames of back-to-back windows with random gaps; a clear error if they cannot fit."""
    needed = sum(n for _, n in windows) + 2 * margin
    if needed > total:
        parts = " + ".join(f"{name} ({n} frames)" for name, n in windows)
        raise ValueError(
            f"num_frames={total} is too short for {parts} plus {2 * margin} margin frames; "
            "raise num_frames, shorten the events or switch some off"
        )
    cuts = np.sort(rng.integers(0, total - needed + 1, size=len(windows)))
    starts, cursor, previous = [], margin, 0
    for (_, length), cut in zip(windows, cuts):
        cursor += int(cut) - previous
        previous = int(cut)
        starts.append(cursor)
        cursor += length
    return starts


def choose_categories(
    rng: np.random.Generator, cfg: SyntheticClipConfig
) -> tuple[list[str], list[str]]:
    if cfg.instrument_categories is not None:
        instruments = list(cfg.instrument_categories)
        if len(instruments) != cfg.num_instruments:
            raise ValueError(
                f"instrument_categories lists {len(instruments)} names but num_instruments={cfg.num_instruments}"
            )
        for name in instruments:
            if name not in INSTRUMENT_STYLES:
                raise ValueError(
                    f"cannot draw instrument category {name!r}; drawable: {', '.join(DRAWABLE_INSTRUMENTS)}"
                )
    else:
        instruments = []
        for _ in range(cfg.num_instruments):
            if instruments and rng.random() < cfg.duplicate_category_prob:
                instruments.append(instruments[int(rng.integers(len(instruments)))])
            else:
                unused = [c for c in DRAWABLE_INSTRUMENTS if c not in instruments]
                instruments.append(unused[int(rng.integers(len(unused)))])
    if cfg.tissue_categories is not None:
        tissues = list(cfg.tissue_categories)
        if len(tissues) != cfg.num_tissues or any(category_kind(t) != "tissue" for t in tissues):
            raise ValueError(
                f"tissue_categories must list {cfg.num_tissues} tissue names, got {tissues}"
            )
    else:
        tissues = [
            TISSUE_CATEGORIES[i] for i in rng.permutation(len(TISSUE_CATEGORIES))[: cfg.num_tissues]
        ]
    return instruments, tissues


def _tool_tracks(
    rng: np.random.Generator, cfg: SyntheticClipConfig, categories: list[str], shaft_width: float
) -> list[ToolTrack]:
    """Ports spread around the frame; wrists wander on slow sinusoids within the central 70%."""
    t = np.arange(cfg.num_frames, dtype=np.float64)
    size = min(cfg.height, cfg.width)
    center = np.array([cfg.width / 2, cfg.height / 2])
    half_diagonal = 0.5 * math.hypot(cfg.width, cfg.height)
    base_angle = float(rng.uniform(0, 2 * math.pi))
    tracks = []
    for i, category in enumerate(categories):
        angle = base_angle + 2 * math.pi * i / len(categories) + float(rng.uniform(-0.35, 0.35))
        outward = np.array([math.cos(angle), math.sin(angle)])
        middle = center + 0.14 * size * outward + rng.uniform(-0.06, 0.06, 2) * size
        wrists = np.empty((cfg.num_frames, 2))
        for axis, extent in enumerate((cfg.width, cfg.height)):
            amplitude = rng.uniform(0.05, 0.13) * size
            phase = 2 * math.pi * t / rng.uniform(48, 128) + rng.uniform(0, 2 * math.pi)
            wrists[:, axis] = np.clip(
                middle[axis] + amplitude * np.sin(phase), 0.15 * extent, 0.85 * extent
            )
        actions = np.empty(cfg.num_frames, np.int16)
        start = 0
        while start < cfg.num_frames:
            choices = PLAUSIBLE_ACTIONS[category]
            length = int(rng.integers(20, 41))
            actions[start : start + length] = choices[int(rng.integers(len(choices)))]
            start += length
        chew = 0.5 + 0.5 * np.sin(
            2 * math.pi * t / rng.uniform(14, 30) + rng.uniform(0, 2 * math.pi)
        )
        # A tool hidden at this distance from the centre cannot reach into the frame.
        hide_at = half_diagonal + tip_reach(category, shaft_width) + 2 * shaft_width + 4
        tracks.append(
            ToolTrack(
                obj_id=i + 1,
                category=category,
                port=center + outward * 4 * half_diagonal,
                exit_point=center + outward * hide_at,
                wrists=wrists,
                openings=np.where(actions == 1, 0.12, chew),  # idle tools keep their jaws shut
                actions=actions,
                hidden=np.zeros(cfg.num_frames, bool),
            )
        )
    return tracks


def _retract(tool: ToolTrack, start: int, absence: int) -> None:
    """Slide the tool out along its shaft, keep it out >= `absence` frames, slide it back."""
    t = np.arange(tool.wrists.shape[0])
    out = _smooth_step((t - start + 1) / RAMP_FRAMES)
    back = _smooth_step((start + 2 * RAMP_FRAMES + absence - t - 1) / RAMP_FRAMES)
    r = np.minimum(out, back)[:, None]
    tool.wrists = tool.wrists * (1 - r) + tool.exit_point * r
    tool.hidden |= r[:, 0] >= 1.0


def _cross_over(
    front: ToolTrack, behind: ToolTrack, start: int, length: int, shaft_width: float
) -> None:
    """Bend the front tool's path so that mid-window its wrist and shaft lie across the other
    tool's tip."""
    t = np.arange(front.wrists.shape[0])
    third = max(length / 3, 1)
    weight = np.minimum(
        _smooth_step((t - start + 1) / third), _smooth_step((start + length - t) / third)
    )[:, None]
    axis = behind.wrists - behind.port
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    aim = behind.wrists + axis * 0.4 * tip_reach(behind.category, shaft_width)
    approach = aim - front.port
    approach /= np.linalg.norm(approach, axis=1, keepdims=True)
    target = aim + approach * 0.5 * tip_reach(front.category, shaft_width)
    front.wrists = front.wrists * (1 - weight) + target * weight


def _camera(
    rng: np.random.Generator, cfg: SyntheticClipConfig, canvas: tuple[int, int]
) -> np.ndarray:
    """Slow sinusoidal pan (<= 7% of the frame) and zoom (1.0-1.12), as canvas->frame affines."""
    t = np.arange(cfg.num_frames, dtype=np.float64)
    size = min(cfg.height, cfg.width)
    moving = 1.0 if cfg.camera_motion else 0.0

    def wave(low: float, high: float) -> np.ndarray:
        return np.sin(2 * math.pi * t / rng.uniform(low, high) + rng.uniform(0, 2 * math.pi))

    pan_x, pan_y = moving * 0.07 * size * wave(60, 160), moving * 0.07 * size * wave(60, 160)
    zoom = 1.0 + moving * 0.06 * (1 + wave(80, 200))
    cx, cy = canvas[1] / 2 + pan_x, canvas[0] / 2 + pan_y
    matrices = np.zeros((cfg.num_frames, 2, 3))
    matrices[:, 0, 0] = matrices[:, 1, 1] = zoom
    matrices[:, 0, 2] = cfg.width / 2 - zoom * cx
    matrices[:, 1, 2] = cfg.height / 2 - zoom * cy
    return matrices


def plan_clip(cfg: SyntheticClipConfig, rng: np.random.Generator) -> ClipPlan:
    T, size = cfg.num_frames, min(cfg.height, cfg.width)
    shaft_width = 0.065 * size
    instrument_names, tissue_names = choose_categories(rng, cfg)
    if cfg.occlusion and len(instrument_names) < 2:
        raise ValueError(
            "occlusion needs num_instruments >= 2 (one instrument passes in front of another)"
        )
    tools = _tool_tracks(rng, cfg, instrument_names, shaft_width)
    draw_order = [tools[i] for i in rng.permutation(len(tools))]

    windows = []
    if cfg.leave_and_return:
        windows.append(("leave_and_return", 2 * RAMP_FRAMES + cfg.absence_frames))
    if cfg.occlusion:
        windows.append(("occlusion", cfg.occlusion_frames))
    windows = [windows[i] for i in rng.permutation(len(windows))]
    starts = (
        dict(zip((k for k, _ in windows), _place_in_sequence(rng, windows, T, 3)))
        if windows
        else {}
    )
    leave = occlusion = None
    if "leave_and_return" in starts:
        leaving = tools[int(rng.integers(len(tools)))]
        _retract(leaving, starts["leave_and_return"], cfg.absence_frames)
        leave = (leaving.obj_id, starts["leave_and_return"] + RAMP_FRAMES)
    if "occlusion" in starts:
        behind, front = (draw_order[i] for i in sorted(rng.choice(len(tools), 2, replace=False)))
        start = starts["occlusion"]
        _cross_over(front, behind, start, cfg.occlusion_frames, shaft_width)
        occlusion = SyntheticEvent(
            "occlusion", start, start + cfg.occlusion_frames, (behind.obj_id, front.obj_id)
        )

    scene = [
        (k, n)
        for k, n, on in (
            ("smoke", cfg.smoke_frames, cfg.smoke),
            ("motion_blur", cfg.motion_blur_frames, cfg.motion_blur),
        )
        if on
    ]
    scene = [scene[i] for i in rng.permutation(len(scene))]
    smoke_level, blurred, scene_events = np.zeros(T, np.float32), np.zeros(T, bool), []
    for (kind, length), start in zip(scene, _place_in_sequence(rng, scene, T, 1) if scene else []):
        frames = np.arange(start, start + length)
        if kind == "smoke":
            bump = np.sin(math.pi * (frames - start + 0.5) / length)
            smoke_level[frames] = cfg.smoke_strength * np.minimum(1.0, 0.35 + bump)
        else:
            blurred[frames] = True
        scene_events.append(SyntheticEvent(kind, start, start + length))  # type: ignore[arg-type]

    canvas = (int(math.ceil(cfg.height * 1.3)), int(math.ceil(cfg.width * 1.3)))
    spread = float(rng.uniform(0, 2 * math.pi))
    tissues = []
    for k, name in enumerate(tissue_names):
        angle = spread + 2 * math.pi * k / len(tissue_names)
        offset = 0.2 * size * np.array([math.cos(angle), math.sin(angle)]) * (len(tissue_names) > 1)
        centre = (
            np.array([canvas[1] / 2, canvas[0] / 2]) + offset + rng.uniform(-0.08, 0.08, 2) * size
        )
        tissues.append((FIRST_TISSUE_ID + k, name, centre))
    return ClipPlan(
        tools=tools, draw_order=draw_order, tissues=tissues, canvas_size=canvas,
        camera=_camera(rng, cfg, canvas), shaft_width=shaft_width, smoke_level=smoke_level,
        motion_blurred=blurred, blur_angle=float(rng.uniform(0, math.pi)),
        scene_events=scene_events, leave=leave, occlusion=occlusion,
    )  # fmt: skip
