"""A facade with the verbs of Meta's `SAM2VideoPredictor`, for users switching from it.

    predictor = VideoPredictor(model)
    state = predictor.init_state("s3://bucket/case.mp4")      # or a frame folder / local path
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=[[210, 350]], labels=[1])
    for frame_idx, obj_ids, video_res_masks in predictor.propagate_in_video(state):
        ...                                                   # logits [N, 1, H, W], like Meta's

Unlike the reference it never loads the video: frames are decoded when a pass needs them
(`surgray.io.VideoReader`; reverse passes read chunks forward and walk them backwards), and the
tensors it holds are the streaming tracker's bounded state. Per-frame results are kept as
COCO RLE (`masks(state, frame_idx)`): measured 4.6 KB per 480x640 frame for two objects of a
random-weight model (ragged masks), about 1 KB for smooth shapes, against 300 KB per object
as bool masks.

Where it differs from the reference, on purpose:
- A correction click on a frame already tracked is applied on top of the tracker's memory at
  that frame: when the tracker has moved on, the pass that tracked the frame is replayed up
  to it first (memories are not kept for every frame). The replay gives the reference's
  memory when that pass was the latest over the frames it read; after a pass the other way
  over them, those frames' memories are the newer pass's (the reference mixes both). The
  next `propagate_in_video` without
  `start_frame_idx` then continues right after the corrected frame, keeping the correction
  (the reference restarts at the first prompt and recomputes the corrected frame, which loses
  a correction that is not a conditioning frame).
- Otherwise a default propagation starts at the earliest prompted frame, as in the reference.
- `remove_object` returns no re-rendered frames; `offload_*` and `async_loading_frames` are
  accepted and ignored (nothing is preloaded).

Frames reach the model's square input the way the reference's video predictor loads a JPEG
folder: PIL bicubic on 8-bit pixels (`resize="bicubic_uint8"`, the default here). Surgray's
`Tracker`, the annotate job and Serve default to `"bilinear_antialias"` (the reference's
image predictor and our training); pass `resize=` to choose. On non-square frames the two
differ by up to 12 grey levels at the input and flip mask pixels at the borders.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from surgray.io.storage import LOCAL, Storage
from surgray.model.sam2.heads import NO_OBJECT_LOGIT
from surgray.model.sam2.network import SAM2Model
from surgray.tracking.results import FrameResult
from surgray.tracking.state import VideoState
from surgray.tracking.tracker import Tracker

# Logit standing for a stored (RLE) mask pixel when no fresh logits exist for it.
STORED_MASK_LOGIT = 10.0


@dataclass
class TrackingPass:
    """Frames [first .. last] stepped in one direction, starting at `first`."""

    first: int
    last: int
    reverse: bool

    def covers(self, frame_idx: int) -> bool:
        lo, hi = sorted((self.first, self.last))
        return lo <= frame_idx <= hi


@dataclass
class PredictorState:
    """What `init_state` returns: the video, the tracker state and RLE results per frame."""

    uri: str
    storage: Storage
    num_frames: int
    video_height: int
    video_width: int
    video: VideoState
    masks: dict[int, dict[int, dict]] = field(default_factory=dict)  # frame -> obj -> RLE
    passes: list[TrackingPass] = field(default_factory=list)
    resume_after: tuple[int, bool] | None = None  # (corrected frame, reverse)

    @property
    def obj_ids(self) -> list[int]:
        return self.video.obj_ids

    def rle_bytes(self) -> int:
        """Bytes of the RLE strings held for all frames."""
        return sum(len(r["counts"]) for frame in self.masks.values() for r in frame.values())


class VideoPredictor:
    """SAM2-style predictor over `Tracker` (see the module docstring)."""

    def __init__(
        self,
        model: SAM2Model,
        policy_cfg: Any = None,
        *,
        reverse_chunk: int = 32,
        resize: str = "bicubic_uint8",
        **tracker_options: Any,
    ) -> None:
        self.tracker = Tracker(
            model, policy_cfg, keep_logits=True, resize=resize, **tracker_options
        )
        self.reverse_chunk = reverse_chunk

    # ------------------------------------------------------------------ state
    def init_state(
        self,
        video_path: str | os.PathLike[str],
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
        storage: Storage = LOCAL,
    ) -> PredictorState:
        from surgray.io.video import probe

        uri = os.fspath(video_path)
        info = probe(uri, storage=storage, count_exact=True)
        if info.frame_count < 1:
            raise ValueError(f"{uri}: the video has no frames")
        video = self.tracker.start(uri, (info.height, info.width), num_frames=info.frame_count)
        return PredictorState(uri, storage, info.frame_count, info.height, info.width, video)

    def reset_state(self, state: PredictorState) -> None:
        self.tracker.reset(state.video)
        state.masks.clear()
        state.passes.clear()
        state.resume_after = None

    def remove_object(
        self, state: PredictorState, obj_id: int, strict: bool = False, need_output: bool = True
    ) -> tuple[list[int], list]:
        if obj_id not in state.video.objects:
            if strict:
                raise RuntimeError(f"cannot remove object {obj_id}: objects are {state.obj_ids}")
            return state.obj_ids, []
        self.tracker.remove_object(state.video, obj_id)
        for frame in state.masks.values():
            frame.pop(obj_id, None)
        return state.obj_ids, []

    def masks(self, state: PredictorState, frame_idx: int) -> dict[int, np.ndarray]:
        """Stored masks of a frame: obj_id -> [H, W] bool."""
        from surgray.io.masks import decode_rle

        stored = state.masks.get(frame_idx, {})
        if not stored:
            return {}
        planes = decode_rle(list(stored.values()))
        return dict(zip(stored, planes))

    # ------------------------------------------------------------------ prompts
    def add_new_points_or_box(
        self,
        state: PredictorState,
        frame_idx: int,
        obj_id: int,
        points: Any = None,
        labels: Any = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: Any = None,
    ) -> tuple[int, list[int], torch.Tensor]:
        """Clicks and/or a box; returns (frame_idx, obj_ids, [N, 1, H, W] logits)."""
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be provided together")
        if points is None and box is None:
            raise ValueError("at least one of points or box must be provided as input")
        frame = self._prepare_prompt(state, frame_idx, obj_id)
        normalized = not normalize_coords
        if box is not None:
            if not clear_old_points:
                raise ValueError("cannot add a box without clearing old points (box goes first)")
            result = self.tracker.add_box(
                state.video, obj_id, frame_idx, box, points=points, labels=labels,
                normalized=normalized, frame=frame,
            )  # fmt: skip
        else:
            result = self.tracker.add_points(
                state.video, obj_id, frame_idx, points, labels,
                clear_old_points=clear_old_points, normalized=normalized, frame=frame,
            )  # fmt: skip
        return self._after_prompt(state, frame_idx, obj_id, result)

    def add_new_mask(
        self, state: PredictorState, frame_idx: int, obj_id: int, mask: Any
    ) -> tuple[int, list[int], torch.Tensor]:
        frame = self._prepare_prompt(state, frame_idx, obj_id)
        result = self.tracker.add_mask(state.video, obj_id, frame_idx, mask, frame=frame)
        return self._after_prompt(state, frame_idx, obj_id, result)

    def _prepare_prompt(
        self, state: PredictorState, frame_idx: int, obj_id: int
    ) -> np.ndarray | None:
        """The frame's pixels for the tracker (None when its features are cached); replays
        the pass that tracked the frame when a correction needs the memory at it."""
        video = state.video
        if not 0 <= frame_idx < state.num_frames:
            raise ValueError(f"frame_idx {frame_idx} outside the video's {state.num_frames} frames")
        obj = video.objects.get(obj_id)
        needs_replay = (
            obj is not None
            and frame_idx in obj.tracked
            and frame_idx not in obj.cond_outputs
            and obj.output_on(frame_idx) is None
        )
        if needs_replay:
            self._replay_to(state, frame_idx)
        if video.cached is not None and video.cached.frame_idx == frame_idx:
            return None
        return self._read_frame(state, frame_idx)

    def _after_prompt(
        self, state: PredictorState, frame_idx: int, obj_id: int, result: FrameResult
    ) -> tuple[int, list[int], torch.Tensor]:
        self._store(state, result)
        if frame_idx not in state.video.objects[obj_id].cond_outputs:
            # A correction (not a conditioning frame): the next default pass resumes after it.
            state.resume_after = (frame_idx, _pass_direction(state, frame_idx))
        return frame_idx, state.obj_ids, self._video_res(state, result)

    def _replay_to(self, state: PredictorState, frame_idx: int) -> None:
        covering = [p for p in state.passes if p.covers(frame_idx)]
        if not covering:
            raise RuntimeError(f"frame {frame_idx} was tracked but no recorded pass covers it")
        last = covering[-1]
        self.tracker.seek(state.video, last.first, last.reverse)
        # Only the memory is rebuilt: the stored results stay what the user was shown.
        for frame in self._frames(state, last.first, frame_idx, last.reverse):
            self.tracker.step(state.video, frame)

    # ------------------------------------------------------------------ propagation
    def propagate_in_video(
        self,
        state: PredictorState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[int], torch.Tensor]]:
        """Track through the video; yields (frame_idx, obj_ids, [N, 1, H, W] logits)."""
        start = self._start_frame(state, start_frame_idx, reverse)
        count = state.num_frames if max_frame_num_to_track is None else max_frame_num_to_track
        if reverse:
            end = max(start - count, 0)
            if start == 0:
                return iter(())
        else:
            end = min(start + count, state.num_frames - 1)
        state.resume_after = None
        self.tracker.seek(state.video, start, reverse)
        record = TrackingPass(start, start, reverse)
        state.passes.append(record)
        return self._run_pass(state, record, start, end, reverse)

    def _run_pass(self, state, record, start, end, reverse):
        for frame in self._frames(state, start, end, reverse):
            result = self.tracker.step(state.video, frame)
            record.last = result.frame_idx
            self._store(state, result)
            yield result.frame_idx, state.obj_ids, self._video_res(state, result)

    def _start_frame(self, state: PredictorState, start: int | None, reverse: bool) -> int:
        objects = state.video.objects
        if not objects:
            raise RuntimeError(
                "No input points or masks are provided for any object; add inputs first"
            )
        for obj in objects.values():
            if not obj.cond_outputs:
                raise RuntimeError(
                    f"No input points or masks are provided for object id {obj.obj_id}"
                )
        if start is not None:
            if not 0 <= start < state.num_frames:
                raise ValueError(
                    f"start_frame_idx {start} outside the video's {state.num_frames} frames"
                )
            return start
        if state.resume_after is not None and state.resume_after[1] == reverse:
            corrected = state.resume_after[0]
            nxt = corrected - 1 if reverse else corrected + 1
            if 0 <= nxt < state.num_frames:
                return nxt
        return min(t for obj in objects.values() for t in obj.cond_outputs)

    # ------------------------------------------------------------------ frames and results
    def _read_frame(self, state: PredictorState, frame_idx: int) -> np.ndarray:
        return next(iter(self._frames(state, frame_idx, frame_idx, False)))

    def _frames(
        self, state: PredictorState, start: int, end: int, reverse: bool
    ) -> Iterator[np.ndarray]:
        """Frames start..end inclusive, in tracking order (reverse: start >= end)."""
        from surgray.io.video import VideoReader

        def read(lo: int, hi: int) -> Iterator[np.ndarray]:
            with VideoReader(
                state.uri, storage=state.storage, start_frame=lo, end_frame=hi + 1
            ) as reader:
                for frame in reader:
                    yield frame.image

        if not reverse:
            yield from read(start, end)
            return
        hi = start
        while hi >= end:
            lo = max(end, hi - self.reverse_chunk + 1)
            yield from reversed(list(read(lo, hi)))
            hi = lo - 1

    def _store(self, state: PredictorState, result: FrameResult) -> None:
        from surgray.io.masks import encode_rle

        if not result.objects:
            return
        rles = encode_rle(result.masks())
        stored = state.masks.setdefault(result.frame_idx, {})
        for obj, rle in zip(result.objects, rles):
            stored[obj.obj_id] = rle

    def _video_res(self, state: PredictorState, result: FrameResult) -> torch.Tensor:
        """[N, 1, H, W] logits in `obj_ids` order: fresh logits where the result has them,
        else the stored mask as +-STORED_MASK_LOGIT, else the reference's no-object value."""
        height, width = state.video_height, state.video_width
        out = torch.full((len(state.obj_ids), 1, height, width), NO_OBJECT_LOGIT)
        fresh = {o.obj_id: o for o in result.objects}
        stored = None
        for i, obj_id in enumerate(state.obj_ids):
            if obj_id in fresh and fresh[obj_id].logits is not None:
                out[i, 0] = fresh[obj_id].logits
                continue
            if stored is None:
                stored = self.masks(state, result.frame_idx)
            if obj_id in stored:
                plane = torch.from_numpy(stored[obj_id])
                out[i, 0] = torch.where(plane, STORED_MASK_LOGIT, -STORED_MASK_LOGIT)
        return out


def _pass_direction(state: PredictorState, frame_idx: int) -> bool:
    covering = [p for p in state.passes if p.covers(frame_idx)]
    return covering[-1].reverse if covering else state.video.reverse
