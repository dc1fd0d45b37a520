"""Typed inputs and outputs of one tracking step of `SAM2Model` (see `surgray.model.sam2.network`).

Coordinates and masks given to the model are in the model's input space: a square image of
`image_size` pixels. The tracker converts from the video's resolution (see
`surgray.model.sam2.preprocess.scale_points`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from surgray.model.sam2.memory_types import MemoryEntry


@dataclass
class FrameFeatures:
    """Image-encoder output of ONE frame, ready for the SAM heads and memory attention.

    Tensors have batch 1 (shared by every object of the frame) or B (one row per object).
    `high_res` holds the stride-4 and stride-8 maps after the decoder's `conv_s0`/`conv_s1`
    (empty when the decoder uses no high-resolution features).
    """

    image_embed: torch.Tensor  # [1|B, C, h, w] stride-16 features, before memory attention
    image_pos: torch.Tensor  # [1|B, C, h, w] sine position encoding of that map
    high_res: list[torch.Tensor] = field(default_factory=list)

    @property
    def batch(self) -> int:
        return self.image_embed.shape[0]

    def expand(self, num_objects: int) -> FrameFeatures:
        """Views with one row per object (no copy when the batch is 1)."""
        if self.batch == num_objects:
            return self
        if self.batch != 1:
            raise ValueError(
                f"features hold {self.batch} rows; cannot serve {num_objects} objects "
                "(give features of batch 1 or one row per object)"
            )

        def grow(t: torch.Tensor) -> torch.Tensor:
            return t.expand(num_objects, *t.shape[1:])

        return FrameFeatures(
            grow(self.image_embed), grow(self.image_pos), [grow(t) for t in self.high_res]
        )

    def take(self, rows: list[int]) -> FrameFeatures:
        """The rows of some objects (after `expand`)."""
        index = torch.tensor(rows, device=self.image_embed.device)
        return FrameFeatures(
            self.image_embed.index_select(0, index),
            self.image_pos.index_select(0, index),
            [t.index_select(0, index) for t in self.high_res],
        )


@dataclass
class ObjectPrompt:
    """What a user (or a detector) says about one object on one frame.

    points: [P, 2] (x, y) in model-input pixels; labels: [P] (1 positive, 0 negative).
    box: [4] (x0, y0, x1, y1) in model-input pixels; it is fed as two corner clicks placed
    before the points, as SAM2 was trained.
    mask: [H, W] binary mask (any size; resized to `image_size`): with
    `use_mask_input_as_output_without_sam` it *is* the output, as in the reference.
    prev_mask_logits: [h4, w4] low-resolution logits of an earlier prediction on this frame,
    fed to the prompt encoder with correction clicks (needs points or a box, no mask).
    """

    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    box: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    prev_mask_logits: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.points is None) != (self.labels is None):
            raise ValueError("ObjectPrompt: points and labels must be given together")
        if self.points is not None:
            if self.points.ndim != 2 or self.points.shape[-1] != 2:
                raise ValueError(
                    f"ObjectPrompt: points must have shape [P, 2], got {list(self.points.shape)}"
                )
            if self.labels.shape != self.points.shape[:1]:
                raise ValueError(
                    f"ObjectPrompt: labels must have shape [{self.points.shape[0]}], "
                    f"got {list(self.labels.shape)}"
                )
        if self.box is not None and self.box.numel() != 4:
            raise ValueError(f"ObjectPrompt: box must have 4 numbers, got {list(self.box.shape)}")
        if self.mask is not None:
            if self.mask.ndim != 2:
                raise ValueError(f"ObjectPrompt: mask must be [H, W], got {list(self.mask.shape)}")
            if self.points is not None or self.box is not None:
                raise ValueError("ObjectPrompt: give either a mask or clicks/box, not both")
        if self.prev_mask_logits is not None and self.points is None and self.box is None:
            raise ValueError("ObjectPrompt: prev_mask_logits needs points or a box with it")
        if self.is_empty:
            raise ValueError("ObjectPrompt: empty prompt (no points, box or mask)")

    @property
    def is_empty(self) -> bool:
        return self.points is None and self.box is None and self.mask is None

    def clicks(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Box corners (labels 2, 3) then points: ([N, 2] float, [N] int32), or None."""
        coords, labels = [], []
        if self.box is not None:
            coords.append(self.box.reshape(2, 2).float())
            labels.append(torch.tensor([2, 3], dtype=torch.int32, device=self.box.device))
        if self.points is not None:
            coords.append(self.points.float())
            labels.append(self.labels.to(torch.int32))
        if not coords:
            return None
        device = coords[0].device
        return torch.cat([c.to(device) for c in coords]), torch.cat([x.to(device) for x in labels])

    @property
    def num_clicks(self) -> int:
        """Clicks as SAM2 counts them for the multimask rule (a box counts as two)."""
        clicks = self.clicks()
        return 0 if clicks is None else int(clicks[1].numel())


@dataclass
class HeadsOutput:
    """SAM heads (prompt encoder + mask decoder + pointer) for B objects."""

    low_res_multimasks: torch.Tensor  # [B, M, 4h, 4w] logits, M = 1 or 3
    high_res_multimasks: torch.Tensor  # [B, M, S, S]
    multimask_iou: torch.Tensor  # [B, M]
    low_res_masks: torch.Tensor  # [B, 1, 4h, 4w] the kept mask (best IoU when M = 3)
    high_res_masks: torch.Tensor  # [B, 1, S, S]
    predicted_iou: torch.Tensor  # [B] IoU estimate of the kept mask
    obj_ptr: torch.Tensor  # [B, C]
    object_score_logits: torch.Tensor  # [B, 1]
    fusion_tokens: torch.Tensor | None = None  # [B, 1|2, C] stage 1: the fusion's sparse tokens


@dataclass
class FrameOutput:
    """Result of `SAM2Model.track_frame` for the B objects of one frame (batch order kept)."""

    frame_idx: int
    low_res_masks: torch.Tensor  # [B, 1, 4h, 4w] mask logits (what the reference stores)
    high_res_masks: torch.Tensor  # [B, 1, S, S] logits at model-input size
    predicted_iou: torch.Tensor  # [B]
    object_score_logits: torch.Tensor  # [B] (> 0: object present)
    obj_ptr: torch.Tensor  # [B, C]
    memory_features: torch.Tensor | None  # [B, C_mem, h, w] in the storage dtype, or None
    multimask_iou: list[torch.Tensor]  # per object: IoU of each candidate mask ([1] or [3])
    is_conditioning: list[bool]  # per object: prompted on this frame (or declared so)

    @property
    def num_objects(self) -> int:
        return self.low_res_masks.shape[0]

    def entry(self, obj: int, image_features: torch.Tensor | None = None) -> MemoryEntry:
        """What object `obj` remembers of this frame (needs the memory encoder to have run)."""
        if self.memory_features is None:
            raise ValueError("this frame was tracked with run_memory_encoder=False: no memory")
        return MemoryEntry(
            frame_idx=self.frame_idx,
            features=self.memory_features[obj],
            obj_ptr=self.obj_ptr[obj],
            is_conditioning=self.is_conditioning[obj],
            predicted_iou=float(self.predicted_iou[obj]),
            object_score=float(self.object_score_logits[obj]),
            image_features=image_features,
        )

    def entries(self) -> list[MemoryEntry]:
        return [self.entry(i) for i in range(self.num_objects)]
