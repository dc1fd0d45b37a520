"""Runs `surgray train` on a Ray cluster of three nodes on this machine, loses one, adds one.

Started by `tests/test_train_cluster.py` as its own process, so that the cluster, its driver
connection and the node it kills never touch the test process's own Ray:

    python tests/_train_cluster_run.py --config C.yaml --report R.json

1. A head node with no CPUs (it coordinates and holds the driver and Ray Train's controller,
   as on a real cluster whose head has no GPU) and two worker nodes of 2 CPUs each, started by
   `ray.cluster_utils.Cluster`, which stops each node by its own processes (never a
   machine-wide `ray stop`).
2. `surgray train --config C.yaml --address <head>` runs as a separate driver process. While it
   runs, the node of every Ray Train worker process is recorded (pid -> node id, from the
   actor table), so the test can tell which node each progress-file line came from.
3. Once Ray Train has registered a checkpoint and the rank-1 worker is inside a later epoch
   (its latest progress line is a step, not the epoch's last), that worker's node is
   SIGKILLed whole (raylet, object store and every worker process:
   `remove_node(allow_graceful=False)`), and a fresh worker node is added, as a cluster
   autoscaler replaces a lost node to keep its worker count.

The report (JSON) gives the nodes, the driver's exit code and log tail, pid -> node of every
training worker seen, and what was killed when.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

WORKER = "RayTrainWorker"
CONTROLLER = "TrainController"
JOB_TIMEOUT_S = 240
NODE_CPUS = 2


def _train_actors() -> dict[str, dict]:
    """pid -> {node, class} of Ray Train's worker and controller actors, alive or not."""
    import ray

    seen = {}
    for actor in ray._private.state.actors().values():
        name = actor.get("ActorClassName", "")
        if (WORKER in name or CONTROLLER in name) and actor.get("Pid"):
            kind = "worker" if WORKER in name else "controller"
            seen[str(actor["Pid"])] = {"node": actor["Address"]["NodeID"], "kind": kind}
    return seen


def _records(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    # The last line may be half written by a worker at this moment.
    return [json.loads(line) for line in lines if line.strip().endswith("}")]


def registered_epoch(run_dir: Path) -> int:
    """Latest epoch whose checkpoint Ray Train's controller has registered (0: none yet).

    The controller learns of a reported checkpoint when it next polls the workers (every 2 s);
    a worker lost before that poll takes the report with it, so the node is killed only after
    the registration is on disk."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    latest = snapshot.get("latest_checkpoint_result")
    return int(latest["checkpoint_dir_name"].split("_")[1]) if latest else 0


def _victim_step(records: list[dict], registered: int, steps_per_epoch: int) -> dict | None:
    """The current attempt's rank-1 worker's step, if it is now inside an epoch (not its last
    step) after a registered checkpoint: the moment to lose its node mid-epoch."""
    starts = [r for r in records if r["event"] == "start" and r["rank"] == 1]
    if not starts or registered < 1:
        return None
    pid = starts[-1]["pid"]
    latest = [r for r in records if r["pid"] == pid][-1]
    if (
        latest["event"] == "step"
        and latest["epoch"] >= registered
        and latest["step"] < steps_per_epoch - 1
    ):
        return latest
    return None


def run(config_path: str, cluster, workdir: Path) -> dict:
    """The driver, the watcher that kills a node mid-epoch, and the replacement node."""
    config = yaml.safe_load(Path(config_path).read_text())
    progress = Path(config["checkpoint"]["progress_file"])
    run_dir = Path(config["checkpoint"]["storage_path"]) / config["checkpoint"]["name"]
    steps_per_epoch = config["schedule"]["steps_per_epoch"]
    log_path = workdir / "train.log"
    export = workdir / "exported.pt"
    with open(log_path, "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, "-m", "surgray.cli", "train", "--config", config_path,
             "--address", cluster.address, "--export", str(export)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started = time.monotonic()
        deadline = started + JOB_TIMEOUT_S
        actors: dict[str, dict] = {}
        kill: dict | None = None
        while driver.poll() is None and time.monotonic() < deadline:
            actors.update(_train_actors())
            if kill is None:
                registered = registered_epoch(run_dir)
                step = _victim_step(_records(progress), registered, steps_per_epoch)
                node_id = actors.get(str(step["pid"]), {}).get("node") if step else None
                victim = next((n for n in cluster.worker_nodes if n.node_id == node_id), None)
                if victim is not None:
                    cluster.remove_node(victim, allow_graceful=False)
                    killed_at, killed_wall = time.monotonic(), time.time()
                    replacement = cluster.add_node(num_cpus=NODE_CPUS)
                    kill = {
                        "node": node_id,
                        "time": killed_wall,
                        # A report the controller was polling at the kill may have registered
                        # since: the checkpoint a restart must use is the one read now.
                        "registered_before": registered,
                        "registered_epoch": registered_epoch(run_dir),
                        "step": step,
                        "seconds_into_run": killed_at - started,
                        "replacement": replacement.node_id,
                        "replacement_after_s": time.monotonic() - killed_at,
                    }
            time.sleep(0.1)
        try:
            code = driver.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            driver.kill()
            code = f"timed out ({driver.wait(timeout=30)})"
    return {
        "exit": code,
        "seconds": time.monotonic() - started,
        "log": log_path.read_text(errors="replace")[-6000:],
        "actors": actors,
        "kill": kill,
        "export": str(export),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--report", required=True)
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    workdir = Path(args.report).parent
    temp_dir = tempfile.mkdtemp(prefix="sgtr", dir="/tmp")  # short: socket paths must fit
    began = time.monotonic()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "temp_dir": temp_dir, "include_dashboard": False},
    )
    report: dict = {}
    try:
        workers = [
            cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=100 * 1024**2)
            for _ in range(2)
        ]
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        report["head"] = cluster.head_node.node_id
        report["workers"] = [w.node_id for w in workers]
        report["cluster_start_s"] = time.monotonic() - began
        report["train"] = run(args.config, cluster, workdir)
    finally:
        try:
            ray.shutdown()
            cluster.shutdown()
        finally:
            # The nodes' logs stay for a failed run (their folder is in the report).
            if report.get("train", {}).get("exit") == 0:
                shutil.rmtree(temp_dir, ignore_errors=True)
            else:
                report["ray_logs"] = temp_dir
            Path(args.report).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
