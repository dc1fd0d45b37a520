"""What a person sees while the annotate job runs, and what happens when an actor is lost.

* one `[annotate]` line per finished video: done/total, frames/s, ETA (the ETA weighs videos
  by their frame counts when known);
* no Ray Data progress bars and no error-level Ray line about restartable actors with
  constructor arguments in the object store (the pool's actors are not restartable; see
  `surgray.annotate.pipeline`);
* an actor whose process dies mid-video: its work items run again in a fresh pool, every
  (frame, object) row is written exactly once and the job reports every video done.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from surgray.annotate.progress import VideoProgress

SIZE, FRAMES = 64, 8


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_video_with_rate_and_an_eta_weighted_by_frames():
    clock, lines = Clock(), []
    progress = VideoProgress(
        ["a", "b", "c"], frame_counts={"a": 100, "b": 100, "c": 200}, write=lines.append,
        clock=clock,
    )  # fmt: skip
    progress.start(skipped=2)
    clock.now += 10
    progress.video_done("a", "done", 100, 100)
    clock.now += 10
    progress.video_done("b", "failed", 40, 140)
    clock.now += 20
    progress.video_done("c", "done", 200, 340)
    assert (
        lines[0] == "[annotate] 0/3 videos done (2 complete from earlier runs); starting the actors"
    )
    # a: a quarter of the frames in 10 s -> 30 s left; b: half in 20 s -> 20 s left.
    assert (
        lines[1] == "[annotate] 1/3 videos done: video a done, 100 frames | 10.0 frames/s | ETA 30s"
    )
    assert lines[2] == (
        "[annotate] 2/3 videos done (1 failed): video b failed, 40 frames | 7.0 frames/s | ETA 20s"
    )
    assert lines[3].endswith("| 8.5 frames/s | finished")
    unknown = VideoProgress(["a", "b"], frame_counts={"a": 10}, write=lines.append, clock=clock)
    clock.now += 5
    assert unknown.video_done("a", "done", 10, 10).endswith("ETA 5s")  # videos counted alike


@pytest.mark.ray
def test_a_lost_actor_is_replaced_and_its_video_run_again(ray_cluster, tmp_path, capfd):
    from _die_once_hook import MARKER

    from surgray.annotate.config import AnnotateConfig
    from surgray.annotate.pipeline import run_annotate
    from surgray.data.synthetic import SyntheticClipConfig, generate_clip
    from surgray.data.synthetic_writers import write_clip_video
    from surgray.io.masks import encode_rle
    from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

    shutil.rmtree(MARKER, ignore_errors=True)
    MARKER.mkdir()
    plain = dict(leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)
    rows = []
    for n in range(2):
        clip = generate_clip(
            SyntheticClipConfig(num_frames=FRAMES, height=SIZE, width=SIZE, **plain), seed=n
        )
        video = tmp_path / f"v{n}.mp4"
        write_clip_video(clip, str(video))
        obj = int(np.bincount(clip.masks[0].ravel())[1:].argmax()) + 1
        rle = encode_rle((clip.masks[0] == obj)[None])[0]
        prompt = {"obj_id": obj, "frame": 0, "mask_rle": rle}
        rows.append(
            {"video_uri": str(video), "video_id": f"v{n}", "prompts": {"objects": [prompt]}}
        )
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    checkpoint = tmp_path / "micro.pt"
    save_checkpoint(build_model("micro", image_size=SIZE), str(checkpoint))
    config = AnnotateConfig.from_dict({
        "inputs": {"manifest": str(tmp_path / "m.jsonl")},
        "output": {"prefix": str(tmp_path / "out")},
        "model": {"variant": "micro", "checkpoint": str(checkpoint), "image_size": SIZE},
        "actors": {"count": 1, "num_cpus": 0.5},
        "privacy": {"hash_video_ids": False},
        "frames": {"skip_hook": "tests._die_once_hook:die_once"},
        "exports": ["parquet"],
    })  # fmt: skip
    try:
        outcome = run_annotate(config)
    finally:
        died = (MARKER / "died").exists()
        shutil.rmtree(MARKER, ignore_errors=True)
    out, err = capfd.readouterr()
    assert died, out + err  # an actor really was lost
    assert (outcome.summary.done, outcome.summary.failed) == (2, 0), outcome.report()
    assert "[annotate] lost an actor (" in out and "running the" in out
    assert "[annotate] 2/2 videos done" in out and "| finished" in out
    done_lines = [line for line in out.splitlines() if " videos done: " in line]
    assert len(done_lines) == 2  # one line per video
    for n in range(2):
        table = pq.read_table(tmp_path / "out" / "masks" / f"video_id=v{n}", partitioning=None)
        frames = table.column("frame_idx").to_pylist()
        assert sorted(frames) == list(range(FRAMES))  # every frame once, none twice
    everything = out + err
    assert "constructor arguments in the object store" not in everything
    # No progress bars either (Ray Data draws "Running Dataset ... row/s]" lines).
    assert "row/s]" not in everything and "Running Dataset" not in everything
