"""A bounded, thread-safe store of tracking sessions, generic in what a session keeps.

Bounds and the answers a client gets:
- at most `max_sessions` per replica; a create when full first evicts idle sessions, then
  answers 429 `at_capacity` with a Retry-After of when the next idle one would expire;
- a session unused for `idle_timeout_s` is evicted (on access, on create, or by `sweep()`);
  its id then reads 410 `session_expired`;
- a deleted session reads 410 `session_deleted`; ended ids are kept in a bounded LRU of
  tombstones so 410 (it existed, it is gone) can be told from 404 `unknown_session` (never here);
- an id minted by another replica reads 410 `session_lost` (see `routing.py`);
- at most `max_frames` frames per session: the next frame gets 409 `frame_limit`. The session
  stays (prompts, DELETE and idle eviction still apply) because the conflict is with the
  request, not the session's existence: a client closes it and creates a new one seeded with the
  last masks. 409 (not 410) keeps "410 = your state is gone, re-create it" unambiguous;
- one request at a time per session (frames must be tracked in order): a second concurrent
  one gets 409 `session_busy`. A session in use is never evicted, and one deleted while in use
  is closed when that request finishes.

`on_close(session_id, state, reason)` frees a session's state (e.g. tracker memory); it runs
outside the store's lock. The clock is injectable so tests control time.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Generic, TypeVar

from surgray.serving.errors import ApiError, Conflict, Gone, NotFound, TooManyRequests
from surgray.serving.routing import ReplicaIdentity, SessionIdCodec

T = TypeVar("T")
logger = logging.getLogger(__name__)


class EndReason(str, Enum):
    EXPIRED = "expired"
    DELETED = "deleted"
    SHUTDOWN = "shutdown"


class UnknownSession(NotFound):
    code = "unknown_session"


class SessionExpired(Gone):
    code = "session_expired"


class SessionDeleted(Gone):
    code = "session_deleted"


class SessionLost(Gone):
    code = "session_lost"


class AtCapacity(TooManyRequests):
    code = "at_capacity"


class FrameLimit(Conflict):
    code = "frame_limit"


class SessionBusy(Conflict):
    code = "session_busy"


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = 8
    idle_timeout_s: float = 300.0
    max_frames: int = 108_000
    tombstones: int = 4096

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.max_frames < 1 or self.tombstones < 0:
            raise ValueError(f"invalid session limits {self}")
        if not self.idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {self.idle_timeout_s}")


@dataclass(eq=False)
class SessionEntry(Generic[T]):
    session_id: str
    state: T | None
    created_at: float
    last_used: float
    frames: int = 0
    pending: bool = False  # reserved by create_with, state still being built
    leased: bool = False  # a request is using the state right now
    ended: EndReason | None = None  # removed while leased; closed when the lease ends
    info: dict = field(default_factory=dict)  # free-form, for the service layer


Closing = list[tuple[str, T, EndReason]]  # sessions to close once the lock is released


class SessionStore(Generic[T]):
    def __init__(
        self,
        limits: SessionLimits,
        *,
        identity: ReplicaIdentity | None = None,
        codec: SessionIdCodec | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_close: Callable[[str, T, EndReason], None] | None = None,
    ) -> None:
        self.limits = limits
        self.identity = identity or ReplicaIdentity.create()
        self.codec = codec or SessionIdCodec()
        self._clock = clock
        self._on_close = on_close
        self._lock = threading.Lock()
        self._entries: dict[str, SessionEntry[T]] = {}
        self._tombstones: OrderedDict[str, EndReason] = OrderedDict()
        self._last_sweep = clock()

    # -- creation -------------------------------------------------------------------------------
    def create(self, state: T) -> str:
        return self.create_with(lambda _session_id: state)

    def create_with(self, build: Callable[[str], T]) -> str:
        """Reserve a slot (429 when full), build the state outside the lock, then activate it."""
        error: ApiError | None = None
        with self._lock:
            now = self._clock()
            closing = self._evict_idle(now)
            if len(self._entries) >= self.limits.max_sessions:
                error = AtCapacity(
                    f"this replica already holds its maximum of {self.limits.max_sessions} "
                    "sessions; retry later or delete sessions you no longer need",
                    headers={"Retry-After": str(self._retry_after(now))},
                )
            else:
                session_id = self.codec.mint(self.identity.tag)
                self._entries[session_id] = SessionEntry(
                    session_id=session_id, state=None, created_at=now, last_used=now, pending=True
                )
        self._close(closing)
        if error is not None:
            raise error
        try:
            state = build(session_id)
        except BaseException:
            with self._lock:
                self._entries.pop(session_id, None)
            raise
        with self._lock:
            entry = self._entries[session_id]
            entry.state, entry.pending, entry.last_used = state, False, self._clock()
        return session_id

    # -- access ---------------------------------------------------------------------------------
    def get(self, session_id: str) -> SessionEntry[T]:
        """The live session (touched), or the 404/410 error that explains its absence."""
        with self._lock:
            now = self._clock()
            entry, error, closing = self._find(session_id, now)
            if entry is not None:
                entry.last_used = now
        self._close(closing)
        if entry is None:
            raise error
        return entry

    def touch(self, session_id: str) -> None:
        self.get(session_id)

    @contextmanager
    def lease(self, session_id: str, *, frame: bool = False) -> Iterator[SessionEntry[T]]:
        """Exclusive use of a session for one request; `frame` counts it against max_frames.

        The frame is counted, and the session touched, only if the body does not raise.
        """
        with self._lock:
            entry, error, closing = self._find(session_id, self._clock())
            if entry is not None:
                error = self._lease_refusal(entry, frame)
                entry.leased = entry.leased or error is None
        self._close(closing)
        if error is not None:
            raise error
        succeeded = False
        try:
            yield entry
            succeeded = True
        finally:
            with self._lock:
                entry.leased = False
                if succeeded and entry.ended is None:
                    entry.last_used = self._clock()
                    entry.frames += int(frame)
                ended = entry.ended
            if ended is not None:
                self._close([(entry.session_id, entry.state, ended)])

    def delete(self, session_id: str) -> None:
        """End a session (410 `session_deleted` afterwards); 404/410 if it is not live."""
        with self._lock:
            entry, error, closing = self._find(session_id, self._clock())
            if entry is not None:
                closing += self._remove(entry, EndReason.DELETED)
        self._close(closing)
        if error is not None:
            raise error

    # -- housekeeping ---------------------------------------------------------------------------
    def sweep(self) -> list[str]:
        """Evict every idle session now; returns their ids."""
        with self._lock:
            now = self._clock()
            self._last_sweep = now
            closing = self._evict_idle(now)
        self._close(closing)
        return [session_id for session_id, _, _ in closing]

    def maybe_sweep(self, min_interval_s: float = 1.0) -> list[str]:
        """`sweep()` unless one ran less than `min_interval_s` ago (cheap to call per request)."""
        with self._lock:
            due = self._clock() - self._last_sweep >= min_interval_s
        return self.sweep() if due else []

    def close_all(self) -> None:
        """End every session (replica shutdown); their ids are not tombstoned."""
        with self._lock:
            closing: Closing = []
            for entry in list(self._entries.values()):
                if not entry.pending:
                    closing += self._remove(entry, EndReason.SHUTDOWN, tombstone=False)
        self._close(closing)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def session_ids(self) -> list[str]:
        with self._lock:
            return [sid for sid, entry in self._entries.items() if not entry.pending]

    # -- internals (call with the lock held) ----------------------------------------------------
    def _find(
        self, session_id: str, now: float
    ) -> tuple[SessionEntry[T] | None, ApiError | None, Closing]:
        """(live entry, None, []) or (None, the 404/410 to raise, sessions to close)."""
        closing: Closing = []
        entry = self._entries.get(session_id)
        if entry is not None and not entry.pending:
            if entry.leased or now - entry.last_used < self.limits.idle_timeout_s:
                return entry, None, closing
            closing = self._remove(entry, EndReason.EXPIRED)
        return None, self._absence(session_id), closing

    def _absence(self, session_id: str) -> ApiError:
        parsed = self.codec.parse(session_id)
        if parsed is None:
            return UnknownSession(f"unknown session {session_id!r}: not an id this service issued")
        if parsed.tag != self.identity.tag:
            return SessionLost(
                f"session {session_id} was held by replica {parsed.tag}, which no longer serves "
                "it (restarted or scaled down); create a new session and pass your last masks "
                "as mask prompts"
            )
        reason = self._tombstones.get(session_id)
        if reason is None:
            return UnknownSession(f"unknown session {session_id}")
        self._tombstones.move_to_end(session_id)
        if reason is EndReason.DELETED:
            return SessionDeleted(f"session {session_id} was deleted")
        return SessionExpired(
            f"session {session_id} expired after {self.limits.idle_timeout_s:g} s without "
            "requests; create a new session (seed it with your last masks)"
        )

    def _lease_refusal(self, entry: SessionEntry[T], frame: bool) -> ApiError | None:
        if frame and entry.frames >= self.limits.max_frames:
            return FrameLimit(
                f"session {entry.session_id} reached its limit of {self.limits.max_frames} "
                "frames; delete it and create a new session seeded with its last masks"
            )
        if entry.leased:
            return SessionBusy(
                f"session {entry.session_id} is busy with another request; send a session's "
                "requests one at a time, in frame order"
            )
        return None

    def _remove(
        self, entry: SessionEntry[T], reason: EndReason, *, tombstone: bool = True
    ) -> Closing:
        del self._entries[entry.session_id]
        if tombstone and self.limits.tombstones:
            self._tombstones[entry.session_id] = reason
            self._tombstones.move_to_end(entry.session_id)
            while len(self._tombstones) > self.limits.tombstones:
                self._tombstones.popitem(last=False)
        if entry.leased:
            entry.ended = reason  # the lease closes it when its request finishes
            return []
        return [(entry.session_id, entry.state, reason)]

    def _evict_idle(self, now: float) -> Closing:
        closing: Closing = []
        for entry in list(self._entries.values()):
            idle = now - entry.last_used >= self.limits.idle_timeout_s
            if idle and not entry.pending and not entry.leased:
                closing += self._remove(entry, EndReason.EXPIRED)
        return closing

    def _retry_after(self, now: float) -> int:
        waits = [
            entry.last_used + self.limits.idle_timeout_s - now
            for entry in self._entries.values()
            if not entry.pending
        ]
        return max(1, math.ceil(min(waits))) if waits else 1

    def _close(self, closing: Closing) -> None:
        """Call on_close for each ended session; never with the lock held."""
        if self._on_close is None:
            return
        for session_id, state, reason in closing:
            try:
                self._on_close(session_id, state, reason)
            except Exception:
                logger.exception("closing session %s (%s) failed", session_id, reason.value)
