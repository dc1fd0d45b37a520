"""`surgray train` on two Ray worker nodes, one node lost mid-epoch, a replacement node added.

A head (0 CPUs) and two worker nodes of 2 CPUs run on this machine
(`tests/_train_cluster_run.py`, its own process). `surgray train` runs 2 workers with
`scaling.placement_strategy: STRICT_SPREAD`, one worker per node, as on a GPU cluster with one
GPU per node; PACK would put both on one node, which has room for two. Once Ray Train has
registered a checkpoint and rank 1 is inside a later epoch (between two of its steps), that
worker's node is SIGKILLed whole (raylet, object store, worker processes), and a new worker
node joins.

How a real cluster behaves, and what this test stands for: Ray Train counts the lost worker
against `failure.max_failures`, tears the worker group down and asks for a new placement
group; with STRICT_SPREAD the surviving node cannot take both workers, so the request waits
(up to Ray Train's worker-group start timeout, 60 s, then retries) until the autoscaler,
which launches nodes for pending resource demand and to keep its `min_workers`, has added
one. The test adds that node itself right after the kill, as the autoscaler would (there is
no cloud here to launch one). The workers restart on the survivor and the new node from the
last registered checkpoint: the epoch and the global step counter continue from it.

Checkpoints go to a local folder, which every node here shares (one machine); a real
multi-node run needs `checkpoint.storage_path` on object storage or a shared file system.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EPOCHS, STEPS = 4, 6


def test_placement_strategy_is_validated_and_reaches_ray_train():
    from surgray.train.config import TrainConfigError, parse_train_config
    from surgray.train.run import build_trainer

    assert parse_train_config({}).scaling.placement_strategy == "PACK"  # Ray's own default
    config = parse_train_config(
        {"scaling": {"num_workers": 2, "placement_strategy": "strict_spread"}}
    )
    assert config.scaling.placement_strategy == "STRICT_SPREAD"
    assert build_trainer(config).scaling_config.placement_strategy == "STRICT_SPREAD"
    with pytest.raises(TrainConfigError, match="scaling.placement_strategy") as caught:
        parse_train_config({"scaling": {"placement_strategy": "EVERYWHERE"}})
    assert "STRICT_SPREAD" in str(caught.value)  # the message lists what is allowed


def test_a_bad_placement_strategy_is_one_line_exit_2(capsys):
    from surgray import cli

    argv = ["train", "--config", str(REPO / "configs" / "train_demo.yaml"), "--check-only",
            "--set", "scaling.placement_strategy=EVERYWHERE"]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scaling.placement_strategy" in err, err


def _config(work: Path) -> dict:
    return {
        "model": {"variant": "micro", "image_size": 64},
        "data": {
            "source": "synthetic",
            "synthetic": {
                "train_videos": 4, "valid_videos": 1, "num_frames": 8, "height": 64, "width": 64,
            },
        },
        "sampling": {
            "clip_length": 3, "max_objects": 2,
            "hybrid_random_frames": 2, "hybrid_consecutive_frames": 1,
        },
        "prompts": {"num_correction_clicks": 1},
        "schedule": {"epochs": EPOCHS, "steps_per_epoch": STEPS, "log_every": STEPS},
        "scaling": {
            "num_workers": 2, "cpus_per_worker": 1, "torch_threads": 1,
            "placement_strategy": "STRICT_SPREAD",
        },
        "validation": {"every_epochs": EPOCHS, "max_videos": 1, "max_frames": 4},
        "checkpoint": {
            "storage_path": str(work / "runs"), "name": "node-loss", "keep": 2,
            "progress_file": str(work / "progress.jsonl"),
        },
        "failure": {"max_failures": 2},
    }  # fmt: skip


@pytest.fixture(scope="module")
def node_loss_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("train-cluster")
    config = _config(work)
    path = work / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    report = work / "report.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled")
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "_train_cluster_run.py"),
         "--config", str(path), "--report", str(report)],
        env=env, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert report.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    records = [
        json.loads(line)
        for line in Path(config["checkpoint"]["progress_file"]).read_text().splitlines()
        if line.strip()
    ]
    return json.loads(report.read_text()), records, work


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(480)
def test_training_resumes_on_a_replacement_node_after_losing_one(node_loss_run):
    from surgray.model.checkpoints.sam2_checkpoint import load_checkpoint
    from surgray.model.checkpoints.variants import get_variant
    from surgray.model.sam2.network import SAM2Model

    report, records, work = node_loss_run
    train = report["train"]
    kill = train["kill"]
    assert kill, f"no worker node was killed: {train['log']}"
    assert train["exit"] == 0, train["log"]
    node_of = {int(pid): seen["node"] for pid, seen in train["actors"].items()}
    controllers = {s["node"] for s in train["actors"].values() if s["kind"] == "controller"}
    assert controllers == {report["head"]}  # the driver's node, never lost

    starts = [r for r in records if r["event"] == "start"]
    first = {r["rank"]: r for r in starts if r["resumed_from_epoch"] == 0}
    resumed = {r["rank"]: r for r in starts if r["resumed_from_epoch"] > 0}
    assert sorted(first) == sorted(resumed) == [0, 1], starts
    assert len(starts) == 4  # one restart of the group, no other
    # First attempt: one worker on each worker node; rank 1's node is the one killed.
    first_nodes = [node_of[first[rank]["pid"]] for rank in (0, 1)]
    assert sorted(first_nodes) == sorted(report["workers"])
    assert first_nodes[1] == kill["node"]
    # After the loss: the survivor and the replacement, one worker each.
    survivor = next(n for n in report["workers"] if n != kill["node"])
    resumed_nodes = {node_of[resumed[rank]["pid"]] for rank in (0, 1)}
    assert resumed_nodes == {survivor, kill["replacement"]}

    # Lost mid-epoch: the node went while rank 1 was between two steps of an epoch (after a
    # registered checkpoint) that it never finished.
    killed_pid, killed_epoch = first[1]["pid"], kill["step"]["epoch"]
    assert kill["step"]["pid"] == killed_pid and kill["step"]["step"] < STEPS - 1
    finished = [r["epoch"] for r in records if r["pid"] == killed_pid and r["event"] == "epoch"]
    assert max(finished, default=-1) < killed_epoch
    registered = kill["registered_epoch"]
    assert 1 <= kill["registered_before"] <= registered <= killed_epoch

    # Resumed from that checkpoint: the epoch and the global step counter continue from it
    # (not from 0), and every step after it is done once.
    assert all(resumed[rank]["resumed_from_epoch"] == registered for rank in (0, 1))
    rank0_after = [r for r in records if r["rank"] == 0 and r["time"] > resumed[0]["time"]]
    steps_after = [r["global_step"] for r in rank0_after if r["event"] == "step"]
    assert steps_after == list(range(registered * STEPS + 1, EPOCHS * STEPS + 1))
    epochs_after = [r["epoch"] for r in rank0_after if r["event"] == "epoch"]
    assert epochs_after == list(range(registered, EPOCHS))

    # The run's final checkpoint and the model `--export` copied from it load strictly.
    assert (
        f"latest checkpoint {work / 'runs' / 'node-loss' / f'epoch_{EPOCHS:04d}'}" in (train["log"])
    )
    for model_file in (work / "runs" / "node-loss" / f"epoch_{EPOCHS:04d}" / "model.pt",
                       Path(train["export"])):  # fmt: skip
        loaded = load_checkpoint(SAM2Model(get_variant("micro", image_size=64)), model_file)
        assert loaded.initialised == []
        assert loaded.metadata["epoch"] == EPOCHS
