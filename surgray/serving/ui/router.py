"""Routes of the review-and-correct page (mounted by `http_app.build_app`).

    GET  /, /ui                      the page (static, holds no data: no auth)
    GET  /ui/static/<file>           its script and style sheet
    GET  /ui/api/whoami              checks the token; the reviewer name, stores, demo clips
    GET  /ui/api/demo-clips/<seed>   a synthetic demo clip's frames (JPEG, base64) + expressions
    POST /ui/api/clips?name=..       an uploaded video's frames
    GET  /ui/api/review/videos?source=..                     the store's videos, worst first
    GET  /ui/api/review/video?source=..&video_id=..[&revision=..]   masks of one revision
    GET  /ui/api/review/frames?source=..&video_id=..&start=..&count=..
    GET  /ui/api/review/export?source=..&video_id=..&format=..[&revision=..]
    POST /ui/api/review/save         a correction -> a new revision (409 when stale)
    POST /ui/api/live/save           a live session's masks -> a revision in review.live_source

Tracking itself goes through the ordinary `/v1/sessions` API from the page.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from surgray.annotate.revisions import (
    RevisionConflict,
    RevisionError,
    RevisionStore,
    apply_correction,
)
from surgray.io.records import MaskRecord
from surgray.serving.auth import TokenChecker
from surgray.serving.config import LimitsConfig
from surgray.serving.errors import Conflict, NotFound, Unprocessable
from surgray.serving.schemas import RleMask
from surgray.serving.service import SegmentationService
from surgray.serving.ui import media, review

UPLOAD_PATH = "/ui/api/clips"
LIVE_SAVE_PATH = "/ui/api/live/save"
REVIEW_SAVE_PATH = "/ui/api/review/save"
MAX_UI_FRAMES = 600
STATIC = {"app.js": "text/javascript", "app.css": "text/css", "index.html": "text/html"}


def ui_path_limits(limits: LimitsConfig) -> dict[str, int]:
    """Body limits of the page's large uploads (a clip, a save with its frames)."""
    big = limits.max_video_bytes
    return {UPLOAD_PATH: big, LIVE_SAVE_PATH: big, REVIEW_SAVE_PATH: big}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FrameMask(_Body):
    frame_idx: Annotated[int, Field(ge=0)]
    obj_id: Annotated[int, Field(ge=0, le=255)]
    score: float = 1.0
    rle: RleMask


class Correction(_Body):
    obj_id: Annotated[int, Field(ge=1, le=255)]
    label: Annotated[str, Field(max_length=200)] | None = None
    from_frame: Annotated[int, Field(ge=0)]
    masks: list[FrameMask]
    prompts: list[dict[str, Any]] = Field(default_factory=list, max_length=256)


class ReviewSave(_Body):
    source: str
    video_id: str
    parent: Annotated[int, Field(ge=0)]
    corrections: Annotated[list[Correction], Field(min_length=1)]


class LiveObject(_Body):
    obj_id: Annotated[int, Field(ge=1, le=255)]
    label: Annotated[str, Field(max_length=200)] = ""


class LiveSave(_Body):
    video_id: str
    parent: Annotated[int, Field(ge=0)]
    objects: list[LiveObject]
    masks: list[FrameMask]
    frames: Annotated[int, Field(ge=1)]
    frames_changed: list[int] = Field(default_factory=list)
    prompts: list[dict[str, Any]] = Field(default_factory=list, max_length=1024)
    frames_jpeg: list[str] | None = None  # base64 JPEGs, with the first save only


def _records(video_id: str, masks: list[FrameMask], labels: dict[int, str]) -> list[MaskRecord]:
    return [
        MaskRecord(
            video_id,
            m.frame_idx,
            m.obj_id,
            labels.get(m.obj_id, ""),
            float(m.score),
            {"size": list(m.rle.size), "counts": m.rle.counts},
        )
        for m in masks
    ]


def _static(name: str) -> Response:
    if name not in STATIC:
        raise NotFound(f"no page file {name!r}")
    data = resources.files("surgray.serving.ui").joinpath("static", name).read_bytes()
    return Response(data, media_type=STATIC[name], headers={"Cache-Control": "no-cache"})


