"""The streaming tracker: frames in one at a time, masks out, bounded state.

    tracker = Tracker(model, {"name": "recent"})
    state = tracker.start("case-17", frame_size=(1080, 1920))
    tracker.add_box(state, obj_id=1, frame_idx=0, box=(400, 300, 700, 650), label="grasper")
    for frame in frames:                      # HxWx3 uint8 RGB
        result = tracker.step(state, frame)   # FrameResult, masks at 1080x1920

How prompts and steps interact (SAM2's video predictor rules, per object):

- `step` gives its frame the index `state.next_frame_idx` (0, 1, 2, ... forward; after
  `seek(state, k, reverse=True)`: k, k-1, ...). Prompts for a frame that has not been stepped
  yet wait for it ("pending"; the prompt call returns None) and are consumed when it is
  stepped: the object is then segmented from its prompts alone, without memory, and the frame
  becomes one of its conditioning frames (SAM2's initial conditioning frame). Objects whose
  first prompt is still ahead are left out of results; an object can join mid-video this way.
- A prompt for the frame stepped last (its features are cached), or for any frame whose
  pixels are passed as `frame=`, runs at once for that object and returns the frame's new
  `FrameResult` (as `add_new_points_or_box` does). If the object was tracked on that frame,
  it is a correction: memory as when tracking the frame, the new clicks, and the frame's
  earlier logits as a dense prompt; its memory replaces the tracked one (non-conditioning,
  unless `correction_is_conditioning`, SAM2's `add_all_frames_to_correct_as_cond`). A
  correction needs the object's output on the frame, so it must be the frame stepped last.
  If the object was prompted on that frame, the prompt is refined (the earlier logits again
  serve as dense prompt). Otherwise the frame is a new initial frame for the object.
- Clicks replace the frame's earlier clicks of that object unless `clear_old_points=False`.
- `seek` moves the tracking position (and direction) without stepping; memories of frames past
  the new position in the new direction are dropped. A later pass over a frame the object was
  prompted on reuses that frame's output, as the reference does.

Memory is bounded: each object's policy drops what it can no longer select, and the state
keeps only the last output, the outputs of prompted frames and the last frame's features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from surgray.model.sam2.frame_types import FrameFeatures
from surgray.model.sam2.network import SAM2Model
from surgray.tracking.cifs import CIFSConfig
from surgray.tracking.frame_step import ObjectJob, StepSettings, plan_frame, prompt_kind, run_jobs
from surgray.tracking.inputs import (
    autocast_dtype_for,
    check_frame,
    check_frame_idx,
    check_index,
    check_resize,
    encode_frames,
    next_frame_index,
    policy_for_model,
)
from surgray.tracking.memory.base import build_policy
from surgray.tracking.memory.config import MemoryPolicyConfig
from surgray.tracking.postprocess import PostprocessConfig
from surgray.tracking.precision import apply_precision, resolve_precision
from surgray.tracking.prompts import (
    check_box,
    check_mask,
    check_points,
    check_prompt_timing,
    click_prompt,
    mask_prompt,
)
from surgray.tracking.referring import add_text_object, after_frame, forget_object, on_seek
from surgray.tracking.results import FrameResult, frame_result
from surgray.tracking.state import (
    CachedFrame,
    FramePrompt,
    ObjectState,
    VideoState,
)


class Tracker:
    """Streams frames of one or many videos through a SAM2 model (see the module docstring).

    policy_cfg: memory policy (`{"name": "recent" | "prune" | "dlm" | "divemem", ...}`).
    autocast_dtype: "auto" is bf16 on CUDA and off on CPU; "bf16", "fp16", a dtype, or None.
    precision: "fp32" | "bf16" | "fp16" | "int8" | "fast" (`surgray.tracking.precision`);
        when given it decides the autocast dtype and may run an int8 copy of the model.
    resize: how frames reach the model's input size, "bilinear_antialias" (the image
        predictor's and training's way) or "bicubic_uint8" (Meta's video predictor's way).
    compile: wrap the encoder and the per-frame step in `torch.compile` (off by default).
    offload_memory_to_cpu: keep memories in host memory (moved to the device when read).
    correction_is_conditioning: SAM2's `add_all_frames_to_correct_as_cond`.
    keep_logits: put [H, W] logits in each `ObjectResult` (masks are always there).
    """

    def __init__(
        self,
        model: SAM2Model,
        policy_cfg: MemoryPolicyConfig | dict | None = None,
        *,
        postprocess: PostprocessConfig | dict | None = None,
        device: torch.device | str | None = None,
        autocast_dtype: torch.dtype | str | None = "auto",
        compile: bool = False,
        offload_memory_to_cpu: bool = False,
        correction_is_conditioning: bool = False,
        keep_logits: bool = False,
        precision: str | None = None,
        resize: str = "bilinear_antialias",
    ) -> None:
        self.device = torch.device(device) if device is not None else model.device
        self.model = model.to(self.device).eval()
        self.resize = check_resize(resize)
        self.precision = None
        if precision is not None:
            self.precision = resolve_precision(precision, self.device)
            self.model = apply_precision(self.model, self.precision)
            autocast_dtype = self.precision.autocast_dtype
        self.policy_cfg = policy_for_model(policy_cfg, self.model)
        if isinstance(postprocess, dict):
            postprocess = PostprocessConfig(**postprocess)
        self.postprocess = postprocess or PostprocessConfig()
        self.autocast_dtype = autocast_dtype_for(autocast_dtype, self.device)
        self.storage_device = torch.device("cpu") if offload_memory_to_cpu else self.device
        self.correction_is_conditioning = correction_is_conditioning
        self.keep_logits = keep_logits
        self._encode = self.model.encode_images
        self._track = self.model.track_frame
        if compile:
            self._encode = torch.compile(self.model.encode_images)
            self._track = torch.compile(self.model.track_frame, dynamic=True)

    @property
    def hole_area(self) -> int:
        area = self.postprocess.fill_hole_area
        return self.model.cfg.prompting.fill_hole_area if area is None else area

    # ------------------------------------------------------------------ sessions
    def start(
        self,
        video_id: str,
        frame_size: tuple[int, int],
        *,
        num_frames: int | None = None,
        policy_cfg: MemoryPolicyConfig | dict | None = None,
    ) -> VideoState:
        """A new video. `num_frames`, when known, bounds indices and matches SAM2's pointer
        scaling on videos shorter than its pointer window; `policy_cfg` overrides the
        tracker's policy for this video."""
        size = tuple(int(v) for v in frame_size)
        if len(size) != 2 or min(size) <= 0:
            raise ValueError(f"frame_size must be (height, width) > 0, got {frame_size!r}")
        if num_frames is not None and check_index(num_frames, "num_frames") < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        state = VideoState(str(video_id), size, self.device, num_frames=num_frames)
        state.policy_cfg = (
            self.policy_cfg if policy_cfg is None else policy_for_model(policy_cfg, self.model)
        )
        return state

    def close(self, state: VideoState) -> None:
        """Free the video's tensors; the state refuses further use."""
        for obj in state.objects.values():
            obj.policy.reset()
        state.objects.clear()
        state.cached = None
        state.referring = None
        state.closed = True

    def remove_object(self, state: VideoState, obj_id: int) -> None:
        state.check_open()
        state.object(obj_id).policy.reset()
        del state.objects[obj_id]
        forget_object(state, obj_id)

    def reset(self, state: VideoState) -> None:
        """Forget every object and prompt; the video stays open at frame 0, forward."""
        state.check_open()
        for obj in state.objects.values():
            obj.policy.reset()
        state.objects.clear()
        state.cached = None
        state.referring = None
        state.last_frame_idx, state.next_frame_idx, state.reverse = None, 0, False

    def seek(self, state: VideoState, frame_idx: int, reverse: bool = False) -> None:
        """Make `frame_idx` the next frame to step, tracking forward or in `reverse`."""
        state.check_open()
        frame_idx = check_frame_idx(state, frame_idx)
        edge = frame_idx + 1 if reverse else frame_idx - 1
        for obj in state.objects.values():
            obj.policy.clear_after(edge, reverse)
        on_seek(state)
        state.next_frame_idx, state.reverse = frame_idx, reverse

    # ------------------------------------------------------------------ prompts
    def add_points(
        self,
        state: VideoState,
        obj_id: int,
        frame_idx: int,
        points: Any,
        labels: Any,
        label: str | None = None,
        *,
        clear_old_points: bool = True,
        normalized: bool = False,
        frame: np.ndarray | None = None,
    ) -> FrameResult | None:
        """Clicks ((x, y) pixels, labels 1/0) for an object on a frame; see the module doc."""
        state.check_open()
        xy, lab = check_points(points, labels, state.frame_size, normalized)

        def build(previous: FramePrompt | None) -> FramePrompt:
            keep = None if clear_old_points else previous
            return click_prompt(xy, lab, None, state.frame_size, self.model.image_size, keep)

        return self._prompt(state, obj_id, frame_idx, build, label, frame)

    def add_box(
        self,
        state: VideoState,
        obj_id: int,
        frame_idx: int,
        box: Any,
        label: str | None = None,
        *,
        points: Any = None,
        labels: Any = None,
        normalized: bool = False,
        frame: np.ndarray | None = None,
    ) -> FrameResult | None:
        """A box (x0, y0, x1, y1), optionally with clicks; replaces the frame's clicks."""
        state.check_open()
        corners = check_box(box, state.frame_size, normalized)
        xy = lab = None
        if points is not None or labels is not None:
            xy, lab = check_points(points, labels, state.frame_size, normalized)

        def build(previous: FramePrompt | None) -> FramePrompt:
            return click_prompt(xy, lab, corners, state.frame_size, self.model.image_size)

        return self._prompt(state, obj_id, frame_idx, build, label, frame)

    def add_mask(
        self,
        state: VideoState,
        obj_id: int,
        frame_idx: int,
        mask: Any,
        label: str | None = None,
        *,
        frame: np.ndarray | None = None,
    ) -> FrameResult | None:
        """A [H, W] bool mask of the object on a frame (replaces the frame's clicks)."""
        state.check_open()
        checked = check_mask(mask, state.frame_size)
        prompt = mask_prompt(checked, self.model.image_size)
        return self._prompt(state, obj_id, frame_idx, lambda _: prompt, label, frame)

    def add_text(
        self,
        state: VideoState,
        obj_id: int,
        text: str,
        label: str | None = None,
        *,
        cifs: CIFSConfig | dict | None = None,
    ) -> None:
        """A referring expression as a new object (ReSurgSAM2 models only).

        The object searches from the next frame stepped: each frame is segmented from the text
        alone (those masks are its results) until credible initial frame selection picks a
        frame, which becomes its conditioning memory; it is tracked from the next frame on,
        and searches again when lost for `cifs.lost_patience` frames (results report the
        `state`). `label` defaults to the text; `cifs` overrides the model's
        `ReferringConfig.cifs` for this object. See `surgray.tracking.referring`.
        """
        state.check_open()
        add_text_object(self.model, state, obj_id, text, label, cifs)

    def _prompt(self, state, obj_id, frame_idx, build, label, frame) -> FrameResult | None:
        obj_id = check_index(obj_id, "obj_id")
        frame_idx = check_frame_idx(state, frame_idx)
        obj = state.objects.get(obj_id)
        is_new = obj is None
        if is_new:
            obj = ObjectState(obj_id, label, build_policy(state.policy_cfg, state.num_frames))
        record = build(obj.prompts.get(frame_idx))
        features = self._features_for_prompt(state, frame_idx, frame)
        kind, conditioning = prompt_kind(obj, frame_idx, self.correction_is_conditioning)
        check_prompt_timing(state, obj, frame_idx, kind, has_features=features is not None)
        if label is not None:
            obj.label = label
        if is_new:
            state.objects[obj_id] = obj
        obj.prompts[frame_idx] = record
        if features is None:
            return None
        job = ObjectJob(obj, kind, record, conditioning)
        with self._inference():
            run_jobs(self.model, self._track, features, frame_idx, [job], self._settings(state))
            return frame_result(state, frame_idx, self.postprocess, self.keep_logits)

    def _features_for_prompt(
        self, state: VideoState, frame_idx: int, frame: np.ndarray | None
    ) -> FrameFeatures | None:
        if frame is not None:
            image = check_frame(state, frame)
            with self._inference():
                features = encode_frames(
                    self.model, self._encode, [image], self.device, self.resize
                )[0]
            state.cached = CachedFrame(frame_idx, features)
            return features
        if state.cached is not None and state.cached.frame_idx == frame_idx:
            return state.cached.features
        return None

    # ------------------------------------------------------------------ stepping
    def step(self, state: VideoState, frame: np.ndarray) -> FrameResult:
        """Track the next frame (HxWx3 uint8 RGB, the video's size) and return its result."""
        return self.step_many([state], [frame])[0]

    def step_many(
        self, states: Sequence[VideoState], frames: Sequence[np.ndarray]
    ) -> list[FrameResult]:
        """One frame of each of K videos: one batched image-encoder pass, then each video's
        objects in one batched tracking pass. Everything is checked before anything runs."""
        if len(states) != len(frames):
            raise ValueError(f"{len(states)} states but {len(frames)} frames")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("a video state appears twice in step_many; step it twice instead")
        indices, images = [], []
        for state, frame in zip(states, frames):
            state.check_open()
            indices.append(next_frame_index(state))
            images.append(check_frame(state, frame))
        if not states:
            return []
        with self._inference():
            features = encode_frames(self.model, self._encode, images, self.device, self.resize)
            return [
                self._advance(state, index, feats)
                for state, index, feats in zip(states, indices, features)
            ]

    def propagate(
        self,
        state: VideoState,
        frames: Iterable[Any],
        reverse: bool = False,
        start_frame_idx: int | None = None,
    ) -> Iterator[FrameResult]:
        """Step every frame of `frames` (arrays, or objects with an `.image` such as
        `surgray.io.Frame`) in order. With `start_frame_idx`, or when the direction changes,
        the tracker first seeks there: the first frame given is that frame."""
        state.check_open()
        if start_frame_idx is None and reverse != state.reverse:
            if not reverse:
                raise ValueError("give start_frame_idx to switch back to forward tracking")
            if state.num_frames is None:
                raise ValueError("reverse tracking needs start_frame_idx (the first frame's index)")
            start_frame_idx = state.num_frames - 1
        if start_frame_idx is not None:
            self.seek(state, start_frame_idx, reverse)
        return (self.step(state, getattr(frame, "image", frame)) for frame in frames)

    def result(self, state: VideoState, frame_idx: int) -> FrameResult:
        """What the state still holds about a frame (last stepped or prompted frames)."""
        state.check_open()
        with self._inference():
            return frame_result(state, frame_idx, self.postprocess, self.keep_logits)

    def _advance(self, state: VideoState, frame_idx: int, features: FrameFeatures) -> FrameResult:
        state.cached = CachedFrame(frame_idx, features)
        objects = list(state.objects.values())
        jobs, reused = plan_frame(objects, frame_idx, self.correction_is_conditioning)
        run_jobs(self.model, self._track, features, frame_idx, jobs, self._settings(state))
        for obj in reused:
            obj.last = obj.cond_outputs[frame_idx]
        for obj in [job.obj for job in jobs] + reused:
            obj.tracked.add(frame_idx)
        after_frame(self.model, state, frame_idx, features, self._settings(state))
        state.last_frame_idx = frame_idx
        state.frames_stepped += 1
        state.next_frame_idx = frame_idx - 1 if state.reverse else frame_idx + 1
        return frame_result(state, frame_idx, self.postprocess, self.keep_logits)

    # ------------------------------------------------------------------ helpers
    def _settings(self, state: VideoState) -> StepSettings:
        return StepSettings(
            hole_area=self.hole_area,
            sprinkle_area=self.postprocess.remove_sprinkle_area,
            storage_device=self.storage_device,
            num_frames=state.num_frames,
            reverse=state.reverse,
        )

    def _inference(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.autocast_dtype is not None:
            stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast_dtype))
        return stack
