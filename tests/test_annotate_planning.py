"""Planning streamed in the pipeline (issue 23): the driver opens no video before the job
starts; probing, prompt checks and segments happen in `surgray.annotate.plan_stage`, whose
outcome rows (rejected, unreadable) reach the driver through the actor pool; and the actors
track the first videos while a later one is still being planned.

The last test proves the streaming without timing anything: the archive's last video is a
named pipe (FIFO), whose probe blocks until someone writes to it. The test writes to it only
after the first video's completion marker is on disk, which cannot happen if the whole
archive had to be planned first.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pyarrow as pa
import pytest

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.plan_stage import (
    OUTCOME_COLUMN,
    PlanOutcome,
    PlanSettings,
    outcome_of,
    plan_rows,
)
from surgray.io.storage import LOCAL

SIZE, FRAMES = 64, 4
PLAIN = dict(leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)


@pytest.fixture(scope="module")
def clip_video(tmp_path_factory):
    from surgray.data.synthetic import SyntheticClipConfig, generate_clip
    from surgray.data.synthetic_writers import write_clip_video

    folder = tmp_path_factory.mktemp("planning")
    clip = generate_clip(
        SyntheticClipConfig(num_frames=FRAMES, height=SIZE, width=SIZE, **PLAIN), seed=3
    )
    path = folder / "clip.mp4"
    write_clip_video(clip, str(path))
    checkpoint = folder / "micro.pt"
    from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

    save_checkpoint(build_model("micro", image_size=SIZE), str(checkpoint))
    return path, checkpoint


def _box(frame: int = 0) -> dict:
    return {"objects": [{"obj_id": 1, "frame": frame, "box": [8, 8, 40, 40]}]}


def _config(tmp_path, rows: list[dict], checkpoint, **changes) -> AnnotateConfig:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {
        "inputs": {"manifest": str(manifest)},
        "output": {"prefix": str(tmp_path / "out")},
        "model": {"variant": "micro", "checkpoint": str(checkpoint), "image_size": SIZE},
        "actors": {"count": 1, "num_cpus": 0.5, "torch_threads": 1},
        "privacy": {"hash_video_ids": False},
        "exports": ["parquet"],
        **changes,
    }
    return AnnotateConfig.from_dict(data)


def _good_garbage_and_late(tmp_path, video) -> list[dict]:
    """Manifest rows: a good video, bytes that are no video, and a prompt past the last frame."""
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\0not a video" * 50)
    late = tmp_path / "late.mp4"
    shutil.copy(video, late)
    return [
        {"video_uri": str(video), "video_id": "good", "prompts": _box()},
        {"video_uri": str(garbage), "video_id": "garbage", "prompts": _box()},
        {"video_uri": str(late), "video_id": "late", "prompts": _box(frame=FRAMES + 5)},
    ]


def test_the_driver_opens_no_video_and_planning_finds_what_the_driver_found(tmp_path, clip_video):
    from surgray.annotate.driver import local_work_rows, prepare_job

    video, checkpoint = clip_video
    rows = [
        *_good_garbage_and_late(tmp_path, video),
        {"video_uri": str(tmp_path / "missing.mp4"), "video_id": "missing", "prompts": _box()},
    ]
    plan = prepare_job(_config(tmp_path, rows, checkpoint))
    # Every video goes to the pipeline: nothing was probed, nothing found unreadable yet.
    assert plan.streamed and plan.unreadable == () and plan.infos == {}
    assert [r["video_id"] for r in plan.rows] == ["good", "garbage", "late", "missing"]
    planned = local_work_rows(plan)
    kinds = [(r["video_id"], r["segment_index"], r[OUTCOME_COLUMN]) for r in planned]
    assert kinds == [
        ("good", 0, ""),
        ("garbage", -1, "unreadable"),
        ("late", -1, "rejected"),
        ("missing", -1, "unreadable"),
    ]
    assert pa.Table.from_pylist(planned).num_rows == 4  # one schema for work and outcomes
    late = next(r for r in planned if r["video_id"] == "late")
    outcome = PlanOutcome.from_json("late", late["plan_outcome_json"])
    assert outcome.kind == "rejected" and "past the end of the video" in outcome.reason
    assert outcome.errors[0].row == 3 and outcome.errors[0].video_id == "late"
    result = {"video_id": "late", "segment_index": -1, "error": late["plan_outcome_json"]}
    assert outcome_of(result) == outcome
    assert outcome_of({"video_id": "good", "segment_index": 0, "error": ""}) is None
    assert all(str(tmp_path) not in r["plan_outcome_json"] for r in planned)  # ids, no paths


def test_plan_rows_probes_only_what_planning_needs(clip_video):
    from surgray.annotate.config import FramesConfig

    video, _ = clip_video

    def row(video_id: str, uri: str) -> dict:
        return {
            "video_id": video_id,
            "video_uri": uri,
            "prompts_json": json.dumps({"texts": ["grasper"], "objects": []}),
            "manifest_row": 1,
            "provenance_json": "{}",
        }

    # Text prompts and no segmenting: one work item, the video never opened.
    (item,) = plan_rows([row("v", "/nowhere/v.mp4")], PlanSettings(None, 1, FramesConfig(), LOCAL))
    assert (item["segment_index"], item["num_segments"], item["end_frame"]) == (0, 1, -1)
    assert item["provenance_json"] == "{}" and item[OUTCOME_COLUMN] == ""
    # Segmenting: the video is probed (4 frames) and cut in pieces of at most 2 frames.
    settings = PlanSettings(2, 1, FramesConfig(), LOCAL)
    items = plan_rows([row("t", str(video))], settings)
    bounds = [(i["segment_index"], i["num_segments"], i["start_frame"]) for i in items]
    assert bounds == [(0, 2, 0), (1, 2, 2)]


@pytest.mark.ray
def test_tracking_starts_while_a_later_video_is_still_being_planned(
    ray_cluster, tmp_path, clip_video
):
    from surgray.annotate.pipeline import PLAN_VIDEOS, run_annotate

    video, checkpoint = clip_video
    fifo = tmp_path / "blocked.mp4"
    os.mkfifo(fifo)
    rows = []
    for n in range(PLAN_VIDEOS):  # the first planning task's videos
        copy = tmp_path / f"v{n}.mp4"
        shutil.copy(video, copy)
        rows.append({"video_uri": str(copy), "video_id": f"v{n}", "prompts": _box()})
    rows.append({"video_uri": str(fifo), "video_id": "blocked", "prompts": _box()})
    config = _config(tmp_path, rows, checkpoint)
    assert len(rows) == len(set(r["video_uri"] for r in rows))
    done = tmp_path / "out" / "_done"
    outcome: dict = {}
    job = threading.Thread(target=lambda: outcome.update(result=run_annotate(config)))
    job.start()
    try:
        deadline = time.monotonic() + 240
        while not (done.exists() and any(done.iterdir())):
            assert job.is_alive(), "the job ended before any video was complete"
            assert time.monotonic() < deadline, "no video finished while one was unplanned"
            time.sleep(0.2)
    finally:
        _unblock(fifo, job)  # its probe reads these bytes: not a video
    job.join(timeout=10)
    assert not job.is_alive()
    result = outcome["result"]
    statuses = {s.video_id: s for s in result.statuses}
    assert result.summary.done == PLAN_VIDEOS and result.summary.failed == 1
    assert statuses["blocked"].state == "failed"
    assert "cannot read the video" in statuses["blocked"].error
    assert len(list(done.iterdir())) == PLAN_VIDEOS
    shutil.rmtree(tmp_path / "out")


def test_a_pool_holding_every_cpu_still_gets_its_planned_work(ray_cluster, tmp_path, clip_video):
    """2 actors of 1 CPU on the 2-CPU test cluster: the streaming split of the planned rows
    must not wait for a CPU (it did: the job hung with the actors idle)."""
    from surgray.annotate.pipeline import run_annotate

    video, checkpoint = clip_video
    rows = []
    for n in range(3):
        copy = tmp_path / f"v{n}.mp4"
        shutil.copy(video, copy)
        rows.append({"video_uri": str(copy), "video_id": f"v{n}", "prompts": _box()})
    config = _config(
        tmp_path, rows, checkpoint, actors={"count": 2, "num_cpus": 1.0, "torch_threads": 1}
    )
    outcome: dict = {}
    job = threading.Thread(target=lambda: outcome.update(result=run_annotate(config)), daemon=True)
    job.start()
    job.join(timeout=180)
    assert not job.is_alive(), "the job made no progress with every CPU held by its actors"
    assert outcome["result"].summary.done == 3


def _unblock(fifo, job: threading.Thread) -> None:
    """Feed the FIFO a few bytes each time a reader (the probe) has it open, until the job
    ends: a probe may open the file more than once."""
    deadline = time.monotonic() + 240
    while job.is_alive() and time.monotonic() < deadline:
        try:
            handle = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader now
            time.sleep(0.1)
            continue
        try:
            os.write(handle, b"\0not a video" * 16)
        except BrokenPipeError:  # the reader closed first
            pass
        finally:
            os.close(handle)
        time.sleep(0.1)


def test_outcomes_pass_the_annotator_and_the_collector_records_them_as_before(tmp_path, clip_video):
    """Without Ray: planned rows -> PlanningAnnotator -> ResultCollector, as the pipeline."""
    from surgray.annotate.driver import ResultCollector, local_work_rows, prepare_job
    from surgray.annotate.planning_annotator import PlanningAnnotator

    video, checkpoint = clip_video
    rows = _good_garbage_and_late(tmp_path, video)
    plan = prepare_job(_config(tmp_path, rows, checkpoint))
    annotator = PlanningAnnotator(plan.config)
    results = annotator(pa.Table.from_pylist(local_work_rows(plan))).to_pylist()
    assert [(r["video_id"], r["segment_index"]) for r in results] == [
        ("good", 0),
        ("garbage", -1),
        ("late", -1),
    ]
    seen = []
    collector = ResultCollector(plan, on_outcome=lambda o: seen.append((o.video_id, o.kind)))
    for row in results:
        collector.add(row)
    assert seen == [("garbage", "unreadable"), ("late", "rejected")]
    assert collector.add(results[0]) is None  # a second result of a finished video: ignored
    outcome = collector.finish()
    summary = outcome.summary
    assert (summary.done, summary.failed, summary.rejected_rows) == (1, 1, 1)
    layout = plan.layout
    failed = json.loads(layout.read_bytes(layout.status_uri("garbage")))
    assert failed["state"] == "failed" and "cannot read the video" in failed["error"]
    rejected = json.loads(layout.read_bytes(f"{layout.prefix}/_rejected.json"))
    assert [(r["row"], r["video_id"]) for r in rejected] == [(3, "late")]
    assert layout.read_bytes(layout.status_uri("late")) is None  # rejected: no status, as before
    # The run indexed nothing here (no writer given); the job passes one (pipeline.execute).
    assert layout.read_bytes(layout.marker_uri("good")) is not None
