"""The life of one HTTP request as the (threaded) service sees it: cancelled or not.

Model work runs in a worker thread. When the client disconnects, or Ray Serve's request
timeout passes, the request's asyncio task is cancelled, but the thread goes on: Python cannot
stop it. Left alone, a session that thread creates afterwards is an orphan: it holds a slot
and memory until it idles out, and nobody knows its id. So the HTTP layer hands the service a
`RequestScope` and cancels it when its task is cancelled; the service checks it between steps
(`raise_if_cancelled`) and registers undo actions (`on_cancel`, e.g. delete the session just
created), which run at once if the scope is already cancelled, or when it is cancelled later
(the response may still be lost after the service returned).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from surgray.serving.errors import ApiError

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RequestCancelled(ApiError):
    """The client went away or the deadline passed; nobody reads this answer."""

    status = 499  # nginx's "client closed request"; only ever logged
    code = "request_cancelled"


class RequestScope:
    """Cancellation and an optional deadline (`time.monotonic()` seconds) of one request."""

    def __init__(self, deadline: float | None = None, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self._cancelled = False
        self._undo: list[Callable[[], None]] = []
        self.deadline = deadline
        self._clock = clock

    @property
    def cancelled(self) -> bool:
        with self._lock:
            if self._cancelled:
                return True
        return self.deadline is not None and self._clock() >= self.deadline

    def cancel(self) -> None:
        """Mark the request cancelled and run its undo actions (once)."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            undo, self._undo = self._undo, []
        _run(undo)

    def on_cancel(self, action: Callable[[], None]) -> None:
        """Run `action` when the request is cancelled; at once if it already is."""
        with self._lock:
            if not self._cancelled:
                self._undo.append(action)
                return
        _run([action])

    def raise_if_cancelled(self, step: str) -> None:
        if self.cancelled:
            raise RequestCancelled(f"request cancelled before {step}")


def _run(actions: list[Callable[[], None]]) -> None:
    for action in actions:
        try:
            action()
        except Exception:  # an undo must not hide the others
            logger.exception("undoing a cancelled request's work failed")


def check(scope: RequestScope | None, step: str) -> None:
    """`scope.raise_if_cancelled(step)` when there is a scope."""
    if scope is not None:
        scope.raise_if_cancelled(step)


async def run_scoped(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`func(*args, scope=..., **kwargs)` in Starlette's thread pool. The scope is cancelled
    when this coroutine is (the client disconnected, or Serve's request timeout passed) and
    when `func` fails, so the undo actions it registered run and nothing is left orphaned."""
    from starlette.concurrency import run_in_threadpool

    scope = RequestScope()
    try:
        return await run_in_threadpool(func, *args, scope=scope, **kwargs)
    except BaseException:
        scope.cancel()
        raise
