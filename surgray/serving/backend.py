"""What the service needs from a model: the contract the tracker adapter implements.

The serving layer owns sessions, limits, auth, decoding and mask encoding; a backend owns the
model and per-session tracker state (`StateT`, opaque here). Backends return plain masks
(`TrackedFrame`); the service turns them into RLE/PNG results, so every backend's output is
encoded the same way. Backend methods may raise `ApiError` subclasses (e.g. 422 for a mask
prompt whose size differs from the frames) and those reach the client unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from surgray.serving.schemas import (
    CreateSessionRequest,
    ModelInfo,
    ObjectState,
    PromptsRequest,
    SegmentRequest,
)

StateT = TypeVar("StateT")


@dataclass(frozen=True)
class TrackedObject:
    obj_id: int
    state: ObjectState
    score: float
    mask: np.ndarray  # [H, W] bool, the frame's size
    label: str | None = None
    predicted_iou: float | None = None


@dataclass(frozen=True)
class TrackedFrame:
    frame_index: int
    height: int
    width: int
    objects: list[TrackedObject] = field(default_factory=list)


@dataclass(frozen=True)
class SessionSummary:
    """What `SessionInfo` reports about a session's contents."""

    model: str
    expressions: list[str] = field(default_factory=list)
    obj_ids: list[int] = field(default_factory=list)


class ServingBackend(Protocol[StateT]):
    def models(self) -> list[ModelInfo]:
        """The server-side registry, as clients see it."""
        ...

    def open_session(self, session_id: str, request: CreateSessionRequest) -> StateT:
        """Tracker state for a new session; prompts apply to the next frame unless indexed."""
        ...

    def track_frame(self, state: StateT, image: np.ndarray) -> TrackedFrame:
        """Consume the session's next frame (RGB uint8 [H, W, 3]) and return every object."""
        ...

    def add_prompts(self, state: StateT, request: PromptsRequest) -> None:
        """Add objects or correct tracked ones."""
        ...

    def describe(self, state: StateT) -> SessionSummary: ...

    def close_session(self, state: StateT) -> None:
        """Free the state (tracker memory); called once per session."""
        ...

    def segment_video(self, video: bytes, request: SegmentRequest) -> Iterator[TrackedFrame]:
        """Frames of a short uploaded video, in order, segmented by the request's expressions."""
        ...
