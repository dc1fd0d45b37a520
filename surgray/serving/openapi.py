"""The OpenAPI schema of the v1 API: `/openapi.json`, Swagger UI at `/docs`, ReDoc at `/redoc`.

The schema and its pages need no token (they describe the API, they do not use it); every
`/v1` route keeps its bearer authentication, and the schema says so (`bearer` security scheme).
The routes of `http_app` read their bodies themselves (JSON, images, videos, each with its own
415/422 rules), so FastAPI cannot infer what they take and return: `install_openapi` adds it
after FastAPI has listed the routes: request bodies, success bodies, and every documented error
as an `ErrorBody` (`{"error": code, "message": text}`, what `errors.install_error_handlers`
sends). Routes added later (e.g. a web UI router) keep what FastAPI infers for them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from surgray.serving.schemas import (
    CreateSessionRequest,
    ErrorBody,
    FrameResult,
    HealthInfo,
    ModelList,
    PromptsRequest,
    SegmentEndLine,
    SegmentErrorLine,
    SegmentFrameLine,
    SessionInfo,
)

DOCS_URL, REDOC_URL, OPENAPI_URL = "/docs", "/redoc", "/openapi.json"
REF = "#/components/schemas/{model}"
ERRORS: dict[int, str] = {
    400: "bad request (e.g. a session request without its routing header)",
    401: "missing or invalid bearer token",
    404: "no such session",
    409: "conflict (e.g. the session reached its frame limit)",
    410: "the session ended or its replica is gone: re-create it from the last masks",
    413: "body or image too large",
    415: "unsupported Content-Type, or content that does not match it",
    422: "invalid request content",
    429: "too many sessions on this replica",
    503: "the service cannot take the request now",
}
_COMMON = (401, 422, 503)
_SESSION = (400, 404, 410)


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": REF.format(model=model.__name__)}}}


def _binary(*media: str) -> dict[str, Any]:
    return {m: {"schema": {"type": "string", "format": "binary"}} for m in media}


# (path, method) -> (summary, request content or None, success status, success content, errors)
_OPERATIONS: dict[tuple[str, str], tuple[str, Any, int, Any, tuple[int, ...]]] = {
    ("/healthz", "get"): ("liveness (no token)", None, 200, _json(HealthInfo), ()),
    ("/v1/models", "get"): ("the models this server offers", None, 200, _json(ModelList), ()),
    ("/v1/sessions", "post"): (
        "start a tracking session (text expressions and/or prompted objects)",
        _json(CreateSessionRequest), 201, _json(SessionInfo), (413, 415, 429),
    ),
    ("/v1/sessions/{session_id}", "get"): (
        "a session's state", None, 200, _json(SessionInfo), _SESSION,
    ),
    ("/v1/sessions/{session_id}", "delete"): (
        "end a session", None, 204, None, _SESSION,
    ),
    ("/v1/sessions/{session_id}/frames", "post"): (
        "track the session's next frame (one JPEG or PNG image)",
        _binary("image/jpeg", "image/png"), 200, _json(FrameResult), (*_SESSION, 409, 413, 415),
    ),
    ("/v1/sessions/{session_id}/prompts", "post"): (
        "add objects or correct tracked ones",
        _json(PromptsRequest), 200, _json(SessionInfo), (*_SESSION, 409, 413, 415),
    ),
    ("/v1/segment", "post"): (
        "segment a whole video by text expressions; one JSON line per frame, then an end line",
        _binary("video/mp4", "video/quicktime", "video/webm"), 200,
        {"application/x-ndjson": {"schema": {"oneOf": [
            {"$ref": REF.format(model=m.__name__)}
            for m in (SegmentFrameLine, SegmentEndLine, SegmentErrorLine)
        ]}}},
        (413, 415),
    ),
}  # fmt: skip


def _components() -> dict[str, Any]:
    """JSON schemas of every body model, with their nested models, keyed by model name."""
    requests = (CreateSessionRequest, PromptsRequest)
    responses = (ErrorBody, FrameResult, HealthInfo, ModelList, SessionInfo, SegmentFrameLine,
                 SegmentEndLine, SegmentErrorLine)  # fmt: skip
    pairs = [(m, "validation") for m in requests] + [(m, "serialization") for m in responses]
    _, defs = models_json_schema(pairs, ref_template=REF)
    return defs.get("$defs", {})


def _error_responses(statuses: tuple[int, ...]) -> dict[str, Any]:
    return {
        str(status): {"description": ERRORS[status], "content": _json(ErrorBody)}
        for status in sorted(set(statuses))
    }


def document(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (FastAPI's) with the v1 operations' bodies, errors and security filled in."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(_components())
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "a token from the server's SURGRAY_API_TOKENS (or auth.token_file)",
    }
    for (path, method), (summary, body, status, content, errors) in _OPERATIONS.items():
        operation = schema.get("paths", {}).get(path, {}).get(method)
        if operation is None:
            continue
        operation["summary"] = summary
        if body is not None:
            operation["requestBody"] = {"required": True, "content": body}
        success: dict[str, Any] = {"description": "success"}
        if content is not None:
            success["content"] = content
        secured = path.startswith("/v1/")
        statuses = (*_COMMON, *errors) if secured else errors
        operation["responses"] = {str(status): success, **_error_responses(statuses)}
        if secured:
            operation["security"] = [{"bearer": []}]
    return schema


def install_openapi(app: Any) -> None:
    """Make `app.openapi()` (served at OPENAPI_URL) return the documented schema, built once."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi
