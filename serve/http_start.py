"""Make Ray Serve's HTTP proxy listen where the surgray config says (`http.host`, `http.port`).

Serve's proxies take their host and port once, when Serve starts on a cluster:
- `serve deploy FILE` / `serve run FILE` use the file's top-level `http_options` (Ray 2.60's
  `ServeDeploySchema`); `ServeConfig.from_yaml` refuses a file whose `args.http` says otherwise,
  so the two never disagree;
- `serve run serve.app:app port=8123 host=0.0.0.0` calls the application builder in the CLI's
  own process before it connects to Ray and starts Serve with default options (127.0.0.1:8000).
  So when `http` was given (`host=`/`port=`, an `http` section, or `config=FILE`), the builder
  connects to Ray as `serve run` would (its `--address`, `--runtime-env(-json)` and
  `--working-dir`, read from the running click command) and starts Serve with those options;
  `serve run` then finds Serve running and deploys onto it.
- A script that builds the app while connected to Ray without Serve running gets Serve started
  the same way; with Serve already running, a different host or port is logged as a warning
  (Serve keeps the options it started with).
"""

from __future__ import annotations

import logging
from typing import Any

from surgray.serving.config import HttpConfig

logger = logging.getLogger("ray.serve")


def _serve_run_params() -> dict[str, Any]:
    """The options of the `serve run` command running this builder, or {} elsewhere."""
    try:
        import click
    except ImportError:  # pragma: no cover - Ray's CLI depends on click
        return {}
    context = click.get_current_context(silent=True)
    return dict(context.params) if context is not None else {}


def _connect_as_serve_run(params: dict[str, Any]) -> None:
    import ray
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
    from ray.serve._private.constants import SERVE_NAMESPACE

    runtime_env = parse_runtime_env_args(
        runtime_env=params.get("runtime_env"),
        runtime_env_json=params.get("runtime_env_json"),
        working_dir=params.get("working_dir"),
    )
    ray.init(address=params.get("address"), namespace=SERVE_NAMESPACE, runtime_env=runtime_env)


def _in_ray_worker() -> bool:
    """True inside a Ray task or actor (e.g. the controller building a deployed config)."""
    from ray._private import worker

    return worker.global_worker.mode == worker.WORKER_MODE


def ensure_serve_http(http: HttpConfig) -> None:
    """Start Serve listening on `http.host:http.port`, or check that a running Serve does."""
    import ray
    from ray import serve
    from ray.serve.config import ProxyLocation

    if ray.is_initialized() and _in_ray_worker():
        return  # `serve deploy`: the file's http_options decide (validated equal to args.http)
    if not ray.is_initialized():
        _connect_as_serve_run(_serve_run_params())
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        serve.start(
            proxy_location=ProxyLocation.EveryNode,  # what `serve run` uses
            http_options={"host": http.host, "port": http.port},
        )
        logger.info("surgray: Serve's HTTP proxy listens on %s:%d", http.host, http.port)
        return
    running = client.http_config
    if (running.host, running.port) != (http.host, http.port):
        logger.warning(
            "surgray: Serve already listens on %s:%s, not the configured %s:%d; HTTP options "
            "apply when Serve starts (shut Serve down, or set the config file's http_options)",
            running.host,
            running.port,
            http.host,
            http.port,
        )
