"""The FastAPI app of the v1 API, built around a `SegmentationService`.

Routes (all but /healthz and the API's description need `Authorization: Bearer <token>`):
  GET    /healthz                         liveness, no auth, no details
  GET    /openapi.json, /docs, /redoc     the OpenAPI schema and its pages, no auth (openapi.py)
  GET    /v1/models                       the server-side model registry
  POST   /v1/sessions                     JSON CreateSessionRequest -> 201 SessionInfo
  GET    /v1/sessions/{id}                SessionInfo
  POST   /v1/sessions/{id}/frames         one image/jpeg or image/png body -> FrameResult
                                          (?include_png=true|false overrides the session default)
  POST   /v1/sessions/{id}/prompts        JSON PromptsRequest -> SessionInfo
  DELETE /v1/sessions/{id}                204
  POST   /v1/segment?expression=..&expression=..[&model=..][&include_png=..]
                                          a video body -> application/x-ndjson stream
Every response carries `X-Surgray-Replica`. Model work runs in Starlette's thread pool so the
event loop keeps answering. Under Ray Serve the lead wraps the result of `build_app` with
`serve.ingress` (no Ray code here). This module imports FastAPI at the top (route signatures
are resolved from module globals); the rest of `surgray.serving` does not need it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from surgray.serving.auth import TokenChecker
from surgray.serving.errors import (
    BadRequest,
    BodySizeLimitMiddleware,
    Unprocessable,
    UnsupportedMediaType,
    install_error_handlers,
    validation_message,
)
from surgray.serving.openapi import DOCS_URL, OPENAPI_URL, REDOC_URL, install_openapi
from surgray.serving.request_scope import run_scoped
from surgray.serving.routing import REPLICA_HEADER, SESSION_ROUTING_HEADER
from surgray.serving.schemas import (
    API_VERSION,
    CreateSessionRequest,
    PromptsRequest,
    SegmentRequest,
)
from surgray.serving.service import SegmentationService
from surgray.serving.ui.router import build_ui_router, ui_path_limits

M = TypeVar("M", bound=BaseModel)
API_DESCRIPTION = (
    "Online segmentation and tracking of surgical video (SAM2-family models). Every /v1 route "
    "needs `Authorization: Bearer <token>`; errors are `ErrorBody` JSON: "
    '`{"error": code, "message": text}`.'
)
SEGMENT_PATH = "/v1/segment"


class ReplicaHeaderMiddleware:
    """Adds `X-Surgray-Replica: <replica id>` to every HTTP response (errors included)."""

    def __init__(self, app: Callable, *, replica_id: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.lower().encode(), replica_id.encode())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_header)


def parse_json_body(body: bytes, content_type: str | None, model: type[M]) -> M:
    """A request model from a JSON body: 415 for another media type, 422 for bad content."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {media or '(none)'}"
        )
    if not body:
        raise Unprocessable("the request body is empty; send a JSON object", code="empty_body")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise Unprocessable(validation_message(exc.errors(include_url=False))) from None


def build_app(
    service: SegmentationService[Any],
    checker: TokenChecker,
    *,
    require_routing_header: bool = False,
) -> FastAPI:
    """The ASGI app. `require_routing_header`: see `routing.py` (one-ingress Serve design)."""
    limits = service.config.limits

    def authorize(request: Request) -> None:
        checker.check(request.headers.get("authorization"))

    def routed(session_id: str, request: Request) -> str:
        if require_routing_header and request.headers.get(SESSION_ROUTING_HEADER) != session_id:
            raise BadRequest(
                f"send the header '{SESSION_ROUTING_HEADER}: {session_id}' with every request "
                "of a session, so it reaches the replica that holds the session",
                code="missing_routing_header",
            )
        return session_id

    def ok(model: BaseModel, status: int = 200) -> JSONResponse:
        return JSONResponse(model.model_dump(mode="json"), status_code=status)

    app = FastAPI(
        title="surgray", version=API_VERSION, description=API_DESCRIPTION,
        docs_url=DOCS_URL, redoc_url=REDOC_URL, openapi_url=OPENAPI_URL,
    )  # fmt: skip
    install_error_handlers(app)
    install_openapi(app)  # the schema and its pages need no token; /v1 routes keep theirs

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        return ok(service.health())

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @v1.get("/models")
    def list_models() -> JSONResponse:
        return ok(service.models())

    @v1.post("/sessions")
    async def create_session(request: Request) -> JSONResponse:
        body = parse_json_body(
            await request.body(), request.headers.get("content-type"), CreateSessionRequest
        )
        return ok(await run_scoped(service.create_session, body), status=201)

    @v1.get("/sessions/{session_id}")
    def get_session(session_id: str = Depends(routed)) -> JSONResponse:
        return ok(service.session_info(session_id))

    @v1.post("/sessions/{session_id}/frames")
    async def post_frame(
        request: Request, include_png: bool | None = None, session_id: str = Depends(routed)
    ) -> JSONResponse:
        body = await request.body()
        result = await run_scoped(
            service.process_frame,
            session_id,
            body,
            request.headers.get("content-type"),
            include_png=include_png,
        )
        return ok(result)

    @v1.post("/sessions/{session_id}/prompts")
    async def post_prompts(request: Request, session_id: str = Depends(routed)) -> JSONResponse:
        body = parse_json_body(
            await request.body(), request.headers.get("content-type"), PromptsRequest
        )
        return ok(await run_scoped(service.add_prompts, session_id, body))

    @v1.delete("/sessions/{session_id}")
    def delete_session(session_id: str = Depends(routed)) -> Response:
        service.delete_session(session_id)
        return Response(status_code=204)

    @v1.post("/segment")
    async def segment(request: Request) -> StreamingResponse:
        query = request.query_params
        unknown = sorted(set(query) - {"expression", "model", "include_png"})
        if unknown:
            raise Unprocessable(
                f"unknown query parameters {unknown}; use expression (repeatable), model, "
                "include_png"
            )
        try:
            options = SegmentRequest(
                expressions=query.getlist("expression"),
                model=query.get("model"),
                include_png=query.get("include_png", "false"),
            )
        except ValidationError as exc:
            raise Unprocessable(validation_message(exc.errors(include_url=False))) from None
        video = await request.body()
        lines = await run_in_threadpool(
            service.segment, video, request.headers.get("content-type"), options
        )
        return StreamingResponse(lines, media_type="application/x-ndjson")

    app.include_router(v1)
    app.include_router(build_ui_router(service, checker))  # the review page: serving/ui/
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=limits.max_body_bytes,
        path_limits={SEGMENT_PATH: limits.max_video_bytes, **ui_path_limits(limits)},
    )
    app.add_middleware(ReplicaHeaderMiddleware, replica_id=service.identity.replica_id)
    return app
