"""Ray Train end to end: 2 CPU workers on a local cluster, a worker killed mid-epoch, resume.

The loop appends {event, pid, rank, epoch, step} lines to a progress file; a watcher thread
kills the rank-1 worker process (SIGKILL, by PID) during the second epoch. Ray Train restarts
the worker group from the last reported checkpoint (end of the first epoch), which the progress
file shows as a second "start" event that resumes at epoch 1.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # a session-wide cluster started by another module
        yield ray
        return
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp,
        # Workers import this checkout's package, whatever their working directory.
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def _records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _registered_epoch(run_dir: Path) -> int:
    """Latest epoch whose checkpoint Ray Train's controller has registered (0: none yet).

    The controller learns of a reported checkpoint when it next polls the workers (every 2 s);
    a worker that dies before that poll takes the report with it, so the test kills only
    after the registration is on disk."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    return int(latest["checkpoint_dir_name"].split("_")[1]) if latest else 0


def _kill_rank1_mid_epoch(
    progress: Path, run_dir: Path, killed: list, stop: threading.Event
) -> None:
    """SIGKILL the rank-1 worker while it trains in an epoch after a registered checkpoint."""
    while not stop.is_set():
        registered = _registered_epoch(run_dir)
        if registered >= 1:
            for record in _records(progress):
                if (
                    record["event"] == "step"
                    and record["rank"] == 1
                    and record["epoch"] >= registered
                ):
                    os.kill(record["pid"], signal.SIGKILL)
                    killed.append({**record, "registered": registered})
                    return
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_two_workers_train_checkpoint_survive_a_killed_worker(ray_cluster, tmp_path):
    from surgray.model.checkpoints.sam2_checkpoint import load_checkpoint
    from surgray.model.checkpoints.variants import get_variant
    from surgray.model.sam2.network import SAM2Model
    from surgray.train.checkpoints import MODEL_FILE, load_trained_model
    from surgray.train.config import parse_train_config
    from surgray.train.preflight import preflight
    from surgray.train.run import build_trainer

    progress = tmp_path / "progress.jsonl"
    config = parse_train_config(
        {
            "model": {"variant": "micro", "image_size": 64},
            "data": {
                "source": "synthetic",
                "synthetic": {
                    "train_videos": 4, "valid_videos": 1, "num_frames": 8,
                    "height": 64, "width": 64,
                },
            },
            "sampling": {
                "clip_length": 3, "max_objects": 2,
                "hybrid_random_frames": 2, "hybrid_consecutive_frames": 1,
            },
            "prompts": {"num_correction_clicks": 1},
            "optim": {"base_lr": 1e-3, "vision_lr": 1e-3, "grad_clip_norm": 1.0},
            "schedule": {"epochs": 3, "steps_per_epoch": 4, "log_every": 4},
            "scaling": {"num_workers": 2, "cpus_per_worker": 0.5, "torch_threads": 1},
            "validation": {"every_epochs": 3, "max_videos": 1, "max_frames": 4},
            "checkpoint": {
                "storage_path": str(tmp_path / "runs"), "name": "kill-test", "keep": 2,
                "progress_file": str(progress),
            },
            "failure": {"max_failures": 2},
        }
    )  # fmt: skip
    preflight(config)
    killed: list[dict] = []
    stop = threading.Event()
    watcher = threading.Thread(
        target=_kill_rank1_mid_epoch,
        args=(progress, tmp_path / "runs" / "kill-test", killed, stop),
        daemon=True,
    )
    watcher.start()
    try:
        result = build_trainer(config).fit()
    finally:
        stop.set()
        watcher.join(timeout=5)

    assert result.error is None
    assert killed, "the watcher never saw rank 1 train after a registered checkpoint"
    records = _records(progress)
    starts = [r for r in records if r["event"] == "start" and r["rank"] == 0]
    # First attempt from scratch, then one restart from the last checkpointed epoch.
    assert starts[0]["resumed_from_epoch"] == 0
    assert len(starts) == 2
    assert starts[1]["resumed_from_epoch"] == killed[0]["registered"] <= killed[0]["epoch"]
    assert killed[0]["pid"] not in {r["pid"] for r in records if r["time"] > starts[1]["time"]}

    epochs = {r["epoch"]: r for r in records if r["event"] == "epoch" and r["rank"] == 0}
    assert sorted(epochs) == [0, 1, 2]
    assert epochs[2]["loss"] <= 0.8 * epochs[0]["loss"]

    assert result.metrics["epoch"] == 3
    assert result.metrics["global_step"] == 12
    assert 0.0 <= result.metrics["val_jf"] <= 1.0
    kept = sorted(p.name for p in (tmp_path / "runs" / "kill-test").glob("epoch_*"))
    assert kept == ["epoch_0002", "epoch_0003"]  # keep: 2

    with result.checkpoint.as_directory() as folder:
        model = load_trained_model(folder)
        assert model.image_size == 64
        fresh = SAM2Model(get_variant("micro", image_size=64))
        report = load_checkpoint(fresh, Path(folder) / MODEL_FILE)  # strict
        assert report.initialised == []
        assert report.metadata["epoch"] == 3


@pytest.mark.timeout(240)
def test_checkpoints_go_to_object_storage(ray_cluster, s3_server, tmp_path):
    from surgray.model.checkpoints.sam2_checkpoint import load_checkpoint
    from surgray.model.checkpoints.variants import get_variant
    from surgray.model.sam2.network import SAM2Model
    from surgray.train.checkpoints import MODEL_FILE
    from surgray.train.config import parse_train_config
    from surgray.train.preflight import preflight
    from surgray.train.run import build_trainer

    bucket = s3_server.make_bucket("surgray-train")
    config = parse_train_config(
        {
            "model": {"variant": "micro", "image_size": 64},
            "data": {
                "source": "synthetic",
                "synthetic": {"train_videos": 2, "num_frames": 4, "height": 64, "width": 64},
            },
            "sampling": {"clip_length": 2, "max_objects": 1, "hybrid_fraction": 0.0},
            "prompts": {"num_correction_clicks": 0},
            "schedule": {"epochs": 1, "steps_per_epoch": 2},
            "scaling": {"num_workers": 1, "cpus_per_worker": 0.5, "torch_threads": 1},
            "validation": {"every_epochs": 0},
            "checkpoint": {
                "storage_path": f"{bucket}/runs",
                "name": "s3-run",
            },
            "storage": {"endpoint_url": s3_server.endpoint_url, "region": s3_server.region},
        }
    )
    preflight(config)
    result = build_trainer(config).fit()
    assert result.error is None and result.metrics["global_step"] == 2
    fs = s3_server.filesystem()
    stored = f"surgray-train/runs/s3-run/epoch_0001/{MODEL_FILE}"
    assert fs.exists(stored)
    local = tmp_path / MODEL_FILE
    fs.get(stored, str(local))
    load_checkpoint(SAM2Model(get_variant("micro", image_size=64)), local)  # strict
