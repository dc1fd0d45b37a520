"""`TrackerBackend`: the serving contract (`backend.ServingBackend`) over the streaming `Tracker`.

One `TrackerSession` per HTTP session. The frame size is only known when the first frame
arrives, so prompts given before it wait in the session (checked as far as they can be: ids,
masks' own sizes) and go to the tracker, for frame 0, together with that frame. After that a
prompt names the frame processed last (a correction, run at once on its cached features) or
the next frame (the default; consumed when that frame is stepped). Frames of all sessions go
through one `MicroBatcher`, so concurrent sessions share `Tracker.step_many` calls (one
batched image-encoder pass).

Client mistakes are 422s that name what is wrong and leave the session usable (prompts are
checked by `session_prompts` before anything changes):
`frame_size_mismatch`, `invalid_prompt`, `invalid_frame_index`, `unknown_object` (an id the
session does not track, given only background clicks, which cannot start an object), and
`text_prompts_unavailable` while the deployed model has no text encoder / referring fusion.

Text expressions (ReSurgSAM2 models) become objects with ids the backend picks (the lowest
free ones, after the prompted objects of the same request). `SessionInfo` lists them first:
`obj_ids[i]` is the object of `expressions[i]`, and each result of a text object carries its
expression as `label`. A text object is "searching" until credible initial frame selection
picks a frame, then "tracking", and "lost" while unseen. `segment_video` runs the same
tracker over an uploaded clip, one frame at a time through the shared batcher.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from surgray.serving.backend import SessionSummary, TrackedFrame, TrackedObject
from surgray.serving.batching import MicroBatcher
from surgray.serving.config import LimitsConfig, ServeConfig
from surgray.serving.errors import Unprocessable
from surgray.serving.model_loading import LoadedModel, load_served_model
from surgray.serving.schemas import CreateSessionRequest, ModelInfo, PromptsRequest, SegmentRequest
from surgray.serving.session_prompts import (
    CheckedPrompt,
    FrameSizeMismatch,
    InvalidPrompt,
    TextPromptsUnavailable,
    TrackerSession,
    assign_text_ids,
    check_prompts,
    frame_problem,
)

logger = logging.getLogger(__name__)


class InvalidVideo(Unprocessable):
    code = "invalid_video"


class VideoTooLarge(Unprocessable):
    code = "video_too_large"


class FrameLimit(Unprocessable):
    code = "frame_limit"  # the same code the service's own frame-count check reports


def _sigmoid(logit: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(min(logit, 60.0), -60.0)))


def _object_state(obj: Any) -> str:
    """A text object's CIFS phase; a tracked object (either kind) unseen on a frame is lost."""
    if obj.state != "tracking":
        return obj.state
    return "tracking" if obj.present else "lost"


