"""Typed per-video and per-object tracking state (see `surgray.tracking.tracker`).

A `VideoState` is what one streaming session owns: its objects, where it stands in the video
and the features of the frame it last encoded. Nothing in it grows with the number of frames:
each object's memories live in its `MemoryPolicy` (bounded by the policy), and besides that an
object keeps its last output, the outputs of the frames it was prompted on and its prompts
(both bounded by what the user did, not by the video's length).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from surgray.model.sam2.frame_types import FrameFeatures, ObjectPrompt
from surgray.tracking.cifs import ObjectPhase
from surgray.tracking.memory.base import MemoryPolicy
from surgray.tracking.memory.config import MemoryPolicyConfig

if TYPE_CHECKING:
    from surgray.tracking.referring import ReferringState

# How an object's output on a frame was made:
# "init": from prompts alone, without memory (SAM2's initial conditioning frame);
# "correction": prompts on a frame already tracked, with memory and the earlier logits;
# "tracked": from memory alone;
# "referred": from a text expression alone (ReSurgSAM2's stage 1, surgray.tracking.referring).
OutputKind = Literal["init", "correction", "tracked", "referred"]
ObjectStatus = Literal["pending", "present", "absent"]


class TrackerStateError(RuntimeError):
    """The video state cannot do what was asked (closed, past its end, ...)."""


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of tensor data; a tensor seen twice (same object) counts once."""
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


@dataclass
class ObjectOutput:
    """What the model said about one object on one frame (model resolution)."""

    frame_idx: int
    low_res_logits: torch.Tensor  # [1, S/4, S/4] float32 mask logits, after hole filling
    object_score: float  # object-score logit (> 0: present)
    predicted_iou: float
    kind: OutputKind

    @property
    def present(self) -> bool:
        return self.object_score > 0


@dataclass
class FramePrompt:
    """The prompts an object received on one frame, in model-input coordinates.

    `consumed` turns True once the frame ran with them; a mask prompt's pixels are dropped then
    (only points are needed later, to append clicks with `clear_old_points=False`).
    """

    points: torch.Tensor | None = None  # [P, 2] float (x, y)
    labels: torch.Tensor | None = None  # [P] int32
    box: torch.Tensor | None = None  # [4] float
    mask: torch.Tensor | None = None  # [S, S] bool
    consumed: bool = False

    def to_prompt(self, prev_mask_logits: torch.Tensor | None = None) -> ObjectPrompt:
        clicks = self.points is not None or self.box is not None
        return ObjectPrompt(
            points=self.points,
            labels=self.labels,
            box=self.box,
            mask=self.mask,
            prev_mask_logits=prev_mask_logits if clicks else None,
        )

    def mark_consumed(self) -> None:
        self.consumed = True
        self.mask = None

    def tensors(self) -> list[torch.Tensor | None]:
        return [self.points, self.labels, self.box, self.mask]


@dataclass
class FrameSpans:
    """The frames an object has been tracked on, as merged inclusive ranges.

    SAM2 treats a prompt on a frame the object was already tracked on as a correction (with
    memory), and a prompt elsewhere as a new initial frame; ranges keep that knowledge without
    a per-frame record (one range per tracking pass at most).
    """

    ranges: list[tuple[int, int]] = field(default_factory=list)

    def add(self, frame_idx: int) -> None:
        for i, (lo, hi) in enumerate(self.ranges):
            if lo - 1 <= frame_idx <= hi + 1:
                self.ranges[i] = (min(lo, frame_idx), max(hi, frame_idx))
                self._merge()
                return
        self.ranges.append((frame_idx, frame_idx))
        self.ranges.sort()

    def _merge(self) -> None:
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(self.ranges):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        self.ranges = merged

    def __contains__(self, frame_idx: int) -> bool:
        return any(lo <= frame_idx <= hi for lo, hi in self.ranges)

    def clear(self) -> None:
        self.ranges.clear()


@dataclass
class ObjectState:
    """One tracked object of a video."""

    obj_id: int
    label: str | None
    policy: MemoryPolicy
    prompts: dict[int, FramePrompt] = field(default_factory=dict)
    last: ObjectOutput | None = None
    # Outputs of the frames the object was prompted on (conditioning frames): a later pass over
    # such a frame reuses them, as SAM2 does, instead of running the frame again.
    cond_outputs: dict[int, ObjectOutput] = field(default_factory=dict)
    tracked: FrameSpans = field(default_factory=FrameSpans)
    # Text-referred objects search before they are tracked (surgray.tracking.cifs); others
    # are tracked from their prompts.
    phase: ObjectPhase = "tracking"
    # SAM2S semantic head's answer on the object's latest frame (models with one).
    category: str | None = None
    category_probability: float | None = None

    @property
    def status(self) -> ObjectStatus:
        if self.last is None:
            return "pending"
        return "present" if self.last.present else "absent"

    @property
    def started(self) -> bool:
        """True once a prompt of the object has run (it has memories to track with)."""
        return bool(self.cond_outputs) or next(iter(self.policy.held_entries()), None) is not None

    def pending_prompt(self, frame_idx: int) -> FramePrompt | None:
        record = self.prompts.get(frame_idx)
        return record if record is not None and not record.consumed else None

    def output_on(self, frame_idx: int) -> ObjectOutput | None:
        """The object's output on a frame, if the state still holds it."""
        if self.last is not None and self.last.frame_idx == frame_idx:
            return self.last
        return self.cond_outputs.get(frame_idx)

    def nbytes(self) -> int:
        outputs = [self.last, *self.cond_outputs.values()]
        tensors = [o.low_res_logits for o in outputs if o is not None]
        for record in self.prompts.values():
            tensors += record.tensors()
        return self.policy.nbytes() + tensor_bytes(tensors)


@dataclass
class CachedFrame:
    """Image-encoder features of the frame encoded last (for prompts on that frame)."""

    frame_idx: int
    features: FrameFeatures

    def nbytes(self) -> int:
        f = self.features
        return tensor_bytes([f.image_embed, f.image_pos, *f.high_res])


@dataclass
class VideoState:
    """One video (or live stream) being tracked. Create it with `Tracker.start`."""

    video_id: str
    frame_size: tuple[int, int]  # (height, width) of the frames given to `step`
    device: torch.device
    num_frames: int | None = None  # video length when known (bounds frame indices)
    objects: dict[int, ObjectState] = field(default_factory=dict)
    frames_stepped: int = 0  # frames consumed by `step` so far, in all passes
    last_frame_idx: int | None = None  # the frame stepped last
    next_frame_idx: int = 0  # the index the next `step` gives its frame
    reverse: bool = False  # tracking direction of the current pass
    cached: CachedFrame | None = None
    closed: bool = False
    policy_cfg: MemoryPolicyConfig | None = None  # what its objects' policies are built from
    referring: ReferringState | None = None  # text objects and sensory memory, once any exists

    @property
    def obj_ids(self) -> list[int]:
        return list(self.objects)

    def object(self, obj_id: int) -> ObjectState:
        if obj_id not in self.objects:
            known = ", ".join(str(i) for i in self.objects) or "none"
            raise KeyError(f"video {self.video_id!r} has no object {obj_id!r} (objects: {known})")
        return self.objects[obj_id]

    def nbytes(self) -> int:
        """Bytes of tensor data the state holds (memories, outputs, prompts, cached features)."""
        total = sum(obj.nbytes() for obj in self.objects.values())
        if self.cached is not None:
            total += self.cached.nbytes()
        return total

    def check_open(self) -> None:
        if self.closed:
            raise TrackerStateError(
                f"video {self.video_id!r} is closed; start a new one with Tracker.start"
            )
