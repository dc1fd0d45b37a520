"""The local Ray that `surgray annotate` starts runs its workers (the model actor) at the
driver's priority, not Ray's default nice +15, which on a shared machine halved the job's
speed against a plain loop (benchmarks/README.md, archive throughput)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import os, shutil, sys, tempfile
from surgray.annotate.pipeline import connect_ray
import ray

temp_dir = tempfile.mkdtemp(prefix="sgr-nice-", dir="/tmp")  # short: Ray's socket paths
assert connect_ray(num_cpus=1, temp_dir=temp_dir)

@ray.remote(num_cpus=0.5)
def priority():
    return os.getpriority(os.PRIO_PROCESS, 0)

try:
    print("PRIORITIES", os.getpriority(os.PRIO_PROCESS, 0), ray.get(priority.remote(), timeout=120))
finally:
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
"""


def _priorities(extra_env: dict[str, str]) -> tuple[int, int]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **extra_env}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("PRIORITIES"))
    driver, worker = (int(v) for v in line.split()[1:])
    return driver, worker


@pytest.mark.timeout(300)
def test_workers_of_the_local_ray_run_at_the_drivers_priority():
    driver, worker = _priorities({})
    assert worker == driver


@pytest.mark.timeout(300)
def test_a_users_ray_worker_niceness_is_kept():
    driver, worker = _priorities({"RAY_worker_niceness": "7"})
    assert worker == min(19, driver + 7)