def build_ui_router(service: SegmentationService[Any], checker: TokenChecker) -> APIRouter:
    config = service.config
    stores = review.ReviewStores(config.review)
    limits = config.limits
    max_frames = min(MAX_UI_FRAMES, limits.max_video_frames, config.sessions.max_frames)

    def authorize(request: Request) -> None:
        checker.check(request.headers.get("authorization"))

    def ok(payload: Any, status: int = 200) -> JSONResponse:
        return JSONResponse(payload, status_code=status)

    def author(request: Request) -> str:
        return review.token_name(request.headers.get("authorization"), checker.insecure)

    page = APIRouter()

    @page.get("/")
    def index() -> Response:
        return _static("index.html")

    @page.get("/ui")
    def index_ui() -> Response:
        return _static("index.html")

    @page.get("/ui/static/{name}")
    def static(name: str) -> Response:
        return _static(name)

    api = APIRouter(prefix="/ui/api", dependencies=[Depends(authorize)])

    @api.get("/whoami")
    def whoami(request: Request) -> JSONResponse:
        return ok(
            {
                "reviewer": author(request),
                "insecure": checker.insecure,
                "sources": stores.describe(),
                "live_source": config.review.live_source,
                "demo_clips": list(media.DEMO_SEEDS),
                "max_frames": max_frames,
                "text_prompts": bool(service.models().models[0].text_prompts),
            }
        )

    @api.get("/demo-clips/{seed}")
    async def demo(seed: int) -> JSONResponse:
        if seed not in media.DEMO_SEEDS:
            raise NotFound(f"no demo clip {seed}; choose one of {list(media.DEMO_SEEDS)}")
        clip = await run_in_threadpool(media.demo_clip, seed)
        return ok(clip.as_json())

    @api.post("/clips")
    async def upload(request: Request, name: str = "clip") -> JSONResponse:
        body = await request.body()
        clip = await run_in_threadpool(
            media.decode_upload,
            body,
            name[:80],
            max_frames=max_frames,
            max_side=limits.max_image_side,
        )
        return ok(clip.as_json())

    @api.get("/review/videos")
    async def videos(source: str) -> JSONResponse:
        chosen = stores.source(source)
        rows = await run_in_threadpool(review.list_videos, stores.layout(chosen))
        return ok({"source": chosen.name, "videos": rows})

    @api.get("/review/video")
    async def video(source: str, video_id: str, revision: int | None = None) -> JSONResponse:
        chosen = stores.source(source)
        vid = review.safe_video_id(video_id)
        detail = await run_in_threadpool(review.video_detail, stores.layout(chosen), vid, revision)
        return ok({"source": chosen.name, **detail})

    @api.get("/review/frames")
    async def frames(source: str, video_id: str, start: int = 0, count: int = 64) -> JSONResponse:
        chosen = stores.source(source)
        vid = review.safe_video_id(video_id)
        if start < 0 or not 1 <= count <= 256:
            raise Unprocessable("start must be >= 0 and count 1..256")
        jpegs = await run_in_threadpool(
            review.video_frames,
            stores.layout(chosen),
            vid,
            max_frames=min(start + count, max_frames),
            max_side=limits.max_image_side,
        )
        chunk = jpegs[start : start + count]
        return ok({"start": start, "frames": [base64.b64encode(f).decode() for f in chunk]})

    @api.get("/review/export")
    async def export(
        source: str, video_id: str, format: str, revision: int | None = None
    ) -> Response:
        chosen = stores.source(source)
        vid = review.safe_video_id(video_id)
        payload, media_type, filename = await run_in_threadpool(
            review.export, stores.layout(chosen), vid, format, revision
        )
        headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
        return Response(payload, media_type=media_type, headers=headers)

    def _save_review(body: ReviewSave, who: str) -> dict[str, Any]:
        chosen = stores.source(body.source)
        vid = review.safe_video_id(body.video_id)
        if not chosen.writable:
            raise review.NotAllowed(f"review source {chosen.name!r} is read-only")
        store = RevisionStore(stores.layout(chosen))
        try:
            rows = store.records(vid, body.parent)
        except (RevisionError, FileNotFoundError):
            latest = store.latest_number(vid)
            raise Conflict(
                f"video {vid} has no revision {body.parent} (latest {latest}); reload it",
                code="revision_conflict",
            ) from None
        labels = {r.obj_id: r.label for r in rows}
        frames_changed: set[int] = set()
        prompts = []
        for fix in body.corrections:
            if fix.label:
                labels[fix.obj_id] = fix.label
            if any(m.obj_id != fix.obj_id or m.frame_idx < fix.from_frame for m in fix.masks):
                raise Unprocessable(
                    f"correction of object {fix.obj_id}: masks must be of that object, "
                    f"from frame {fix.from_frame} on"
                )
            new = _records(vid, fix.masks, labels)
            rows = apply_correction(rows, fix.obj_id, fix.from_frame, new)
            if fix.label:  # a renamed object is renamed on every frame, not only the re-tracked
                rows = [replace(r, label=fix.label) if r.obj_id == fix.obj_id else r for r in rows]
            frames_changed |= {m.frame_idx for m in fix.masks}
            prompts.append(
                {"obj_id": fix.obj_id, "from_frame": fix.from_frame, "prompts": fix.prompts}
            )
        frames = max((r.frame_idx for r in rows), default=-1) + 1
        status = review._read_json(store.layout, store.layout.status_uri(vid)) or {}
        saved = store.save(
            vid,
            parent=body.parent,
            records=rows,
            frames=int(status.get("frames") or frames),
            frames_changed=frames_changed,
            objects_changed=[fix.obj_id for fix in body.corrections],
            prompts=prompts,
            author=who,
        )
        return {"source": chosen.name, **saved.as_dict()}

    def _save_live(body: LiveSave, who: str) -> dict[str, Any]:
        chosen = stores.live_source()
        vid = review.safe_video_id(body.video_id)
        store = RevisionStore(stores.layout(chosen))
        if body.parent == 0:
            if store.latest_number(vid) != 0:
                raise Conflict(
                    f"video {vid} was already saved; reload it", code="revision_conflict"
                )
            if not body.frames_jpeg:
                raise Unprocessable("the first save of a live clip must send its frames")
            try:
                jpegs = [base64.b64decode(f, validate=True) for f in body.frames_jpeg]
            except (binascii.Error, ValueError):
                raise Unprocessable("frames_jpeg must be base64 JPEGs") from None
            review.save_live_frames(store.layout, vid, jpegs)
        labels = {o.obj_id: o.label for o in body.objects}
        rows = _records(vid, body.masks, labels)
        saved = store.save(
            vid,
            parent=body.parent,
            records=rows,
            frames=body.frames,
            frames_changed=body.frames_changed or sorted({m.frame_idx for m in body.masks}),
            objects_changed=sorted(labels),
            prompts=body.prompts,
            author=who,
            extra={"kind": "live"},
        )
        return {"source": chosen.name, **saved.as_dict()}

    @api.post("/review/save")
    async def save_review(request: Request) -> JSONResponse:
        from surgray.serving.http_app import parse_json_body

        body = parse_json_body(
            await request.body(), request.headers.get("content-type"), ReviewSave
        )
        try:
            return ok(await run_in_threadpool(_save_review, body, author(request)), status=201)
        except RevisionConflict as exc:
            raise Conflict(str(exc), code="revision_conflict") from None

    @api.post("/live/save")
    async def save_live(request: Request) -> JSONResponse:
        from surgray.serving.http_app import parse_json_body

        body = parse_json_body(await request.body(), request.headers.get("content-type"), LiveSave)
        try:
            return ok(await run_in_threadpool(_save_live, body, author(request)), status=201)
        except RevisionConflict as exc:
            raise Conflict(str(exc), code="revision_conflict") from None

    page.include_router(api)
    return page
