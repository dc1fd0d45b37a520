"""Annotate job planning (segments of long text-prompted videos) and provenance stability."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.hooks import load_skip_hook
from surgray.annotate.manifest import VideoTask
from surgray.annotate.plan import WorkItem, needs_frame_count, plan_work_items, segment_bounds
from surgray.annotate.prompts import VideoPrompts, parse_objects
from surgray.annotate.provenance import Provenance, config_hash, video_provenance
from surgray.io.video_types import VideoInfo

POINTS = parse_objects(json.dumps({"objects": [{"obj_id": 1, "frame": 900, "points": [[3, 4]]}]}))


def info(count: int, exact: bool = True) -> VideoInfo:
    return VideoInfo("unused", count, exact, 25.0, 64, 48, count / 25.0, "h264")


@pytest.mark.parametrize(
    ("count", "limit", "stride", "expected"),
    [
        (250, 100, 1, [(0, 84), (84, 168), (168, 250)]),
        (100, 100, 1, [(0, 100)]),
        (101, 100, 1, [(0, 51), (51, 101)]),
        # limit 10 with stride 4 allows pieces of 8: 7 of them for 50 frames.
        (50, 10, 4, [(0, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 48), (48, 50)]),
        # 3 pieces of at most 9; an even 7 is not a multiple of 3, so 9 + 9 + 2.
        (20, 10, 3, [(0, 9), (9, 18), (18, 20)]),
        (0, 10, 1, [(0, 0)]),
    ],
)
def test_segment_bounds(count, limit, stride, expected):
    assert segment_bounds(count, limit, stride) == expected


def test_segment_bounds_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"max_frames \(2\) must be at least the stride \(3\)"):
        segment_bounds(10, 2, 3)
    with pytest.raises(ValueError, match="bad segmenting"):
        segment_bounds(10, 0)


def test_plan_splits_only_long_text_only_videos():
    tasks = [
        VideoTask("s3://b/long.mp4", "long", VideoPrompts(("grasper",))),
        VideoTask("s3://b/short.mp4", "short", VideoPrompts(("grasper",))),
        VideoTask("s3://b/clicked.mp4", "clicked", VideoPrompts(("grasper",), POINTS)),
    ]
    assert [needs_frame_count(t, 100) for t in tasks] == [True, True, False]
    assert not needs_frame_count(tasks[0], None)
    rows = plan_work_items(
        tasks, max_segment_frames=100, infos={"long": info(250), "short": info(80)}
    )
    assert [
        (r["video_id"], r["segment_index"], r["num_segments"], r["start_frame"], r["end_frame"])
        for r in rows
    ] == [
        ("long", 0, 3, 0, 84),
        ("long", 1, 3, 84, 168),
        ("long", 2, 3, 168, 250),
        ("short", 0, 1, 0, -1),
        ("clicked", 0, 1, 0, -1),
    ]
    # Rows are flat str/int dicts: Arrow (what ray.data.from_items builds) takes them as they are.
    table = pa.Table.from_pylist(rows)
    assert {table.schema.field(n).type for n in ("segment_index", "start_frame", "end_frame")} == {
        pa.int64()
    }
    assert WorkItem.from_row(rows[3]).end_frame is None
    assert WorkItem.from_row(rows[4]).prompts == tasks[2].prompts
    assert WorkItem.from_row(rows[1]).to_row() == rows[1]


def test_plan_without_segmenting_keeps_videos_whole_and_needs_no_probe():
    tasks = [VideoTask("/v/a.mp4", "a", VideoPrompts(("x",)))]
    assert [r["end_frame"] for r in plan_work_items(tasks)] == [-1]


def test_plan_needs_counts_of_splittable_videos_and_reads_on_past_estimates():
    task = VideoTask("/v/a.mp4", "a", VideoPrompts(("x",)))
    with pytest.raises(
        ValueError, match="video a is split by text segments and needs its frame count"
    ):
        plan_work_items([task], max_segment_frames=10)
    rows = plan_work_items([task], max_segment_frames=10, infos={"a": info(15, exact=False)})
    assert [(r["start_frame"], r["end_frame"]) for r in rows] == [(0, 8), (8, -1)]


def make_config(**changes) -> AnnotateConfig:
    data = {
        "inputs": {"prefix": "s3://archive/videos"},
        "output": {"prefix": "s3://results/run1"},
        "model": {"variant": "small", "checkpoint": "s3://models/a.pt", "policy": "prune"},
        "prompts": ["grasper", "needle driver"],
        "actors": {"count": 4},
    }
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        data.setdefault(section, {})
        data[section] = {**data[section], key: value}
    return AnnotateConfig.from_dict(data)


def test_config_hash_covers_what_changes_outputs_only():
    base = config_hash(make_config())
    assert len(base) == 64 and int(base, 16) >= 0
    assert config_hash(make_config()) == base
    unchanged = [
        {"output__prefix": "/elsewhere"},
        {"actors__count": 1},
        {"actors__num_cpus": 2.0},
        {"batching__videos_per_step": 8},
        {"model__checkpoint": "/local/copy/a.pt"},
        {"inputs__prefix": "s3://mirror/videos"},
        {"privacy__hash_video_ids": False},
    ]
    for change in unchanged:
        assert config_hash(make_config(**change)) == base, change
    changed = [
        {"model__variant": "tiny"},
        {"model__policy": "recent"},
        {"model__image_size": 512},
        {"frames__stride": 2},
        {"frames__skip_hook": "hooks.oob:is_out_of_body"},
        {"segmenting__max_segment_frames": 500},
    ]
    hashes = {config_hash(make_config(**change)) for change in changed}
    assert base not in hashes and len(hashes) == len(changed)
    reordered = make_config().model_copy(update={"prompts": ("needle driver", "grasper")})
    assert config_hash(reordered) != base


def test_video_provenance_round_trip_and_prompt_sensitivity():
    prompts = VideoPrompts(("grasper",), POINTS)
    one = video_provenance("c" * 64, "d" * 64, prompts, version="0.1.0")
    assert one == video_provenance(
        "c" * 64, "d" * 64, VideoPrompts(("grasper",), POINTS), version="0.1.0"
    )
    assert Provenance.from_dict(json.loads(json.dumps(one.as_dict()))) == one
    assert json.loads(one.prompts_json) == {
        "texts": ["grasper"],
        "objects": [{"obj_id": 1, "frame": 900, "points": [[3.0, 4.0]], "labels": [1]}],
    }
    other = video_provenance("c" * 64, "d" * 64, VideoPrompts(("grasper",)), version="0.1.0")
    assert other.prompts_sha256 != one.prompts_sha256
    with pytest.raises(ValueError, match=r"provenance lacks \['checkpoint_sha256'\]"):
        Provenance.from_dict({k: v for k, v in one.as_dict().items() if k != "checkpoint_sha256"})


def test_skip_hook_loading():
    import os.path

    assert load_skip_hook(None) is None
    assert load_skip_hook("os.path:isabs") is os.path.isabs
    with pytest.raises(ValueError, match="cannot import 'surgray_no_such_module'"):
        load_skip_hook("surgray_no_such_module:f")
    with pytest.raises(ValueError, match="os.path has no function 'nope'"):
        load_skip_hook("os.path:nope")
