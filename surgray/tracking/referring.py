"""Text-referred objects in the streaming tracker: ReSurgSAM2's two stages (methods.md §3).

`Tracker.add_text(state, obj_id, text)` makes the expression an object of its own, which starts
*searching* on the next frame stepped. Each step, after the tracked objects ran:

1. Every searching object is segmented from its text alone (stage 1, `ReSurgSAM2.refer`, one
   batched pass for all of them), with the video's sensory memory (the stride-16 features of
   the frames stepped just before) as history. That output is the object's result on the frame.
2. Its `CredibleFrameSelector` (surgray.tracking.cifs) sees the prediction. When it selects a
   candidate, that frame's memory is encoded from its stage-1 low-resolution logits, upsampled
   and treated as a prompted frame's (`is_mask_from_pts=True`: binarised when the model's
   `memory.binarize_mask_from_pts_for_mem_enc` says so; the released preset does not), and
   becomes the object's conditioning memory, with the stage-1 object pointer. From the next
   frame on the object is tracked by its memory policy (`dlm` for ReSurgSAM2); with
   `ReferringConfig.tracked_text_token` the decoder also gets the text token on those frames
   (`surgray.model.referring.tracking`). The frames between the selected one and the switch
   never become memories; their results stay the stage-1 masks.
3. Tracked text objects go "lost" on frames the object score says they are not seen, and after
   the configured number of such frames (`CIFSConfig.lost_patience`; never in the released
   preset) their memories are dropped and they search again, with the frames just before as
   sensory memory and an empty CIFS window.

Objects prompted with clicks, boxes or masks are untouched. A text object that receives such a
prompt while searching is tracked from it. A seek empties the sensory memory and the candidate
windows (the next frames are not consecutive with them). Text objects use the model's
`ReferringConfig.text_memory_policy` when it names one (the released preset: DLM as released),
else the video's memory policy; ReSurgSAM2 runs use `{"name": "dlm"}` (or
`resurgsam2_dlm_preset()`).

With a SAM2S semantic head and category names, every object with an output on the frame is
also classified (`surgray.tracking.categories`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from surgray.model.referring.tracking import TextMemorySelection
from surgray.model.sam2.frame_types import FrameFeatures
from surgray.model.sam2.memory_types import MemoryEntry
from surgray.tracking.cifs import CIFSConfig, CredibleFrameSelector
from surgray.tracking.inputs import check_index, policy_for_model
from surgray.tracking.memory.base import MemoryPolicy, build_policy
from surgray.tracking.postprocess import clean_mask_logits
from surgray.tracking.state import ObjectOutput, ObjectState, VideoState

if TYPE_CHECKING:
    from surgray.model.referring.resurgsam2 import ReSurgSAM2
    from surgray.model.sam2.network import SAM2Model
    from surgray.tracking.frame_step import StepSettings


@dataclass
class ReferredFrame:
    """One object's stage-1 output on one frame, kept while it is a CIFS candidate."""

    frame_idx: int
    features: FrameFeatures  # the frame's stride-16 map and its position encoding
    low_res_logits: torch.Tensor  # [1, h4, w4] after hole filling
    obj_ptr: torch.Tensor  # [C]
    object_score: float
    predicted_iou: float

    def output(self) -> ObjectOutput:
        return ObjectOutput(
            self.frame_idx, self.low_res_logits, self.object_score, self.predicted_iou, "referred"
        )


@dataclass
class TextObject:
    text: str
    selector: CredibleFrameSelector


@dataclass
class ReferringState:
    """Per video: the sensory memory (newest first) and the text objects."""

    history: deque[torch.Tensor]
    objects: dict[int, TextObject] = field(default_factory=dict)

    def on_seek(self) -> None:
        self.history.clear()
        for text_object in self.objects.values():
            text_object.selector.clear_window()


def require_referring_model(model: SAM2Model) -> ReSurgSAM2:
    from surgray.model.referring.resurgsam2 import ReSurgSAM2

    if not isinstance(model, ReSurgSAM2):
        raise TypeError(
            f"text prompts need a ReSurgSAM2 model (referring head and text encoder); this "
            f"tracker holds a {type(model).__name__}: build it with "
            "surgray.model.checkpoints.referring_checkpoint.build_resurgsam2"
        )
    return model


