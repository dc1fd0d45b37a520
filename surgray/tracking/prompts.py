"""User prompts (video pixels) -> checked prompts in the model's input space.

Points are (x, y) in pixels of the original frame, labels 1 (positive) or 0 (negative); a box
is (x0, y0, x1, y1); a mask is [H, W] bool at the frame's size. They are stretched to the
model's square input the way frames are (`surgray.model.sam2.preprocess`), and a mask is resized
as the reference does (antialiased bilinear, then >= 0.5).
"""

from __future__ import annotations

import numpy as np
import torch

from surgray.model.sam2.heads import prompt_mask_at_input_size
from surgray.model.sam2.preprocess import scale_box, scale_points
from surgray.tracking.state import FramePrompt, ObjectState, VideoState


def _as_float_array(values: object, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be numbers, got {type(values).__name__}") from error
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array


def _check_inside(xy: np.ndarray, frame_size: tuple[int, int], name: str) -> None:
    height, width = frame_size
    outside = (xy[..., 0] < 0) | (xy[..., 0] > width) | (xy[..., 1] < 0) | (xy[..., 1] > height)
    if outside.any():
        bad = xy.reshape(-1, 2)[outside.reshape(-1)].tolist()
        raise ValueError(
            f"{name} {bad} lie outside the frame (x in [0, {width}], y in [0, {height}])"
        )


def check_points(
    points: object, labels: object, frame_size: tuple[int, int], normalized: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """([P, 2] pixel coordinates, [P] int labels) or a ValueError naming what is wrong."""
    xy = _as_float_array(points, "points")
    if xy.ndim == 1 and xy.size == 2:
        xy = xy[None]
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] == 0:
        raise ValueError(f"points must be [P, 2] (x, y) with P >= 1, got shape {xy.shape}")
    lab = _as_float_array(labels, "labels").reshape(-1)
    if lab.shape[0] != xy.shape[0]:
        raise ValueError(f"{xy.shape[0]} points but {lab.shape[0]} labels")
    if not np.isin(lab, (0, 1)).all():
        raise ValueError(f"labels must be 1 (positive) or 0 (negative), got {lab.tolist()}")
    if normalized:
        xy = xy * np.array([frame_size[1], frame_size[0]], dtype=np.float64)
    _check_inside(xy, frame_size, "points")
    return xy, lab.astype(np.int32)


def check_box(box: object, frame_size: tuple[int, int], normalized: bool = False) -> np.ndarray:
    """[4] (x0, y0, x1, y1) pixel coordinates or a ValueError naming what is wrong."""
    corners = _as_float_array(box, "box").reshape(-1)
    if corners.size != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1), got {corners.size} numbers")
    if normalized:
        corners = corners * np.array([frame_size[1], frame_size[0]] * 2, dtype=np.float64)
    if corners[0] > corners[2] or corners[1] > corners[3]:
        raise ValueError(f"box must have x0 <= x1 and y0 <= y1, got {corners.tolist()}")
    _check_inside(corners.reshape(2, 2), frame_size, "box corners")
    return corners


def check_mask(mask: object, frame_size: tuple[int, int]) -> torch.Tensor:
    """The mask as a [H, W] bool tensor of the frame's size, or a ValueError."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a numpy array or tensor, got {type(mask).__name__}")
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {list(mask.shape)}")
    if tuple(mask.shape) != tuple(frame_size):
        raise ValueError(
            f"mask is {tuple(mask.shape)} but the video's frames are {tuple(frame_size)} (H, W)"
        )
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not ((mask == 0) | (mask == 1)).all():
            raise ValueError(f"mask must be bool (or 0/1 integers), got {mask.dtype}")
        mask = mask.bool()
    return mask


def click_prompt(
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
    frame_size: tuple[int, int],
    image_size: int,
    previous: FramePrompt | None = None,
) -> FramePrompt:
    """Checked clicks and/or box -> a model-space `FramePrompt`.

    With `previous` (the same frame's earlier prompt, for `clear_old_points=False`) the new
    points are appended after its clicks, as SAM2 does; a box cannot be appended.
    """
    model_points = model_labels = model_box = None
    if points is not None:
        model_points = scale_points(points, frame_size, image_size)
        model_labels = torch.as_tensor(labels, dtype=torch.int32)
    if box is not None:
        if previous is not None:
            raise ValueError(
                "a box cannot be added to earlier clicks (SAM2 needs the box first); "
                "use clear_old_points=True"
            )
        model_box = scale_box(box, frame_size, image_size)
    if previous is not None and (previous.points is not None or previous.box is not None):
        model_box = previous.box
        if previous.points is not None:
            model_points = torch.cat([previous.points, model_points])
            model_labels = torch.cat([previous.labels, model_labels])
    if model_points is None and model_box is None:
        raise ValueError("give points (with labels) or a box")
    return FramePrompt(points=model_points, labels=model_labels, box=model_box)


def mask_prompt(mask: torch.Tensor, image_size: int) -> FramePrompt:
    """A checked frame-size mask -> a model-space `FramePrompt` ([S, S] bool)."""
    resized = prompt_mask_at_input_size(mask, image_size)[0, 0] > 0.5
    return FramePrompt(mask=resized)


def check_prompt_timing(
    state: VideoState, obj: ObjectState, frame_idx: int, kind: str, has_features: bool
) -> None:
    """Refuse a prompt the tracker cannot apply now (module doc of `surgray.tracking.tracker`).

    Without the frame's features (not the frame stepped last, no pixels given) a prompt can
    only wait for a frame not stepped yet, and cannot be a correction; a correction needs the
    object's output on that frame."""
    obj_id = obj.obj_id
    if not has_features:
        ahead = (
            frame_idx <= state.next_frame_idx
            if state.reverse
            else frame_idx >= state.next_frame_idx
        )
        if not ahead:
            raise ValueError(
                f"frame {frame_idx} of video {state.video_id!r} was already passed and is "
                f"not the frame stepped last ({state.last_frame_idx}); pass its pixels as "
                "frame=..., or seek back and step it again"
            )
        if kind == "correction":
            raise ValueError(
                f"object {obj_id} was tracked on frame {frame_idx} in an earlier pass: step "
                "up to that frame first, then correct it"
            )
    elif kind == "correction" and obj.output_on(frame_idx) is None:
        raise ValueError(
            f"object {obj_id} was tracked on frame {frame_idx} but the state no longer holds "
            "that output; seek back and step up to the frame, then correct it"
        )
