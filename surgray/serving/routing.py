"""Replica identity and session ids that say which replica holds a session.

A session's tracker state lives in one replica's memory, so every request of the session must
reach that replica. Session ids are `<replica tag>.<128-bit random, URL-safe>.<check>`:
- the tag names the replica that created the session (the lead passes Ray Serve's
  `serve.get_replica_context().replica_id.unique_id`, so a request router can map a session id
  to a live replica without any shared table);
- the random part makes ids unguessable;
- the check is a truncated HMAC-SHA256 of the rest under a key shared by all replicas (from
  `sessions.id_key_env`). With a key, only ids this deployment minted pass; without one the
  check is a checksum that still catches typos and truncation.

So any replica can answer a request for a session it does not hold:
- id malformed or check fails -> 404 `unknown_session`;
- tag is its own -> the store decides: live, 410 (expired / deleted, remembered as tombstones)
  or 404 (never seen);
- tag is another replica's -> 410 `session_lost`: the router only sends a session's request to a
  replica other than the tagged one when the tagged one is gone (died, or scaled down). The
  client re-creates the session, passing its last masks as RLE mask prompts.

How to route a session to its replica under Ray Serve 2.60 (the lead's `serve/app.py`):

Recommended: a small custom request router (alpha API, `ray.serve.request_router`, deployed with
`RequestRouterConfig(request_router_class=...)`), about 30 lines in `serve/`. Subclass
`ray.serve.experimental.consistent_hash_router.ConsistentHashRouter` rather than `RequestRouter`:
it already routes each request by its own `metadata.session_id` and overrides
`_fulfill_pending_requests` so a request pinned to one replica is never orphaned under load.
Override `choose_replicas`: parse the tag of `pending_request.metadata.session_id` with
`parse_session_tag`; when a candidate's `replica_id.unique_id` equals it, set
`pending_request.routing_context.should_backoff = True` and return `[[that replica]]` (strict:
a busy owner is retried with backoff, never bypassed); otherwise (create, /v1/segment,
/v1/models, or an owner that is gone) return `await super().choose_replicas(...)`, which spreads
requests over the ring, and a replica reached for a gone owner answers `session_lost`.
Scaling up moves no session (the owner is named in the id, not hashed).
The session id reaches `metadata.session_id` in one of two ways:
(a) preferred, one deployment: `@serve.deployment @serve.ingress() class Server` whose
    `__init__` builds the backend and `SegmentationService` and whose
    `__serve_build_asgi_app__` returns `build_app(service, checker,
    require_routing_header=True)`. Serve's proxy copies the HTTP header named by
    `RAY_SERVE_SESSION_ID_HEADER_KEY` (default `x-session-id`) into `metadata.session_id`, so
    clients send `X-Session-Id: <sid>` beside the path; without it they get 400
    `missing_routing_header`, never a false 410;
(b) two deployments: a stateless FastAPI gateway (auth, limits) forwards to the tracker
    deployment with `handle.options(session_id=sid)`; clients need only the path, at the cost
    of one more hop per frame.
Alternatives considered: the plain `ConsistentHashRouter` (ids would have to be minted before
routing, i.e. in a gateway, and adding a replica remaps about 1/N of live sessions, each of
which is then lost), and model multiplexing with
the session id as model id (after `RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S` a busy
owner's requests go to another replica, which would silently start a second, empty session).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass

REPLICA_HEADER = "X-Surgray-Replica"
SESSION_ROUTING_HEADER = "X-Session-Id"
SESSION_TOKEN_BYTES = 16  # 128 bits of randomness per session id
_CHECK_CHARS = 11  # 66 bits of the HMAC, base64url
_TAG = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SESSION_ID = re.compile(r"^([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{11})$")
# Used when no key is configured: the check then only guards against typos and truncation.
_PUBLIC_KEY = b"surgray-session-id-checksum"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class ReplicaIdentity:
    """Who this replica is: `tag` goes into session ids, `replica_id` into response headers."""

    tag: str
    host: str
    pid: int

    @classmethod
    def create(cls, tag: str | None = None) -> ReplicaIdentity:
        """This process; `tag` is Ray Serve's replica unique_id when there is one, else random."""
        chosen = secrets.token_hex(6) if tag is None else tag
        if not _TAG.match(chosen):
            raise ValueError(f"replica tag must match [A-Za-z0-9_-]{{1,64}}, got {chosen!r}")
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "host"
        return cls(tag=chosen, host=host, pid=os.getpid())

    @property
    def replica_id(self) -> str:
        return f"{self.host}:{self.pid}:{self.tag}"


@dataclass(frozen=True)
class ParsedSessionId:
    tag: str
    token: str


class SessionIdCodec:
    """Mints and checks session ids (see the module docstring for the format)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key else _PUBLIC_KEY
        self.signed = bool(key)

    @classmethod
    def from_env(
        cls, env_name: str | None, environ: Mapping[str, str] | None = None
    ) -> SessionIdCodec:
        env = os.environ if environ is None else environ
        value = env.get(env_name, "") if env_name else ""
        return cls(value.encode("utf-8") if value else None)

    def _check(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()
        return _b64(digest)[:_CHECK_CHARS]

    def mint(self, tag: str) -> str:
        if not _TAG.match(tag):
            raise ValueError(f"replica tag must match [A-Za-z0-9_-]{{1,64}}, got {tag!r}")
        body = f"{tag}.{_b64(secrets.token_bytes(SESSION_TOKEN_BYTES))}"
        return f"{body}.{self._check(body)}"

    def parse(self, session_id: str) -> ParsedSessionId | None:
        """The parts of an id this deployment could have minted, else None."""
        match = _SESSION_ID.match(session_id)
        if match is None:
            return None
        tag, token, check = match.groups()
        if not hmac.compare_digest(check, self._check(f"{tag}.{token}")):
            return None
        return ParsedSessionId(tag=tag, token=token)


def parse_session_tag(session_id: str | None) -> str | None:
    """The replica tag of a well-formed session id, without checking it (for request routers)."""
    if not session_id:
        return None
    match = _SESSION_ID.match(session_id)
    return match.group(1) if match else None