def add_text_object(
    model: SAM2Model,
    state: VideoState,
    obj_id: Any,
    text: Any,
    label: str | None = None,
    cifs: CIFSConfig | dict | None = None,
) -> None:
    """Register a text-referred object (see `Tracker.add_text`)."""
    referring = require_referring_model(model)
    obj_id = check_index(obj_id, "obj_id")
    if not isinstance(text, str):
        raise TypeError(f"text for object {obj_id} must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError(f"text for object {obj_id} is empty: a referring expression needs words")
    if obj_id in state.objects:
        raise ValueError(
            f"video {state.video_id!r} already has an object {obj_id}; remove it first or give "
            "the expression another obj_id"
        )
    if isinstance(cifs, dict):
        cifs = CIFSConfig(**cifs)
    cifs = cifs if cifs is not None else referring.referring_cfg.cifs
    referring.encode_text([text])  # fails now, not mid-video, on a missing encoder or long text
    if state.referring is None:
        keep = referring.referring_cfg.fusion.num_frames - 1
        state.referring = ReferringState(history=deque(maxlen=keep))
    obj = ObjectState(
        obj_id, label if label is not None else text, _text_policy(referring, state, text)
    )
    obj.phase = "searching"
    state.objects[obj_id] = obj
    state.referring.objects[obj_id] = TextObject(text, CredibleFrameSelector(cifs))


def _text_policy(model: ReSurgSAM2, state: VideoState, text: str) -> MemoryPolicy:
    """The text object's memory policy: the model's `text_memory_policy` (the released
    preset's DLM) or the video's; with `tracked_text_token`, its selections carry the text
    token for the decoder (`TextTokenPolicy`)."""
    cfg = model.referring_cfg
    policy_cfg = state.policy_cfg
    if cfg.text_memory_policy is not None:
        policy_cfg = policy_for_model(cfg.text_memory_policy, model)
    policy = build_policy(policy_cfg, state.num_frames)
    if not cfg.tracked_text_token:
        return policy
    with torch.no_grad():
        token = model.text_prompt_token(model.encode_text([text]))[0]
    return TextTokenPolicy(policy, token.detach())


class TextTokenPolicy:
    """A memory policy whose selections also carry a text object's decoder token
    (`TextMemorySelection`); everything else is the wrapped policy's."""

    def __init__(self, inner: MemoryPolicy, tokens: torch.Tensor) -> None:
        self._inner = inner
        self._tokens = tokens  # [T, C]

    def select(self, frame_idx: int, reverse: bool = False) -> TextMemorySelection:
        selection = self._inner.select(frame_idx, reverse)
        return TextMemorySelection(selection.spatial, selection.pointers, self._tokens)

    def to(self, device: torch.device | str) -> TextTokenPolicy:
        self._inner.to(device)
        self._tokens = self._tokens.to(device)
        return self

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_inner", "_tokens"):
            raise AttributeError(name)  # copy/pickle probe before __init__ has run
        return getattr(self._inner, name)


def after_frame(
    model: SAM2Model,
    state: VideoState,
    frame_idx: int,
    features: FrameFeatures,
    settings: StepSettings,
) -> None:
    """Stage 1, the stage switch and lost detection of the video's text objects for the frame
    just stepped (the tracked objects have run), then the semantic head when there is one."""
    ref = state.referring
    if ref is not None and ref.objects:
        _update_text_objects(model, state, ref, frame_idx, features, settings)
        ref.history.appendleft(features.image_embed)
    if getattr(model, "semantic_head", None) is not None and model.referring_cfg.categories:
        from surgray.tracking.categories import classify_objects

        classify_objects(model, state, frame_idx, features, settings.reverse)


def _update_text_objects(
    model: SAM2Model,
    state: VideoState,
    ref: ReferringState,
    frame_idx: int,
    features: FrameFeatures,
    settings: StepSettings,
) -> None:
    searching: list[tuple[ObjectState, TextObject]] = []
    for obj_id, text_object in ref.objects.items():
        obj = state.objects[obj_id]
        selector = text_object.selector
        if selector.phase == "searching":
            if obj.started:  # a click, box or mask prompt gave it memories
                selector.start_tracking()
                obj.phase = "tracking"
            else:
                searching.append((obj, text_object))
        elif obj.last is not None and obj.last.frame_idx == frame_idx:
            obj.phase = selector.observe_tracking(frame_idx, obj.last.object_score)
            if obj.phase == "searching":
                forget_memories(obj)
    if searching:
        _search(require_referring_model(model), ref, searching, frame_idx, features, settings)


def _search(
    model: ReSurgSAM2,
    ref: ReferringState,
    searching: list[tuple[ObjectState, TextObject]],
    frame_idx: int,
    features: FrameFeatures,
    settings: StepSettings,
) -> None:
    text = model.encode_text([text_object.text for _, text_object in searching])
    out = model.refer(features, text, list(ref.history))
    cleaned = clean_mask_logits(
        out.low_res_masks.float(), settings.hole_area, settings.sprinkle_area
    )
    frame_features = FrameFeatures(features.image_embed, features.image_pos)
    for row, (obj, text_object) in enumerate(searching):
        referred = ReferredFrame(
            frame_idx,
            frame_features,
            cleaned[row].clone(),
            out.obj_ptr[row].clone(),
            float(out.object_score_logits[row]),
            float(out.predicted_iou[row]),
        )
        obj.last = referred.output()
        chosen = text_object.selector.observe_search(
            frame_idx, referred.object_score, referred.predicted_iou, referred
        )
        if chosen is not None:
            condition_on(model, obj, chosen.payload, settings.storage_device)
            obj.phase = "tracking"


def condition_on(
    model: SAM2Model, obj: ObjectState, referred: ReferredFrame, storage_device: torch.device
) -> None:
    """Make a stage-1 frame the object's conditioning memory (its mask binarised, as a
    prompted frame's)."""
    score = torch.tensor([referred.object_score], device=referred.low_res_logits.device)
    memory = model.encode_memory(
        referred.features, referred.low_res_logits[None].float(), score, [True]
    )
    image_features = None
    if getattr(getattr(obj.policy, "cfg", None), "name", None) == "divemem":
        # DiveMem compares frames by image features; other policies keep none.
        image_features = referred.features.image_embed[0].to(storage_device, copy=True)
    obj.policy.add(
        MemoryEntry(
            frame_idx=referred.frame_idx,
            features=memory[0].to(storage_device, copy=True),
            obj_ptr=referred.obj_ptr.to(storage_device, copy=True),
            is_conditioning=True,
            predicted_iou=referred.predicted_iou,
            object_score=referred.object_score,
            image_features=image_features,
        )
    )
    obj.cond_outputs[referred.frame_idx] = referred.output()


def forget_memories(obj: ObjectState) -> None:
    """A lost text object starts over: no memories, no conditioning frames."""
    obj.policy.reset()
    obj.cond_outputs.clear()
    obj.tracked.clear()


def forget_object(state: VideoState, obj_id: int) -> None:
    if state.referring is not None:
        state.referring.objects.pop(obj_id, None)


def on_seek(state: VideoState) -> None:
    if state.referring is not None:
        state.referring.on_seek()
