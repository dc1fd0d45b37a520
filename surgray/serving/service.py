"""The serving logic, free of HTTP and Ray: sessions, limits, decoding, result encoding.

`SegmentationService` methods take and return the API's pydantic models (and raw upload bytes),
so the FastAPI app in `http_app.py` is a thin mapping, and a Ray Serve deployment can call the
same methods through a handle (e.g. a gateway deployment forwarding to tracker replicas).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Generic

from surgray.serving.backend import ServingBackend, StateT, TrackedFrame
from surgray.serving.config import ServeConfig
from surgray.serving.errors import ApiError, Unprocessable, UnsupportedMediaType
from surgray.serving.images import EmptyBody, decode_frame
from surgray.serving.request_scope import RequestScope, check
from surgray.serving.results import encode_objects
from surgray.serving.routing import ReplicaIdentity, SessionIdCodec
from surgray.serving.schemas import (
    CreateSessionRequest,
    FrameResult,
    HealthInfo,
    ModelList,
    PromptsRequest,
    SegmentEndLine,
    SegmentErrorLine,
    SegmentFrameLine,
    SegmentRequest,
    SessionInfo,
    ndjson_line,
)
from surgray.serving.session_prompts import check_mask_bounds
from surgray.serving.sessions import EndReason, SessionEntry, SessionLimits, SessionStore
from surgray.serving.video_header import check_video_header

logger = logging.getLogger(__name__)
VIDEO_MEDIA_TYPES = (
    "video/mp4",
    "video/quicktime",
    "video/webm",
    "video/x-matroska",
    "video/x-msvideo",
    "video/mpeg",
)


class UnknownModel(Unprocessable):
    code = "unknown_model"


class TooManyObjects(Unprocessable):
    code = "too_many_objects"


class SegmentationService(Generic[StateT]):
    def __init__(
        self,
        backend: ServingBackend[StateT],
        config: ServeConfig,
        *,
        identity: ReplicaIdentity | None = None,
        codec: SessionIdCodec | None = None,
        clock=time.monotonic,
    ) -> None:
        self.backend = backend
        self.config = config
        self.identity = identity or ReplicaIdentity.create()
        limits = SessionLimits(
            max_sessions=config.sessions.max_per_replica,
            idle_timeout_s=config.sessions.idle_timeout_s,
            max_frames=config.sessions.max_frames,
            tombstones=config.sessions.tombstones,
        )
        self.store: SessionStore[StateT] = SessionStore(
            limits,
            identity=self.identity,
            codec=codec or SessionIdCodec.from_env(config.sessions.id_key_env),
            clock=clock,
            on_close=self._close_state,
        )

    def _close_state(self, session_id: str, state: StateT, reason: EndReason) -> None:
        self.backend.close_session(state)

    # -- registry ---------------------------------------------------------------------------
    def health(self) -> HealthInfo:
        return HealthInfo()

    def models(self) -> ModelList:
        return ModelList(models=self.backend.models())

    def resolve_model(self, name: str | None) -> str:
        registry = self.config.model_registry()
        chosen = self.config.model.name if name is None else name
        if chosen not in registry:
            raise UnknownModel(f"unknown model {chosen!r}; available: {sorted(registry)}")
        return chosen

    # -- sessions ---------------------------------------------------------------------------
    def create_session(
        self, request: CreateSessionRequest, scope: RequestScope | None = None
    ) -> SessionInfo:
        """A new session. Everything that can be refused is refused before a slot is taken;
        a session whose request is cancelled (client gone, deadline passed) is deleted at once,
        also when the cancel comes after this returned (`RequestScope.on_cancel`)."""
        self.store.maybe_sweep()
        model = self.resolve_model(request.model)
        wanted = len(request.objects) + len(request.expressions)
        if wanted > self.config.limits.max_objects:
            raise TooManyObjects(
                f"{wanted} objects and expressions requested; at most "
                f"{self.config.limits.max_objects} per session"
            )
        check_mask_bounds(request.objects, self.config.limits.max_image_side)
        check(scope, "creating the session")
        resolved = request.model_copy(update={"model": model})
        session_id = self.store.create_with(lambda sid: self.backend.open_session(sid, resolved))
        if scope is not None:
            scope.on_cancel(lambda: self._discard(session_id))
        check(scope, "answering")
        entry = self.store.get(session_id)
        entry.info["include_png"] = request.include_png
        return self._info(entry)

    def _discard(self, session_id: str) -> None:
        """Delete a session nobody will hear of (its creating request was cancelled)."""
        try:
            self.store.delete(session_id)
            logger.info("session %s deleted: its create request was cancelled", session_id)
        except ApiError:
            pass  # already gone

    def session_info(self, session_id: str) -> SessionInfo:
        return self._info(self.store.get(session_id))

    def process_frame(
        self,
        session_id: str,
        body: bytes,
        content_type: str | None,
        *,
        include_png: bool | None = None,
        scope: RequestScope | None = None,
    ) -> FrameResult:
        self.store.maybe_sweep()
        started = time.perf_counter()
        with self.store.lease(session_id, frame=True) as entry:
            image = decode_frame(body, content_type, max_side=self.config.limits.max_image_side)
            check(scope, "tracking the frame")  # nothing changed yet: the frame is not counted
            tracked = self.backend.track_frame(entry.state, image)
            png = entry.info.get("include_png", False) if include_png is None else include_png
            objects = encode_objects(tracked, include_png=png)
        return FrameResult(
            session_id=session_id,
            frame_index=tracked.frame_index,
            objects=objects,
            latency_ms=(time.perf_counter() - started) * 1000.0,
        )

    def add_prompts(
        self, session_id: str, request: PromptsRequest, scope: RequestScope | None = None
    ) -> SessionInfo:
        check_mask_bounds(request.objects, self.config.limits.max_image_side)
        check(scope, "adding prompts")
        with self.store.lease(session_id) as entry:
            known = set(self.backend.describe(entry.state).obj_ids)
            new = {obj.obj_id for obj in request.objects if obj.obj_id not in known}
            total = len(known) + len(new) + len(request.expressions)
            if total > self.config.limits.max_objects:
                raise TooManyObjects(
                    f"the session would track {total} objects and expressions; at most "
                    f"{self.config.limits.max_objects} per session"
                )
            self.backend.add_prompts(entry.state, request)
            return self._info(entry)

    def delete_session(self, session_id: str) -> None:
        self.store.delete(session_id)

    def shutdown(self) -> None:
        self.store.close_all()

    def _info(self, entry: SessionEntry[StateT]) -> SessionInfo:
        summary = self.backend.describe(entry.state)
        return SessionInfo(
            session_id=entry.session_id,
            model=summary.model,
            frames_processed=entry.frames,
            max_frames=self.store.limits.max_frames,
            idle_timeout_s=self.store.limits.idle_timeout_s,
            expressions=summary.expressions,
            obj_ids=summary.obj_ids,
        )

    # -- one-shot video ---------------------------------------------------------------------
    def segment(
        self, video: bytes, content_type: str | None, request: SegmentRequest
    ) -> Iterator[bytes]:
        """NDJSON lines for an uploaded video. Errors before the first frame raise (so they get
        a proper status); later ones end the stream with an `error` line."""
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media not in VIDEO_MEDIA_TYPES:
            raise UnsupportedMediaType(
                f"Content-Type must be one of {', '.join(VIDEO_MEDIA_TYPES)}, got {media or '(none)'}"
            )
        if not video:
            raise EmptyBody("the request body is empty; send the video file")
        check_video_header(video, self.config.limits.max_image_side)  # before any decoding
        request = request.model_copy(update={"model": self.resolve_model(request.model)})
        frames = self.backend.segment_video(video, request)
        started = time.perf_counter()
        first = next(frames, None)  # decode errors surface here, before any byte is sent
        return self._stream(first, frames, request, started)

    def _stream(
        self,
        first: TrackedFrame | None,
        frames: Iterator[TrackedFrame],
        request: SegmentRequest,
        started: float,
    ) -> Iterator[bytes]:
        limit = self.config.limits.max_video_frames
        count = 0
        current = first
        try:
            while current is not None:
                if count >= limit:
                    yield ndjson_line(
                        SegmentErrorLine(
                            error="frame_limit",
                            message=f"the video has more than {limit} frames; "
                            "send shorter clips or use a session",
                        )
                    )
                    return
                objects = encode_objects(current, include_png=request.include_png)
                yield ndjson_line(
                    SegmentFrameLine(
                        frame_index=current.frame_index,
                        objects=objects,
                        latency_ms=(time.perf_counter() - started) * 1000.0,
                    )
                )
                count += 1
                started = time.perf_counter()
                current = next(frames, None)
        except ApiError as exc:  # the status line is already sent: report in-band
            yield ndjson_line(SegmentErrorLine(error=exc.code, message=exc.message))
            return
        except Exception:
            logger.exception("segmenting an uploaded video failed after %d frames", count)
            message = f"internal error after {count} frames; see the server log"
            yield ndjson_line(SegmentErrorLine(error="internal_error", message=message))
            return
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()
        yield ndjson_line(SegmentEndLine(frames=count))
