"""Shared fixtures: a real S3 server (moto) on 127.0.0.1, a local Ray cluster, temp media."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tests import their own helpers (_local_http, ...) as top-level modules, and the helpers they
# share with the benchmarks from `devtools` at the repository root.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)

from devtools.loopback import start_moto, stop_process  # noqa: E402  (the path entries above)


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
    def storage(self):
        """The `surgray.io.storage.Storage` of this server (s3fs options, keys included)."""
        from surgray.io.storage import Storage

        return Storage(
            {
                "key": self.key,
                "secret": self.secret,
                "endpoint_url": self.endpoint_url,
                "client_kwargs": {"region_name": self.region},
            }
        )

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(**self.storage.options, skip_instance_cache=True)

    def make_bucket(self, name: str) -> str:
        # s3fs sends LocationConstraint; us-west-2 avoids moto's us-east-1 rejection.
        self.filesystem().mkdir(name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server from this venv, on a free loopback port, for the whole session."""
    proc, url = start_moto()
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
        stop_process(proc, timeout_s=10)


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
