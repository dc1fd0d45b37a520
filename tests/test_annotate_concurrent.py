"""Several videos at once per annotate actor (`actors.concurrent_videos`, issue 26).

One actor, the same archive twice on a real local Ray: one call at a time, then two calls at
once in threads. Checked: the outputs are identical (rows, masks, scores), a corrupt video
fails alone while the others finish, and the second run really had two videos in flight at
once (a skip hook, `devtools.thread_probe`, records which thread saw each frame and when; the
first run, the control, shows no such interleaving). A concurrency of 0 is one line at the
CLI, exit 2.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from devtools import thread_probe
from surgray.annotate.config import AnnotateConfig
from surgray.annotate.outputs import OutputLayout, read_marker
from surgray.annotate.rows import read_mask_rows
from surgray.annotate.status import EXIT_INVALID_CONFIG
from surgray.io.storage import LOCAL

SIZE = 64
FRAMES = {"a": 14, "b": 18, "c": 10, "d": 16}  # good videos: name -> frames
PLAIN = dict(leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)
PROMPTS = {"objects": [{"obj_id": 1, "frame": 0, "box": [8, 8, 40, 40]},
                       {"obj_id": 2, "frame": 2, "points": [[44, 44]], "labels": [1]}]}  # fmt: skip


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    from surgray.data.synthetic import SyntheticClipConfig, generate_clip
    from surgray.data.synthetic_writers import write_clip_video
    from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

    folder = tmp_path_factory.mktemp("concurrent")
    for n, (name, count) in enumerate(FRAMES.items()):
        cfg = SyntheticClipConfig(num_frames=count, height=SIZE, width=SIZE, **PLAIN)
        write_clip_video(generate_clip(cfg, seed=n), str(folder / f"{name}.mp4"))
    whole = (folder / "b.mp4").read_bytes()  # decodes its first frames, then fails
    (folder / "corrupt.mp4").write_bytes(whole[: len(whole) // 2])
    save_checkpoint(build_model("micro", image_size=SIZE), str(folder / "micro.pt"))
    names = ["a", "corrupt", "b", "c", "d"]
    manifest = folder / "manifest.jsonl"
    manifest.write_text(
        "".join(
            json.dumps(
                {
                    "video_uri": str(folder / f"{n}.mp4"),
                    "video_id": n,
                    "prompts": json.dumps(PROMPTS),
                }
            )
            + "\n"
            for n in names
        )
    )
    return folder


def _config(folder: Path, name: str, concurrent: int, hook: str | None = None) -> AnnotateConfig:
    hook = hook or "devtools.thread_probe:record"
    return AnnotateConfig.from_dict(
        {
            "inputs": {"manifest": str(folder / "manifest.jsonl")},
            "output": {"prefix": str(folder / name)},
            "model": {"variant": "micro", "checkpoint": str(folder / "micro.pt"), "image_size": SIZE},
            # One torch thread per call in both runs: the same arithmetic, so equal masks.
            "actors": {"count": 1, "num_cpus": 0.5, "torch_threads": concurrent,
                       "concurrent_videos": concurrent},
            "frames": {"skip_hook": hook},
            "privacy": {"hash_video_ids": False},
            "exports": ["parquet"],
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def runs(archive, ray_cluster):  # noqa: F811
    """(config, outcome, probe sightings) of the job with 1 and 2 concurrent videos."""
    from surgray.annotate.pipeline import run_annotate

    out = {}
    for concurrent in (1, 2):
        probe = archive / f"probe{concurrent}"
        thread_probe.start(probe, rendezvous=concurrent > 1)  # waits for a second thread
        config = _config(archive, f"out{concurrent}", concurrent)
        out[concurrent] = (config, run_annotate(config), thread_probe.read(probe))
    return out


def _rows(config: AnnotateConfig, video: str) -> list[dict]:
    layout = OutputLayout(config.output.prefix, storage=LOCAL)
    rows = read_mask_rows(layout, video, read_marker(layout, video).parts)
    return [{k: v for k, v in r.items() if k not in ("created_at", "run_id")} for r in rows]


@pytest.mark.ray
def test_two_concurrent_videos_write_what_one_at_a_time_writes(runs):
    (one, first, _), (two, second, _) = runs[1], runs[2]
    for outcome in (first, second):
        states = {s.video_id: s.state for s in outcome.statuses}
        assert states == {"a": "done", "b": "done", "c": "done", "d": "done", "corrupt": "failed"}
        errors = [s.error for s in outcome.statuses if s.state == "failed"]
        assert len(errors) == 1 and "corrupt" in errors[0]
    assert OutputLayout(two.output.prefix, storage=LOCAL).part_names("corrupt") == []
    for video, frames in FRAMES.items():
        single, concurrent = _rows(one, video), _rows(two, video)
        keys = [(r["frame_idx"], r["obj_id"]) for r in concurrent]
        assert keys == [(f, o) for f in range(frames) for o in (1, 2)]
        assert concurrent == single, video  # masks (RLE), scores, areas, provenance


@pytest.mark.ray
def test_two_videos_are_really_in_flight_at_once(runs):
    single, concurrent = runs[1][2], runs[2][2]
    # The hook sees every frame but the prompted ones (frames 0 and 2 of each good video).
    tracked = sum(FRAMES.values()) - 2 * len(FRAMES)
    assert len(single) >= tracked and len(concurrent) >= tracked
    assert len({s.thread[0] for s in concurrent}) == 1  # one actor process ...
    assert len({s.thread for s in concurrent}) >= 2  # ... two threads of it
    assert thread_probe.interleavings(single) == 0  # the control: one video at a time
    assert thread_probe.interleavings(concurrent) >= 5


def test_concurrent_videos_below_one_is_a_one_line_config_error(tmp_path, capsys):
    from surgray.annotate.cli import main

    config = {
        "inputs": {"manifest": str(tmp_path / "m.csv")},
        "output": {"prefix": str(tmp_path / "out")},
        "model": {"variant": "micro", "checkpoint": str(tmp_path / "micro.pt")},
        "actors": {"concurrent_videos": 0},
        "privacy": {"hash_video_ids": False},
    }
    path = tmp_path / f"c{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["--config", str(path), "--quiet"]) == EXIT_INVALID_CONFIG
    err = capsys.readouterr().err.strip()
    assert "actors.concurrent_videos" in err and len(err.splitlines()) == 1, err


_inside = {"now": 0, "most": 0}


def keep_every_frame(frame) -> bool:
    """A hook that does not declare itself thread-safe; counts the calls inside it at once."""
    _inside["now"] += 1
    _inside["most"] = max(_inside["most"], _inside["now"])
    time.sleep(0.05)
    _inside["now"] -= 1
    return False


def test_a_skip_hook_is_called_one_at_a_time_unless_it_declares_itself_thread_safe(archive):
    from surgray.annotate.actor import SegmentAnnotator

    declared = SegmentAnnotator(_config(archive, "direct", 2))
    assert declared.context.skip_hook is thread_probe.record  # called as it is
    plain = SegmentAnnotator(
        _config(archive, "direct", 2, "test_annotate_concurrent:keep_every_frame")
    )
    hook = plain.context.skip_hook
    threads = [threading.Thread(target=hook, args=(None,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert _inside["most"] == 1  # 4 threads, never two inside at once
    alone = SegmentAnnotator(
        _config(archive, "direct", 1, "test_annotate_concurrent:keep_every_frame")
    )
    assert alone.context.skip_hook is keep_every_frame  # one video at a time: no lock needed
