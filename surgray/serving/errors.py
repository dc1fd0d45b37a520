"""API errors, their JSON rendering, and a request-body size limit.

Every failure a client can cause is an `ApiError(status, code, message)` and reaches the client
as `{"error": code, "message": message}` with that status. `code` is a stable machine-readable
string (clients branch on it: `session_lost` means "re-create from your last masks"); `message`
is for people and names what was wrong. FastAPI and Starlette are imported inside functions so
that this module (and the rest of `surgray.serving`) imports without them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

ASGIApp = Callable[..., Awaitable[None]]


class ApiError(Exception):
    """An error with the HTTP status and code a client should see."""

    status: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})

    def body(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, {self.message!r})"


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class NotFound(ApiError):
    status, code = 404, "not_found"


class Conflict(ApiError):
    status, code = 409, "conflict"


class Gone(ApiError):
    status, code = 410, "gone"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class Unprocessable(ApiError):
    status, code = 422, "invalid_request"


class TooManyRequests(ApiError):
    status, code = 429, "too_many_requests"


def validation_message(errors: list[dict[str, Any]], limit: int = 5) -> str:
    """One line per pydantic error, each naming the field by its dotted path."""
    parts = []
    for error in errors[:limit]:
        loc = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{loc or '(body)'}: {error.get('msg', 'invalid')}")
    more = len(errors) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}


def install_error_handlers(app: Any) -> None:
    """Render ApiError, request validation errors and Starlette HTTP errors as {error, message}."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def on_api_error(request: Any, exc: ApiError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def on_validation_error(request: Any, exc: RequestValidationError) -> Any:
        body = {"error": "invalid_request", "message": validation_message(list(exc.errors()))}
        return JSONResponse(body, status_code=422)

    async def on_http_error(request: Any, exc: StarletteHTTPException) -> Any:
        code = _STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
        body = {"error": code, "message": str(exc.detail)}
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


class BodyTooLarge(PayloadTooLarge):
    code = "body_too_large"


class BodySizeLimitMiddleware:
    """Pure ASGI middleware: 413 when a body is, or turns out to be, larger than allowed.

    A declared Content-Length over the limit is refused before anything is read. Bodies without
    one (chunked uploads) or that lie about it are counted while they stream in: `receive` raises
    `BodyTooLarge` as soon as the count passes the limit, so at most limit + one chunk is held.
    `path_limits` gives exact paths their own limit (a video upload is larger than a frame).
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, path_limits: Mapping[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    def limit_for(self, path: str) -> int:
        return self.path_limits.get(path.rstrip("/") or "/", self.max_bytes)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_error(send, _too_large(declared, limit))
            return
        received = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(received, limit)
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            # Reached here only when the app let the error escape; answer if we still can.
            if not started:
                await _send_error(send, exc)


def _too_large(size: int, limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"request body of {size}+ bytes exceeds the limit of {limit} bytes")


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_error(send: Callable, error: ApiError) -> None:
    payload = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        (b"connection", b"close"),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
