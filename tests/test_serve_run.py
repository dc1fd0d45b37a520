"""`serve run` as a user types it (Ray's own CLI, a real subprocess), against the session's Ray:

* `serve run serve.app:app port=P` listens on P (not Serve's default 8000), and the secrets it
  passes with `--runtime-env-json` reach the replicas;
* the API describes itself without a token (`/docs`, `/openapi.json`, with `ErrorBody` as the
  routes' error response) while `/v1` keeps its bearer authentication;
* `serve run configs/serve.yaml` serves the shipped config's checkpoint (a copy of the file that
  only moves its port off 8000 and gives the replicas a token, as a deployment would);
* a config file whose `args.http` disagrees with its `http_options` is refused.

Each test stops Serve afterwards (`serve.shutdown()` from this process), so the next module's
Serve starts with its own HTTP options.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _local_http import REPO, free_port, import_serve_app

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
yaml = pytest.importorskip("yaml")
import_serve_app()

TOKEN = "serve-run-test-token-0123456789"
SERVE_CLI = str(Path(sys.executable).parent / "serve")


@pytest.fixture
def no_serve(ray_cluster):
    """No Serve before the test, none after it (whatever the test started)."""
    from ray import serve

    serve.shutdown()
    yield ray_cluster
    serve.shutdown()


def serve_run(cluster, *args: str, runtime_env: dict | None = None) -> None:
    """`serve run --non-blocking ...` in a subprocess joined to the session's Ray."""
    env = dict(os.environ, RAY_ADDRESS=cluster.address, PYTHONPATH=str(REPO))
    options = ["--non-blocking"]
    if runtime_env is not None:
        options += ["--runtime-env-json", json.dumps(runtime_env)]
    done = subprocess.run(
        [SERVE_CLI, "run", *options, *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"


def wait_healthy(base: str, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base}/healthz", timeout=5)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(1)
    from ray import serve

    raise AssertionError(f"{base} not healthy in {timeout} s ({last}); {serve.status()}")


def test_serve_run_port_argument_docs_without_token_and_bearer_auth(no_serve):
    port = free_port()
    env = {"env_vars": {"SURGRAY_API_TOKENS": TOKEN, "PYTHONPATH": str(REPO)}}
    serve_run(no_serve, "serve.app:app", f"port={port}", "num_cpus=0.25", runtime_env=env)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base)
    docs = httpx.get(f"{base}/docs", timeout=10)
    assert docs.status_code == 200 and "text/html" in docs.headers["content-type"]
    assert "/openapi.json" in docs.text
    assert httpx.get(f"{base}/redoc", timeout=10).status_code == 200
    schema = httpx.get(f"{base}/openapi.json", timeout=10)
    assert schema.status_code == 200
    spec = schema.json()
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error", "message"]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    create = spec["paths"]["/v1/sessions"]["post"]
    for status in ("401", "415", "422"):
        body = create["responses"][status]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/CreateSessionRequest"
    )
    assert create["security"] == [{"bearer": []}]
    # The API itself still wants its token.
    anonymous = httpx.get(f"{base}/v1/models", timeout=10)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "unauthorized"
    models = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert models.status_code == 200
    assert models.json()["models"][0]["variant"] == "micro"  # the shipped demo checkpoint


def test_serve_run_shipped_config_file(no_serve, tmp_path):
    shipped = yaml.safe_load((REPO / "configs/serve.yaml").read_text())
    port = free_port()
    config = json.loads(json.dumps(shipped))  # a deep copy; only the port and secrets change
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["http"]["port"] = port
    app["runtime_env"] = {"env_vars": {"SURGRAY_API_TOKENS": TOKEN, "PYTHONPATH": str(REPO)}}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    serve_run(no_serve, str(path))
    base = f"http://127.0.0.1:{port}"
    wait_healthy(base)
    models = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert models.status_code == 200, models.text
    (model,) = models.json()["models"]
    assert (model["variant"], model["image_size"]) == (
        shipped["applications"][0]["args"]["model"]["variant"],
        shipped["applications"][0]["args"]["model"]["image_size"],
    )
    assert model["text_prompts"] is True  # demo:referring takes text


def test_config_file_http_must_match_http_options(tmp_path):
    from surgray.serving.config import ServeConfig, ServeConfigError

    config = yaml.safe_load((REPO / "configs/serve.yaml").read_text())
    config["applications"][0]["args"]["http"]["port"] = 9001
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ServeConfigError, match=r"args\.http\.port is 9001 but http_options\.port"):
        ServeConfig.from_yaml(path)
    del config["applications"][0]["args"]["http"]  # then http_options alone decide
    path.write_text(yaml.safe_dump(config))
    loaded = ServeConfig.from_yaml(path)
    assert (loaded.http.host, loaded.http.port) == ("127.0.0.1", 8000)
    assert "http" in loaded.model_fields_set


def test_host_and_port_arguments_reach_the_config():
    from serve.app import resolve_args

    config, _ = resolve_args({"insecure": "true", "port": "8123", "host": "0.0.0.0"})
    assert (config.http.host, config.http.port) == ("0.0.0.0", 8123)
    assert "http" in config.model_fields_set
    config, _ = resolve_args({"insecure": "true"})
    assert "http" not in config.model_fields_set  # Serve's address is left alone
    from surgray.serving.config import ServeConfigError

    with pytest.raises(ServeConfigError, match=r"http\.port"):
        resolve_args({"insecure": "true", "port": "99999"})
