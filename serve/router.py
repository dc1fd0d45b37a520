"""Request router that sends every request of a session to the replica holding its state.

Session ids name the replica that minted them (`surgray.serving.routing`), and clients send
the id in the `X-Session-Id` header, which Serve's proxy copies into the request metadata's
`session_id`. A request whose id names a live replica goes to that replica only: if it is
busy, the request waits with backoff rather than reaching a replica that would not know the
session. Anything else (session creation, /v1/models, or an id whose replica is gone) is
spread over the replicas by `ConsistentHashRouter`; a replica reached for a gone owner answers
410 `session_lost`. Ray serializes this module by value, so the proxy needs only Ray and
`surgray` installed.
"""

from __future__ import annotations

from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

from surgray.serving.routing import parse_session_tag


class SessionAffinityRouter(ConsistentHashRouter):
    async def choose_replicas(self, candidate_replicas, pending_request=None):
        session_id = pending_request.metadata.session_id if pending_request is not None else None
        tag = parse_session_tag(session_id)
        if tag is not None:
            owner = [r for r in candidate_replicas if r.replica_id.unique_id == tag]
            if owner:
                pending_request.routing_context.should_backoff = True
                return [owner]
        return await super().choose_replicas(candidate_replicas, pending_request)
