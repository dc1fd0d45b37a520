"""Shared fixtures: a real S3 server (moto) on 127.0.0.1, a local Ray cluster, temp media."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tests import shared helpers (sam2_reference) as top-level modules.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _local_http import free_port  # noqa: E402  (found through the path entry above)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Training tests in a module run on one torch thread (Ray workers and the driver share
    the CI machine's two cores); the previous count is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    key: str = "testing"
    secret: str = "testing"
    region: str = "us-west-2"

    @property
    def storage_options(self) -> dict:
        """fsspec/s3fs options for this server."""
        return {
            "key": self.key,
            "secret": self.secret,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": self.region},
        }

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options, skip_instance_cache=True)

    def make_bucket(self, name: str) -> str:
        # s3fs sends LocationConstraint; us-west-2 avoids moto's us-east-1 rejection.
        self.filesystem().mkdir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server from this venv, on a free loopback port, for the whole session."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    server = S3Server(endpoint_url=url)
    env_keys = {
        "AWS_ACCESS_KEY_ID": server.key,
        "AWS_SECRET_ACCESS_KEY": server.secret,
        "AWS_DEFAULT_REGION": server.region,
        "AWS_ENDPOINT_URL": url,
    }
    saved = {k: os.environ.get(k) for k in env_keys}
    os.environ.update(env_keys)
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass(frozen=True)
class RayCluster:
    address: str  # GCS address, for RAY_ADDRESS of a separate driver process
    temp_dir: str


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():  # another module's copy of this fixture started it
        context = ray.get_runtime_context()
        yield RayCluster(context.gcs_address, "")
        return
    temp_dir = tempfile.mkdtemp(prefix="sgray", dir="/tmp")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp_dir,
        object_store_memory=200 * 1024**2,
        ignore_reinit_error=True,
        logging_level="WARNING",
        log_to_driver=False,
        # Workers import this checkout's packages (surgray, serve, jobs) whatever their cwd.
        runtime_env={"env_vars": {"PYTHONPATH": _REPO}},
    )
    try:
        yield RayCluster(ray.get_runtime_context().gcs_address, temp_dir)
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
