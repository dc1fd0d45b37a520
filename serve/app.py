"""The Ray Serve application: one ingress deployment of tracker replicas, sessions pinned.

    serve run serve.app:app insecure=true                  # local demo, shipped demo checkpoint
    serve run serve.app:app insecure=true port=8123        # listen elsewhere (host= too)
    serve run serve.app:app config=my_serve_config.yaml    # or a plain ServeConfig YAML
    serve deploy configs/serve.yaml                        # Ray's config file; args below

`app` is an application builder: Serve calls it with the application's `args` (from the
config file, or `key=value` pairs after `serve run`). The args are `ServeConfig` sections
(`model`, `replicas`, `sessions`, `limits`, `auth`, `http`, `batching`) plus:
- `ray_actor_options`: the replicas' Ray resources (default `{"num_cpus": 1}`; fractional
  CPUs are fine, and give small machines room for Serve's own actors);
- flat shortcuts for the command line: `config=<yaml>` (base config), `insecure=true`
  (no authentication: local demos only), `checkpoint=`, `variant=`, `image_size=`, `policy=`
  (model fields), `host=`, `port=` (where Serve listens: `serve.http_start`), `num_cpus=`
  (replica CPUs), `review_dir=<folder or URI>` (an annotation store the review page at `/`
  reads and saves into, named `local`; a config file's `review.sources` lists more).
Without a `model`, the shipped referring demo checkpoint is served (`checkpoint:
demo:referring`: the micro network at 128 px with its own text tower, trained on synthetic
clips), which takes masks, points, boxes and text expressions. Tokens and the session-id key
come from the environment (see `configs/serve.yaml`); with no token and no explicit insecure
flag the app refuses to start.

Each replica holds the model, a bounded session store and the FastAPI app of
`surgray.serving.http_app`; `serve.router.SessionAffinityRouter` sends a session's requests
(clients send `X-Session-Id`) to the replica that minted its id, and every response names its
replica in `X-Surgray-Replica`. A thread sweeps idle sessions out periodically.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from serve.router import SessionAffinityRouter
from surgray.serving.config import ServeConfig, ServeConfigError

logger = logging.getLogger("ray.serve")

DEPLOYMENT_NAME = "SegmentationServer"
DEMO_MODEL: dict[str, Any] = {
    "name": "default",
    "variant": "micro",
    "checkpoint": "demo:referring",
    "image_size": 128,
    "policy": "recent",
    "description": (
        "shipped demo checkpoint: micro SAM2.1 with a small text tower, trained on synthetic "
        "clips only (masks and text prompts; not for surgical use)"
    ),
}
DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 1}
MODEL_SHORTCUTS = ("checkpoint", "variant", "image_size", "policy")
HTTP_SHORTCUTS = ("host", "port")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ServeConfigError(f"serve args: {key} must be true or false, got {value!r}")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, section by section (one level deep)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def resolve_args(args: dict[str, Any] | None) -> tuple[ServeConfig, dict[str, Any]]:
    """(validated ServeConfig, ray_actor_options) from the builder's args."""
    if args is not None and not isinstance(args, dict):
        raise ServeConfigError(f"serve args: expected a mapping, got {type(args).__name__}")
    rest = dict(args or {})
    actor_options = {**DEFAULT_ACTOR_OPTIONS, **(rest.pop("ray_actor_options", None) or {})}
    if "num_cpus" in rest:
        actor_options["num_cpus"] = float(rest.pop("num_cpus"))
    base: dict[str, Any] = {}
    if "config" in rest:
        # Only what the file sets, so a file without `http` leaves Serve's address alone.
        loaded = ServeConfig.from_yaml(rest.pop("config"))
        base = loaded.model_dump(mode="json", exclude_unset=True)
    insecure = rest.pop("insecure", None)
    review_dir = rest.pop("review_dir", None)
    shortcuts = {key: rest.pop(key) for key in MODEL_SHORTCUTS if key in rest}
    http = {key: rest.pop(key) for key in HTTP_SHORTCUTS if key in rest}
    merged = _merge(base, rest)
    if http:
        merged["http"] = {**merged.get("http", {}), **http}
    model = merged.get("model")
    if model is None:
        model = dict(DEMO_MODEL)
        if "checkpoint" in shortcuts:  # the demo's description would not describe that file
            del model["description"]
    merged["model"] = {**model, **shortcuts}
    if review_dir is not None:  # the review page's store from the command line
        uri = str(review_dir) if "://" in str(review_dir) else os.path.abspath(str(review_dir))
        review = dict(merged.get("review") or {})
        local = {"name": "local", "uri": uri, "description": "review_dir"}
        review["sources"] = [*review.get("sources", []), local]
        review.setdefault("live_source", "local")
        merged["review"] = review
    if insecure is not None:
        merged["auth"] = {**merged.get("auth", {}), "insecure_no_auth": _flag(insecure, "insecure")}
    return ServeConfig.from_args(merged), actor_options


