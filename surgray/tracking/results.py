"""Typed per-frame results of the tracker, at the video's original resolution."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from surgray.tracking.cifs import ObjectPhase
from surgray.tracking.postprocess import PostprocessConfig, combine_objects, to_video_resolution
from surgray.tracking.state import VideoState


@dataclass
class ObjectResult:
    """One object on one frame."""

    obj_id: int
    label: str | None
    mask: np.ndarray  # [H, W] bool at the video's resolution
    predicted_iou: float
    object_score: float  # object-score logit (> 0: the model sees the object)
    present: bool
    logits: torch.Tensor | None = None  # [H, W] float32 on CPU, when the tracker keeps them
    state: ObjectPhase = "tracking"  # text objects: "searching" until CIFS picks a frame, "lost"
    category: str | None = None  # SAM2S semantic head's category (models with one)
    category_probability: float | None = None


@dataclass
class FrameResult:
    """Every object that has an output on `frame_idx`, in the order they were added."""

    frame_idx: int
    objects: list[ObjectResult] = field(default_factory=list)

    @property
    def obj_ids(self) -> list[int]:
        return [o.obj_id for o in self.objects]

    def get(self, obj_id: int) -> ObjectResult:
        for result in self.objects:
            if result.obj_id == obj_id:
                return result
        raise KeyError(f"frame {self.frame_idx} has no result for object {obj_id} ({self.obj_ids})")

    def masks(self) -> np.ndarray:
        """[N, H, W] bool, one plane per object (N may be 0)."""
        if not self.objects:
            return np.zeros((0, 0, 0), dtype=bool)
        return np.stack([o.mask for o in self.objects])


def frame_result(
    state: VideoState, frame_idx: int, postprocess: PostprocessConfig, keep_logits: bool
) -> FrameResult:
    """The result of `frame_idx` from what the state holds (each object's output on it)."""
    items = []
    for obj in state.objects.values():
        output = obj.output_on(frame_idx)
        if output is not None:
            items.append((obj, output))
    if not items:
        return FrameResult(frame_idx)
    low = torch.stack([out.low_res_logits for _, out in items])
    video = to_video_resolution(low, state.frame_size)
    video = combine_objects(video, postprocess.non_overlap_masks)[:, 0]
    masks = (video > 0).cpu().numpy()
    logits = video.float().cpu() if keep_logits else None
    objects = [
        ObjectResult(
            obj_id=obj.obj_id,
            label=obj.label,
            mask=masks[i],
            predicted_iou=out.predicted_iou,
            object_score=out.object_score,
            present=out.present,
            logits=logits[i] if logits is not None else None,
            state=obj.phase,
            category=obj.category,
            category_probability=obj.category_probability,
        )
        for i, (obj, out) in enumerate(items)
    ]
    return FrameResult(frame_idx, objects)
