"""A serving session's objects and prompts, and the checks a prompt passes before it reaches
the tracker.

`check_prompts` decodes and checks everything it can before anything changes, so a rejected
request leaves the session as it was. Before the first frame the frame size is unknown: only
ids, the masks' own sizes and frame indices are checked then, and `frame_problem` checks the
rest when the first frame arrives. Every refusal is an `Unprocessable` (HTTP 422) naming the
object and what is wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surgray.io.errors import MaskFormatError
from surgray.serving.errors import PayloadTooLarge, Unprocessable
from surgray.serving.schemas import PromptObject


class TextPromptsUnavailable(Unprocessable):
    code = "text_prompts_unavailable"


class InvalidPrompt(Unprocessable):
    code = "invalid_prompt"


class UnknownObject(Unprocessable):
    code = "unknown_object"


class InvalidFrameIndex(Unprocessable):
    code = "invalid_frame_index"


class FrameSizeMismatch(Unprocessable):
    code = "frame_size_mismatch"


class MaskPromptTooLarge(PayloadTooLarge):
    code = "mask_too_large"


def check_mask_bounds(objects: list[PromptObject], max_side: int) -> None:
    """Every mask prompt's declared size and runs checked without decoding it (`rle_check`):
    a side over `max_side` is 413 `mask_too_large`, runs that do not cover the declared size
    are 422. The service runs this before anything is allocated or a session slot is taken."""
    from surgray.io.rle_check import MaskTooLarge, check_rle

    for position, obj in enumerate(objects):
        if obj.mask is None:
            continue
        where = f"objects[{position}].mask"
        try:
            check_rle(obj.mask.model_dump(), max_side=max_side, where=where)
        except MaskTooLarge as exc:
            raise MaskPromptTooLarge(str(exc)) from None
        except MaskFormatError as exc:
            raise InvalidPrompt(str(exc)) from None


@dataclass(frozen=True)
class CheckedPrompt:
    """One object's prompt, decoded; `frame_idx` None means the session's first frame."""

    obj_id: int
    label: str | None
    frame_idx: int | None
    points: np.ndarray | None = None  # [P, 2] (x, y) pixels
    point_labels: np.ndarray | None = None  # [P] 1 / 0
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None  # [H, W] bool


@dataclass(eq=False)
class TrackerSession:
    session_id: str
    model: str
    video: Any = None  # surgray.tracking.state.VideoState, from the first frame on
    waiting: dict[int, CheckedPrompt] = field(default_factory=dict)  # before the first frame
    texts: dict[int, str] = field(default_factory=dict)  # obj_id -> expression, in order given
    closed: bool = False

    @property
    def obj_ids(self) -> list[int]:
        """Text objects first (in the order of `expressions`), then the prompted ones."""
        ids = list(self.texts)
        if self.video is not None:
            ids += [obj_id for obj_id in self.video.obj_ids if obj_id not in self.texts]
        return ids + [obj_id for obj_id in self.waiting if obj_id not in ids]

    @property
    def expressions(self) -> list[str]:
        return list(self.texts.values())

    def mask_size(self) -> tuple[int, int] | None:
        """The frame size the waiting mask prompts imply (they all share it)."""
        for prompt in self.waiting.values():
            if prompt.mask is not None:
                return prompt.mask.shape
        return None


def assign_text_ids(
    state: TrackerSession, expressions: list[str], prompts: list[CheckedPrompt]
) -> dict[int, str]:
    """obj_id -> expression for new expressions: the lowest ids nothing else holds."""
    known = {text: obj_id for obj_id, text in state.texts.items()}
    repeated = [f"{text!r} (object {known[text]})" for text in expressions if text in known]
    if repeated:
        raise InvalidPrompt(
            f"the session already tracks the expressions {', '.join(repeated)}; send only new ones"
        )
    taken = set(state.obj_ids) | {prompt.obj_id for prompt in prompts}
    assigned: dict[int, str] = {}
    next_id = 1
    for text in expressions:
        while next_id in taken:
            next_id += 1
        assigned[next_id] = text
        taken.add(next_id)
    return assigned


def check_prompts(state: TrackerSession, objects: list[PromptObject]) -> list[CheckedPrompt]:
    """Ids assigned and everything checked that can be, before anything changes."""
    known = set(state.obj_ids)
    taken = known | {obj.obj_id for obj in objects if obj.obj_id is not None}
    next_id = 1
    implied = state.mask_size() if state.video is None else tuple(state.video.frame_size)
    checked = []
    for position, obj in enumerate(objects):
        obj_id = obj.obj_id
        if obj_id is None:
            while next_id in taken:
                next_id += 1
            obj_id = next_id
            taken.add(obj_id)
        where = f"objects[{position}] (obj_id {obj_id})"
        if obj.mask is not None and (obj.points or obj.box is not None):
            raise InvalidPrompt(f"{where}: give a mask, or points and/or a box, not both")
        if obj_id not in known and not _has_foreground(obj):
            error = UnknownObject if obj.obj_id is not None else InvalidPrompt
            raise error(
                f"{where}: the session tracks no object {obj_id} (objects: "
                f"{sorted(known) or 'none'}), and background clicks alone cannot start "
                "one; add a box, a mask or a foreground click (label 1)"
            )
        if obj.mask is not None and implied is not None and tuple(obj.mask.size) != implied:
            height, width = obj.mask.size  # refused before decoding: no allocation
            raise InvalidPrompt(
                f"{where}: the mask is {width}x{height} (width x height) "
                f"but the session's frames are {implied[1]}x{implied[0]}"
            )
        mask = _decode_mask(obj, where)
        if mask is not None:
            if implied is not None and mask.shape != implied:
                raise InvalidPrompt(
                    f"{where}: the mask is {mask.shape[1]}x{mask.shape[0]} (width x height) "
                    f"but the session's frames are {implied[1]}x{implied[0]}"
                )
            implied = mask.shape
        prompt = CheckedPrompt(
            obj_id=obj_id,
            label=obj.label,
            frame_idx=_frame_index(state, obj.frame_index, where),
            points=np.asarray(obj.points, dtype=np.float64) if obj.points else None,
            point_labels=np.asarray(obj.point_labels, dtype=np.int32) if obj.points else None,
            box=obj.box,
            mask=mask,
        )
        if state.video is not None:
            problem = frame_problem(prompt, tuple(state.video.frame_size))
            if problem is not None:
                raise InvalidPrompt(f"{where}: {problem}")
        checked.append(prompt)
    return checked


def frame_problem(prompt: CheckedPrompt, frame_size: tuple[int, int]) -> str | None:
    """Why the prompt does not fit frames of `frame_size`, or None."""
    from surgray.tracking.prompts import check_box, check_points

    try:
        if prompt.points is not None:
            check_points(prompt.points, prompt.point_labels, frame_size)
        if prompt.box is not None:
            check_box(prompt.box, frame_size)
    except (TypeError, ValueError) as exc:
        return str(exc)
    if prompt.mask is not None and prompt.mask.shape != tuple(frame_size):
        height, width = prompt.mask.shape
        return f"the mask is {width}x{height} but the frames are {frame_size[1]}x{frame_size[0]}"
    return None


def _has_foreground(obj: PromptObject) -> bool:
    return obj.box is not None or obj.mask is not None or 1 in obj.point_labels


def _decode_mask(obj: PromptObject, where: str) -> np.ndarray | None:
    if obj.mask is None:
        return None
    from surgray.io.masks import decode_rle

    try:
        return decode_rle([obj.mask.model_dump()])[0]
    except MaskFormatError as exc:
        raise InvalidPrompt(f"{where}: mask: {exc}") from None


def _frame_index(state: TrackerSession, frame_index: int | None, where: str) -> int | None:
    video = state.video
    if video is None:
        if frame_index not in (None, 0):
            raise InvalidFrameIndex(
                f"{where}: frame_index {frame_index}, but the session has no frame yet; "
                "prompts before the first frame apply to it (frame_index 0 or omitted)"
            )
        return None
    allowed = [video.next_frame_idx]
    if video.last_frame_idx is not None:
        allowed.insert(0, video.last_frame_idx)
    if frame_index is None:
        return video.next_frame_idx
    if frame_index not in allowed:
        raise InvalidFrameIndex(
            f"{where}: frame_index {frame_index}; prompts may name the frame processed last "
            f"({video.last_frame_idx}) or the next one ({video.next_frame_idx})"
        )
    return frame_index