def _check_auth_configured(config: ServeConfig) -> None:
    """Warn at build time when this process sees no token; replicas refuse to start then.

    Only a warning here: tokens often reach the replicas through their runtime environment
    (`--runtime-env-json`, a secret manager) and not through the process building the app.
    """
    from surgray.serving.auth import AuthConfigError, build_token_checker

    if config.auth.insecure_no_auth:
        logger.warning("surgray: serving WITHOUT authentication (auth.insecure_no_auth)")
        return
    if config.auth.token_file is None:
        try:
            build_token_checker(config.auth)
        except AuthConfigError as exc:
            logger.warning(
                "surgray: replicas will refuse to start unless their environment "
                "provides API tokens: %s",
                exc,
            )


@serve.deployment(name=DEPLOYMENT_NAME)
@serve.ingress()
class SegmentationServer:
    """One replica: the model, its sessions and the HTTP app (built in the replica)."""

    def __init__(self, config: dict[str, Any], torch_threads: int) -> None:
        from surgray.serving.auth import build_token_checker
        from surgray.serving.http_app import build_app
        from surgray.serving.routing import ReplicaIdentity
        from surgray.serving.service import SegmentationService
        from surgray.serving.tracker_backend import TrackerBackend

        self.config = ServeConfig.from_args(config)
        checker = build_token_checker(self.config.auth)  # first: no model without auth
        import torch

        # Ray sets OMP_NUM_THREADS from num_cpus, but torch keeps its own count: set it.
        torch.set_num_threads(torch_threads)
        identity = ReplicaIdentity.create(serve.get_replica_context().replica_id.unique_id)
        self.backend = TrackerBackend.from_config(self.config)
        self.service = SegmentationService(self.backend, self.config, identity=identity)
        self._app = build_app(self.service, checker, require_routing_header=True)
        self._stop = threading.Event()
        interval = min(30.0, max(1.0, self.config.sessions.idle_timeout_s / 4))
        self._sweeper = threading.Thread(
            target=self._sweep_every, args=(interval,), name="session-sweeper", daemon=True
        )
        self._sweeper.start()
        logger.info(
            "surgray replica %s: model %s, %d torch threads, up to %d sessions, batches of %d",
            identity.replica_id,
            self.backend.models()[0].model_dump(),
            torch_threads,
            self.config.sessions.max_per_replica,
            self.config.batching.max_batch_size,
        )

    def __serve_build_asgi_app__(self):
        return self._app

    def stats(self) -> dict[str, Any]:
        """Replica counters (for benchmarks and operators, through a deployment handle)."""
        batches = self.backend.batcher.stats
        return {
            "replica": self.service.identity.replica_id,
            "sessions": len(self.service.store),
            "batches": batches.batches,
            "frames": batches.items,
            "largest_batch": batches.largest,
            "mean_batch": round(batches.mean_size, 3),
        }

    def _sweep_every(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                expired = self.service.store.sweep()
                if expired:
                    logger.info("surgray: %d idle sessions expired", len(expired))
            except Exception:
                logger.exception("surgray: sweeping idle sessions failed")

    async def __del__(self):
        # Also runs after a failed __init__, so every attribute may be missing.
        if hasattr(self, "_stop"):
            self._stop.set()
        if hasattr(self, "service"):
            self.service.shutdown()
        if hasattr(self, "backend"):
            self.backend.close()
        parent = getattr(super(), "__del__", None)  # the ASGI wrapper's lifespan shutdown
        if parent is not None:
            await parent()


def build_app_from_args(args: dict[str, Any]):
    """The Serve application for `args` (see the module docstring)."""
    config, actor_options = resolve_args(args)
    _check_auth_configured(config)
    if "http" in config.model_fields_set:  # given by host=/port=, an http section or a file
        from serve.http_start import ensure_serve_http

        ensure_serve_http(config.http)
    threads = max(1, math.floor(float(actor_options.get("num_cpus", 1) or 1)))
    deployment = SegmentationServer.options(
        num_replicas=config.replicas,
        ray_actor_options=actor_options,
        # A session sends one request at a time; leave room for creates and /v1/models.
        max_ongoing_requests=2 * config.sessions.max_per_replica + 8,
        request_router_config=RequestRouterConfig(request_router_class=SessionAffinityRouter),
    )
    return deployment.bind(config.model_dump(mode="json"), threads)


app = build_app_from_args