class TrackerBackend:
    """Sessions over one loaded model; frames of concurrent sessions are stepped together."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch_size: int = 4,
        wait_timeout_s: float = 0.005,
        limits: LimitsConfig | None = None,
    ):
        self.loaded = loaded
        self.tracker = loaded.tracker
        self.limits = limits or LimitsConfig()
        self.batcher: MicroBatcher[tuple[Any, np.ndarray], Any] = MicroBatcher(
            self._step_batch,
            max_batch_size=max_batch_size,
            wait_timeout_s=wait_timeout_s,
            name=f"frames-{loaded.served.name}",
        )

    @classmethod
    def from_config(cls, config: ServeConfig, *, device: str | None = None) -> TrackerBackend:
        loaded = load_served_model(config.model, device=device, storage=config.storage.build())
        return cls(
            loaded,
            max_batch_size=config.batching.max_batch_size,
            wait_timeout_s=config.batching.wait_timeout_s,
            limits=config.limits,
        )

    # -- registry -------------------------------------------------------------------------------
    @property
    def text_prompts(self) -> bool:
        return self.loaded.text_prompts

    def models(self) -> list[ModelInfo]:
        return [self.loaded.info(text_prompts=self.text_prompts)]

    def _refuse_text(self, expressions: list[str]) -> None:
        if expressions and not self.text_prompts:
            name = self.loaded.served.name
            raise TextPromptsUnavailable(
                f"model {name!r} has no text encoder and referring fusion deployed, so text "
                f"expressions ({len(expressions)} given) cannot be tracked on this server; "
                "prompt objects with points, a box or a mask instead"
            )

    # -- sessions -------------------------------------------------------------------------------
    def open_session(self, session_id: str, request: CreateSessionRequest) -> TrackerSession:
        self._refuse_text(request.expressions)
        session = TrackerSession(session_id, request.model or self.loaded.served.name)
        prompts = check_prompts(session, request.objects)
        texts = assign_text_ids(session, request.expressions, prompts)
        for prompt in prompts:
            session.waiting[prompt.obj_id] = prompt
        session.texts.update(texts)  # added to the tracker with the first frame
        return session

    def describe(self, state: TrackerSession) -> SessionSummary:
        return SessionSummary(
            model=state.model, expressions=state.expressions, obj_ids=state.obj_ids
        )

    def close_session(self, state: TrackerSession) -> None:
        if state.video is not None:
            self.tracker.close(state.video)
        state.waiting.clear()
        state.closed = True

    def close(self) -> None:
        """Stop the frame batcher (replica shutdown)."""
        self.batcher.close()

    def add_prompts(self, state: TrackerSession, request: PromptsRequest) -> None:
        self._refuse_text(request.expressions)
        prompts = check_prompts(state, request.objects)
        texts = assign_text_ids(state, request.expressions, prompts)
        if state.video is None:
            for prompt in prompts:
                state.waiting[prompt.obj_id] = prompt
            state.texts.update(texts)
            return
        for prompt in prompts:
            self._apply(state.video, prompt)
        for obj_id, text in texts.items():
            self._add_text(state.video, obj_id, text)
            state.texts[obj_id] = text

    def _add_text(self, video: Any, obj_id: int, text: str) -> None:
        try:
            self.tracker.add_text(video, obj_id, text)
        except (TypeError, ValueError) as exc:
            raise InvalidPrompt(f"expression {text!r} (object {obj_id}): {exc}") from None

    # -- frames ---------------------------------------------------------------------------------
    def track_frame(self, state: TrackerSession, image: np.ndarray) -> TrackedFrame:
        height, width = image.shape[:2]
        if state.video is None:
            return self._first_frame(state, image)
        expected = tuple(state.video.frame_size)
        if (height, width) != expected:
            raise FrameSizeMismatch(
                f"the frame is {width}x{height} (width x height) but this session's frames are "
                f"{expected[1]}x{expected[0]}; send every frame of a session at one size"
            )
        result = self.batcher.submit((state.video, image))
        return self._tracked(result, height, width)

    def _first_frame(self, state: TrackerSession, image: np.ndarray) -> TrackedFrame:
        height, width = image.shape[:2]
        implied = state.mask_size()
        if implied is not None and implied != (height, width):
            raise FrameSizeMismatch(
                f"the frame is {width}x{height} (width x height) but this session's mask "
                f"prompts are {implied[1]}x{implied[0]}; send frames of the masks' size"
            )
        problems = {
            obj_id: problem
            for obj_id, prompt in state.waiting.items()
            if (problem := frame_problem(prompt, (height, width))) is not None
        }
        if problems:
            for obj_id in problems:
                del state.waiting[obj_id]
            detail = "; ".join(f"object {obj_id}: {text}" for obj_id, text in problems.items())
            raise InvalidPrompt(
                f"prompts do not fit the first frame ({width}x{height}): {detail}. Those "
                "objects were dropped and the frame was not tracked: send it again, and the "
                "objects, corrected, with POST .../prompts"
            )
        video = self.tracker.start(state.session_id, (height, width))
        try:
            for prompt in state.waiting.values():
                self._apply(video, prompt)
            for obj_id, text in state.texts.items():
                self._add_text(video, obj_id, text)
            result = self.batcher.submit((video, image))
        except BaseException:
            self.tracker.close(video)  # the next attempt starts clean from the waiting prompts
            raise
        state.video = video
        state.waiting.clear()
        return self._tracked(result, height, width)

    def _step_batch(self, items: list[tuple[Any, np.ndarray]]) -> list[Any]:
        return self.tracker.step_many([video for video, _ in items], [image for _, image in items])

    @staticmethod
    def _tracked(result: Any, height: int, width: int) -> TrackedFrame:
        objects = [
            TrackedObject(
                obj_id=obj.obj_id,
                state=_object_state(obj),
                score=_sigmoid(obj.object_score),
                mask=obj.mask,
                label=obj.label,
                predicted_iou=obj.predicted_iou,
            )
            for obj in result.objects
        ]
        return TrackedFrame(result.frame_idx, height, width, objects)

    # -- prompts --------------------------------------------------------------------------------
    def _apply(self, video: Any, prompt: CheckedPrompt) -> None:
        frame_idx = video.next_frame_idx if prompt.frame_idx is None else prompt.frame_idx
        try:
            if prompt.mask is not None:
                self.tracker.add_mask(video, prompt.obj_id, frame_idx, prompt.mask, prompt.label)
            elif prompt.box is not None:
                self.tracker.add_box(
                    video,
                    prompt.obj_id,
                    frame_idx,
                    prompt.box,
                    prompt.label,
                    points=prompt.points,
                    labels=prompt.point_labels,
                )
            else:
                self.tracker.add_points(
                    video,
                    prompt.obj_id,
                    frame_idx,
                    prompt.points,
                    prompt.point_labels,
                    prompt.label,
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidPrompt(f"object {prompt.obj_id}: {exc}") from None

    # -- one-shot video -------------------------------------------------------------------------
    def segment_video(self, video: bytes, request: SegmentRequest) -> Iterator[TrackedFrame]:
        """Frames of the clip, decoded and tracked lazily (the caller drives the iterator);
        the refusal for a model without text support is raised here, before any decoding."""
        self._refuse_text(request.expressions)
        if not video:
            raise InvalidVideo("the video is empty")
        return self._segment_frames(video, list(request.expressions))

    def _segment_frames(self, data: bytes, expressions: list[str]) -> Iterator[TrackedFrame]:
        import os
        import tempfile

        from surgray.io.errors import VideoError
        from surgray.io.video import VideoReader

        limit = self.limits.max_video_frames
        # PyAV reads containers from a path; the file lives only while the clip is segmented.
        handle, path = tempfile.mkstemp(prefix="surgray-segment-", suffix=".video")
        state = None
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            # One frame past the limit, to tell "exactly the limit" from "too long".
            reader = VideoReader(path, end_frame=limit + 1, prefetch=4)
            with reader:
                frames = iter(reader)
                while True:
                    try:
                        frame = next(frames, None)
                    except VideoError as exc:
                        message = str(exc).replace(path, "the uploaded video")
                        raise InvalidVideo(f"cannot decode the video: {message}") from None
                    if frame is None:
                        break
                    if state is None:
                        state = self._start_clip(frame.image, expressions)
                    elif state.next_frame_idx >= limit:
                        raise FrameLimit(
                            f"the video has more than {limit} frames; send shorter clips or "
                            "use a session"
                        )
                    height, width = frame.image.shape[:2]
                    result = self.batcher.submit((state, frame.image))
                    yield self._tracked(result, height, width)
            if state is None:
                raise InvalidVideo("the video holds no frames")
        finally:
            if state is not None:
                self.tracker.close(state)
            os.unlink(path)

    def _start_clip(self, image: np.ndarray, expressions: list[str]) -> Any:
        height, width = image.shape[:2]
        side = self.limits.max_image_side
        if max(height, width) > side:
            raise VideoTooLarge(
                f"the video's frames are {width}x{height}; at most {side} pixels a side"
            )
        state = self.tracker.start(f"segment-{id(image):x}", (height, width))
        try:
            for obj_id, text in enumerate(expressions, start=1):
                self._add_text(state, obj_id, text)
        except BaseException:
            self.tracker.close(state)
            raise
        return state
