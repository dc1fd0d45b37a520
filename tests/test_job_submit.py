"""README "Jobs on Ray": the documented cluster sequence, run as written, under Ray 2.60's
defaults (RAY_AUTH_MODE unset in the test's environment; the README exports RAY_AUTH_MODE=token
and generates the token itself).

The README's block runs verbatim in a copy of the checkout, with a `ray` shell function in
front of it that changes only what a shared test machine needs: `ray start --head` gets its
own ports, temp dir and `--block` (so the head node is this test's child and stops with it),
`ray stop` is replaced by stopping that head node by its PID, and the Jobs API address is the
head's own port (RAY_API_SERVER_ADDRESS). HOME is the test's, so the token the README
generates is the test's own `~/.ray/auth_token`.

Checked: the job succeeds and writes the annotation outputs where `--output` said; the same
submission without the token mode fails with Ray's authentication error; a job whose Python
lacks surgray's packages fails naming them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from _local_http import free_port
from _readme_runner import REPO, _stop_leftovers, copy_checkout, parse_blocks, venv_is_set_up

pytestmark = [
    pytest.mark.skipif(not venv_is_set_up(), reason="the checkout's .venv is not set up"),
    pytest.mark.ray,
    pytest.mark.slow,
]

JOB = "ray job submit"


def cluster_block() -> str:
    blocks = [b for b in parse_blocks((REPO / "README.md").read_text()) if b.lang == "bash"]
    found = [b for b in blocks if JOB in b.code and "ray start --head" in b.code]
    assert len(found) == 1, "README 'Jobs on Ray' must hold one block with the cluster sequence"
    return found[0].code


def ray_wrapper(temp_dir: Path, ports: dict[str, int]) -> str:
    """Shell function `ray` for the README block (see the module docstring)."""
    flags = " ".join(f"--{name} {port}" for name, port in ports.items())
    dashboard = ports["dashboard-port"]
    return f"""
ray() {{
  case "$1" in
    start)
      command ray "$@" --block {flags} --temp-dir {temp_dir} --num-cpus 2 \\
        --disable-usage-stats > {temp_dir}/head.log 2>&1 &
      echo $! > {temp_dir}/head.pid
      for _ in $(seq 180); do
        code=$(curl -s -o /dev/null -w "%{{http_code}}" http://127.0.0.1:{dashboard}/api/version || true)
        [ "$code" != "000" ] && return 0
        kill -0 "$(cat {temp_dir}/head.pid)" 2>/dev/null || {{ cat {temp_dir}/head.log; return 1; }}
        sleep 1
      done
      echo "head node did not answer"; return 1 ;;
    stop) echo "(the test stops its head node by PID)" ;;
    *) command ray "$@" ;;
  esac
}}
"""


@pytest.mark.timeout(900)
def test_readme_cluster_sequence(tmp_path):
    root, home = tmp_path / "checkout", tmp_path / "home"
    home.mkdir()
    copy_checkout(root)
    temp_dir = Path(tempfile.mkdtemp(prefix="rjs", dir="/tmp"))  # short: Ray's socket paths
    names = (
        "port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "node-manager-port", "object-manager-port",
    )  # fmt: skip
    ports = {name: free_port() for name in names}
    low = free_port()
    while any(low <= port <= low + 200 for port in ports.values()):  # Ray refuses overlaps
        low = free_port()
    ports |= {"min-worker-port": low, "max-worker-port": low + 200}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
    env |= {
        "HOME": str(home),
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{ports['dashboard-port']}",
        "SURGRAY_README_QUICK": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    script = ray_wrapper(temp_dir, ports) + cluster_block() + "\n"
    # Then, on the same head node: without the token mode the CLI is refused, and a Python
    # without surgray's packages is named as the problem.
    script += (
        'echo "--- without RAY_AUTH_MODE"\n'
        "(unset RAY_AUTH_MODE; command ray job submit --no-wait -- true) || true\n"
        'echo "--- system python"\n'
        "command ray job submit --working-dir . -- /usr/bin/python3 jobs/annotate.py "
        "--config configs/annotate_demo.yaml || true\n"
    )
    proc = subprocess.Popen(
        ["bash", "-e", "-o", "pipefail", "-c", script], cwd=root, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        output = proc.communicate(timeout=780)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        proc.kill()
        output = proc.communicate()[0].decode(errors="replace")
    finally:
        head = temp_dir / "head.pid"
        if head.exists():  # `ray start --block` stops the node's processes when terminated
            try:
                os.kill(int(head.read_text()), 15)
            except (ProcessLookupError, ValueError):
                pass
        _stop_leftovers(proc.pid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    tail = output[-6000:]
    assert proc.returncode == 0, tail
    summary = json.loads((root / "out" / "job-annotations" / "_summary.json").read_text())
    assert summary["done"] == 1 and summary["failed"] == 0, summary
    assert list((root / "out" / "job-annotations" / "masks").rglob("*.parquet"))
    assert re.search(r"Job '\S+' succeeded", output), tail
    unauthenticated = output.split("--- without RAY_AUTH_MODE")[1].split("--- system python")[0]
    assert "Authentication" in unauthenticated or "auth" in unauthenticated.lower(), tail
    if subprocess.run(["/usr/bin/python3", "-c", "import torch"], capture_output=True).returncode:
        system = output.split("--- system python")[1]
        assert "lacks the package" in system and "cannot write" not in system, system[-3000:]
