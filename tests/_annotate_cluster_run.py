"""Runs the annotate job on a Ray cluster of three nodes on this machine, and loses one.

Started by `tests/test_annotate_cluster.py` as its own process, so that the cluster, its
driver connection and the node it kills never touch the test process's own Ray:

    python tests/_annotate_cluster_run.py --config A.yaml --kill-config B.yaml --report R.json

1. A head node with no CPUs (it only coordinates, as on a real cluster whose head has no GPU)
   and two worker nodes of 2 CPUs each, started by `ray.cluster_utils.Cluster`, which stops
   each node by its own processes (never a machine-wide `ray stop`).
2. Job A (`--config`): `surgray annotate --ray-address <head>` as a separate driver process;
   while it runs, the nodes that hold annotator actors are recorded.
3. Job B (`--kill-config`): the same, and once a video is complete and another is in flight
   on the second worker, that worker node's processes are SIGKILLed (`allow_graceful=False`).
   The job must still finish; what it wrote is checked by the test.

The report (JSON) gives each job's exit code, log tail, the actor nodes, and the kill time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The pool's actor class: PlanningAnnotator in the annotate job (SegmentAnnotator, its base,
# in the evaluation job); Ray Data names the actor after it.
ANNOTATORS = ("PlanningAnnotator", "SegmentAnnotator")
JOB_TIMEOUT_S = 420  # a loaded machine slows the node-loss run 3-4x (seen: 240 s was not enough)


def _annotator_nodes() -> set[str]:
    """Node ids of the live actors of the annotator pool (any job)."""
    import ray

    nodes = set()
    for actor in ray._private.state.actors().values():
        name = actor.get("ActorClassName", "")
        if any(a in name for a in ANNOTATORS) and actor["State"] == "ALIVE":
            nodes.add(actor["Address"]["NodeID"])
    return nodes


def _start_job(config: str, address: str, log_path: Path) -> tuple[subprocess.Popen, object]:
    log = open(log_path, "wb")
    env = dict(os.environ, RAY_ADDRESS=address)
    job = subprocess.Popen(
        [sys.executable, "-m", "surgray.cli", "annotate", "--config", config],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return job, log


def _finish(job: subprocess.Popen, log, log_path: Path, deadline: float) -> dict:
    try:
        code = job.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        job.kill()
        code = job.wait(timeout=30)
        code = f"timed out ({code})"
    log.close()
    text = log_path.read_text(errors="replace")
    # The job's own progress lines in full (Ray's log dumps can push them out of the tail).
    progress = [line for line in text.splitlines() if line.startswith("[annotate]")]
    return {"exit": code, "log": text[-4000:], "progress": progress}


def _done_and_running(output: Path) -> tuple[set[str], set[str]]:
    done = {p.stem for p in (output / "_done").glob("*.json")}
    started = {p.name.split("=", 1)[1] for p in (output / "masks").glob("video_id=*")}
    return done, started - done


def run_plain(config: str, address: str, workdir: Path) -> dict:
    """Job A: record which nodes hold annotators while the job runs."""
    job, log = _start_job(config, address, workdir / "job-a.log")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    nodes: set[str] = set()
    while job.poll() is None and time.monotonic() < deadline:
        nodes |= _annotator_nodes()
        time.sleep(0.2)
    result = _finish(job, log, workdir / "job-a.log", deadline)
    result["annotator_nodes"] = sorted(nodes)
    return result


def run_with_node_loss(config: str, output: Path, cluster, victim, workdir: Path) -> dict:
    """Job B: kill `victim` once one video is complete and another is in flight on it."""
    job, log = _start_job(config, cluster.address, workdir / "job-b.log")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    killed_at, in_flight = None, []
    while job.poll() is None and time.monotonic() < deadline:
        done, running = _done_and_running(output)
        if done and running and victim.node_id in _annotator_nodes():
            in_flight = sorted(running)
            cluster.remove_node(victim, allow_graceful=False)
            killed_at = time.monotonic()
            break
        time.sleep(0.1)
    result = _finish(job, log, workdir / "job-b.log", deadline)
    result["killed"] = killed_at is not None
    result["in_flight_at_kill"] = in_flight
    result["seconds_after_kill"] = None if killed_at is None else time.monotonic() - killed_at
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--kill-config", required=True)
    parser.add_argument("--kill-output", required=True, help="output folder of --kill-config")
    parser.add_argument("--report", required=True)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    workdir = Path(args.report).parent
    temp_dir = tempfile.mkdtemp(prefix="sgcl", dir="/tmp")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "temp_dir": temp_dir, "include_dashboard": False},
    )
    report: dict = {}
    try:
        workers = [
            cluster.add_node(num_cpus=2, object_store_memory=150 * 1024**2) for _ in range(2)
        ]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        report["workers"] = [w.node_id for w in workers]
        report["head"] = cluster.head_node.node_id
        report["plain"] = run_plain(args.config, cluster.address, workdir)
        report["node_loss"] = run_with_node_loss(
            args.kill_config, Path(args.kill_output), cluster, workers[1], workdir
        )
    finally:
        Path(args.report).write_text(json.dumps(report, indent=1))
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
