"""The annotate job on several Ray nodes, and with one of them lost mid-job.

A head and two worker nodes run on this machine (`tests/_annotate_cluster_run.py`, its own
process). The same archive is annotated three times:
- on the session's single-node Ray (the reference),
- on the three-node cluster, with annotator actors on both workers: each video's masks must
  be those of the single-node run, row for row;
- on the cluster again, SIGKILLing one worker node's processes while a video is in flight on
  it: the job must exit 0 with every (video, frame, object) row exactly once and no frame
  missing, the lost videos redone elsewhere, in exactly one re-run whose fresh pool is not
  placed on the dead node (`surgray.annotate.node_loss`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.outputs import OutputLayout, read_marker
from surgray.annotate.rows import read_mask_rows
from surgray.data.synthetic import SyntheticClipConfig, generate_clip
from surgray.data.synthetic_writers import write_clip_video
from surgray.io.masks import encode_rle
from surgray.io.storage import LOCAL
from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
FRAMES = 40
VIDEOS = 6
PLAIN = dict(leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)
MASK_COLUMNS = ("frame_idx", "obj_id", "rle_counts", "bbox", "area", "score")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-archive")
    rows = []
    for n in range(VIDEOS):
        cfg = SyntheticClipConfig(num_frames=FRAMES, height=SIZE, width=SIZE, **PLAIN)
        clip = generate_clip(cfg, seed=100 + n)
        uri = str(root / f"case{n}.mp4")
        write_clip_video(clip, uri)
        first = clip.masks[0]
        objects = []
        for obj in sorted(int(v) for v in np.unique(first) if v)[:2]:
            rle = encode_rle((first == obj)[None])[0]
            objects.append({"obj_id": obj, "frame": 0, "mask_rle": rle})
        rows.append(
            {"video_uri": uri, "video_id": f"case{n}", "prompts": json.dumps({"objects": objects})}
        )
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    checkpoint = root / "micro.pt"
    save_checkpoint(build_model("micro", image_size=SIZE), str(checkpoint))
    return root, manifest, checkpoint


def _config(archive, out: Path, num_cpus: float) -> dict:
    _, manifest, checkpoint = archive
    return {
        "inputs": {"manifest": str(manifest)},
        "output": {"prefix": str(out), "rows_per_part": 20},
        "model": {"variant": "micro", "checkpoint": str(checkpoint), "image_size": SIZE},
        "actors": {"count": 2, "num_cpus": num_cpus, "torch_threads": 1},
        "batching": {"videos_per_step": 1},
        "privacy": {"hash_video_ids": False},
        "exports": ["parquet"],
    }


def _mask_rows(out: Path) -> dict[str, list[tuple]]:
    """video id -> its rows' mask columns, from the parts its completion marker vouches for."""
    layout = OutputLayout(str(out), storage=LOCAL)
    videos = {}
    for n in range(VIDEOS):
        video_id = f"case{n}"
        marker = read_marker(layout, video_id)
        assert marker is not None, f"{video_id} is not complete under {out}"
        rows = read_mask_rows(layout, video_id, marker.parts, columns=list(MASK_COLUMNS))
        videos[video_id] = [tuple(str(r[c]) for c in MASK_COLUMNS) for r in rows]
    return videos


def _every_key_once(out: Path) -> list[tuple[str, int, int]]:
    """Every (video, frame, object) key in every Parquet file under masks/, listed or not."""
    keys = []
    for path in sorted((out / "masks").rglob("*.parquet")):
        table = pq.read_table(path, columns=["video_id", "frame_idx", "obj_id"])
        keys += list(zip(*(table.column(c).to_pylist() for c in table.column_names)))
    return keys


@pytest.fixture(scope="module")
def single_node(archive, ray_cluster, tmp_path_factory):  # noqa: F811
    from surgray.annotate.pipeline import run_annotate

    out = tmp_path_factory.mktemp("single") / "out"
    outcome = run_annotate(AnnotateConfig.from_dict(_config(archive, out, 0.5)))
    assert outcome.summary.done == VIDEOS, outcome.report()
    return out


@pytest.fixture(scope="module")
def cluster_runs(archive, tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    plain_out, killed_out = work / "plain", work / "killed"
    paths = []
    for name, out in (("plain", plain_out), ("killed", killed_out)):
        path = work / f"{name}.yaml"
        # One whole CPU per actor on 2-CPU workers: Ray Data spreads the two actors over the
        # two workers, and after a node is lost the survivor has room for the restarted one.
        path.write_text(yaml.safe_dump(_config(archive, out, 1.0)))
        paths.append(str(path))
    report = work / "report.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests" / "_annotate_cluster_run.py"),
            "--config", paths[0],
            "--kill-config", paths[1],
            "--kill-output", str(killed_out),
            "--report", str(report),
        ],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert report.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(report.read_text()), plain_out, killed_out


@pytest.mark.ray
@pytest.mark.slow
# The module's cluster runs happen in this test's setup: its limit covers the runner's own 600 s.
@pytest.mark.timeout(660)
def test_job_spreads_over_two_worker_nodes_and_matches_a_single_node_run(cluster_runs, single_node):
    report, plain_out, _ = cluster_runs
    plain = report["plain"]
    assert plain["exit"] == 0, plain["log"]
    assert set(plain["annotator_nodes"]) == set(report["workers"]), plain
    assert _mask_rows(plain_out) == _mask_rows(single_node)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(660)
def test_a_lost_worker_node_loses_no_video_and_duplicates_no_row(cluster_runs, single_node):
    report, _, killed_out = cluster_runs
    lost = report["node_loss"]
    assert lost["killed"], f"the node was never killed: {lost}"
    assert lost["in_flight_at_kill"], lost
    assert lost["exit"] == 0, lost["log"]
    # Exactly one re-run: its fresh pool waited for the lost node to be marked dead (or kept
    # off it), so no actor of it was placed on the dead node and lost again.
    progress = "\n".join(lost["progress"])
    assert "(run 2 of at most" in progress, progress
    assert "(run 3 of at most" not in progress and "given up" not in progress, progress
    assert "1 lost node(s) marked dead" in progress, progress
    keys = _every_key_once(killed_out)
    assert len(keys) == len(set(keys)), "duplicate (video, frame, object) rows"
    expected_rows = _mask_rows(single_node)
    expected_keys = {
        (video, int(row[0]), int(row[1])) for video, rows in expected_rows.items() for row in rows
    }
    assert set(keys) == expected_keys
    # The videos in flight on the lost node were redone from their start: same masks.
    assert _mask_rows(killed_out) == expected_rows
