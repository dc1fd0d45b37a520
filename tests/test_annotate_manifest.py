"""Annotate job inputs: the config, manifests (CSV, JSONL, Parquet), prefix listings, video ids
and the probe-time prompt checks, on local files, a real video and a moto S3 server."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from surgray.annotate.config import AnnotateConfig, ConfigError, FramesConfig
from surgray.annotate.manifest import (
    ManifestInvalid,
    VideoTask,
    list_videos,
    load_tasks,
    read_manifest,
)
from surgray.annotate.probe import needs_probe, probe_task
from surgray.annotate.prompts import PromptError, VideoPrompts, parse_objects, parse_texts
from surgray.io.storage import LOCAL

FIXTURE_VIDEO = Path(__file__).parent / "fixtures" / "hevc_12f.mp4"  # 64x64, 12 frames, 12 fps
SALT = "a-salt-of-at-least-16-bytes"

GOOD_POINTS = {
    "objects": [
        {"obj_id": 1, "label": "grasper", "frame": 0, "points": [[10, 20]], "labels": [1]},
        {"obj_id": 2, "frame": 5, "box": [1, 2, 30, 40]},
    ]
}
# 4x4 mask with a 2x2 square at rows 1-2, cols 1-2; column-major runs 5 off, 2 on, 2 off, 2 on, 5 off.
GOOD_MASK = {
    "objects": [{"obj_id": 3, "frame": 0, "mask_rle": {"size": [4, 4], "counts": [5, 2, 2, 2, 5]}}]
}

# (row, cells) with the reason a bad row must be reported for (None: the row is good).
ROWS = [
    ({"video_uri": "s3://b/a.mp4", "video_id": "caseA", "text": "grasper;needle"}, None),
    ({"video_uri": "s3://b/b.mp4", "prompts": json.dumps(GOOD_POINTS)}, None),
    ({"video_id": "caseC", "text": "grasper"}, "missing video_uri"),
    ({"video_uri": "s3://b/d.mp4", "prompts": "{bad json"}, "bad JSON"),
    (
        {
            "video_uri": "s3://b/e.mp4",
            "prompts": json.dumps({"objects": [{"obj_id": 1, "frame": -2, "points": [[1, 1]]}]}),
        },
        "frame must be an integer >= 0",
    ),
    (
        {
            "video_uri": "s3://b/f.mp4",
            "prompts": json.dumps({"objects": [{"obj_id": 1, "frame": 0, "box": [30, 2, 10, 40]}]}),
        },
        "box needs x0 < x1",
    ),
    (
        {
            "video_uri": "s3://b/g.mp4",
            "prompts": json.dumps({"objects": [{"obj_id": 1, "frame": 0, "scribble": [[1, 1]]}]}),
        },
        "unknown prompt kind 'scribble'",
    ),
    ({"video_uri": "s3://b/h.mp4", "text": "grasper;;needle"}, "expression 1 is empty"),
    ({"video_uri": "s3://b/i.mp4", "prompts": json.dumps(GOOD_MASK)}, None),
    ({"video_uri": "s3://b/j.mp4"}, "no prompts"),
    ({"video_uri": "s3://b/a.mp4", "text": "needle"}, "duplicate video (first in row 1)"),
]


def write_manifest(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["video_uri", "video_id", "text", "prompts"])
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        columns = {
            c: [row.get(c) for row in rows] for c in ("video_uri", "video_id", "text", "prompts")
        }
        pq.write_table(pa.table(columns), path)
    return path


def check_report(result, rows=ROWS):
    expected_good = [n for n, (_, reason) in enumerate(rows, start=1) if reason is None]
    assert [t.row for t in result.tasks] == expected_good
    assert [e.row for e in result.errors] == [n for n, (_, r) in enumerate(rows, start=1) if r]
    for error in result.errors:
        assert rows[error.row - 1][1] in error.reason, (error.row, error.reason)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_formats_report_bad_rows_and_keep_good_ones(tmp_path, suffix):
    path = write_manifest(tmp_path / f"m{suffix}", [row for row, _ in ROWS])
    result = read_manifest(path)
    check_report(result)
    a, b, i = result.tasks
    assert (a.video_uri, a.video_id, a.prompts.texts, a.prompts.objects) == (
        "s3://b/a.mp4",
        "caseA",
        ("grasper", "needle"),
        (),
    )
    assert b.video_id == "b" and b.prompts.texts == ()
    first, second = b.prompts.objects
    assert (
        first.obj_id,
        first.frame,
        first.label,
        first.points,
        first.point_labels,
        first.kind,
    ) == (1, 0, "grasper", ((10.0, 20.0),), (1,), "points")
    assert (second.obj_id, second.frame, second.box, second.kind) == (
        2,
        5,
        (1.0, 2.0, 30.0, 40.0),
        "box",
    )
    assert i.prompts.objects[0].kind == "mask" and i.prompts.objects[0].mask_rle.size == (4, 4)


def test_parquet_text_as_list_and_global_prompts_are_merged(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(
        pa.table({"video_uri": ["/v/a.mp4", "/v/b.mp4"], "text": [["needle", "grasper"], None]}),
        path,
    )
    result = read_manifest(path, global_texts=("grasper", "liver"))
    assert [t.prompts.texts for t in result.tasks] == [
        ("grasper", "liver", "needle"),
        ("grasper", "liver"),
    ]
    assert result.errors == ()


def test_jsonl_reports_line_numbers_for_unreadable_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"video_uri": "/v/a.mp4", "text": "x"}\n\nnot json\n[1, 2]\n{"video_uri": "/v/b.mp4", "txt": "x"}\n'
    )
    result = read_manifest(path)
    assert [t.row for t in result.tasks] == [1]
    assert [(e.row, e.reason.split(":")[0]) for e in result.errors] == [
        (3, "bad JSON"),
        (4, "expected a JSON object, got list"),
        (5, "unknown key 'txt'"),
    ]


def test_manifest_without_a_valid_row_is_an_error(tmp_path):
    path = write_manifest(tmp_path / "m.csv", [ROWS[2][0], ROWS[3][0]])
    with pytest.raises(ManifestInvalid, match="no valid rows") as caught:
        read_manifest(path)
    assert [e.row for e in caught.value.errors] == [1, 2]
    assert "row 1: missing video_uri" in str(caught.value)


def test_manifest_file_errors_name_the_problem(tmp_path):
    (tmp_path / "m.csv").write_text("video_uri,expresions\n/v/a.mp4,x\n")
    with pytest.raises(ManifestInvalid, match=r"unknown columns \['expresions'\]"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestInvalid, match="unknown manifest format"):
        read_manifest(tmp_path / "m.txt")
    with pytest.raises(ManifestInvalid, match="manifest not found"):
        read_manifest(tmp_path / "missing.csv")


def test_relative_uris_are_read_next_to_the_manifest_and_stems_must_be_unique(tmp_path):
    path = write_manifest(
        tmp_path / "m.csv",
        [{"video_uri": "clips/a.mp4", "text": "x"}, {"video_uri": "/other/a.mp4", "text": "x"}],
    )
    result = read_manifest(path)
    assert [t.video_uri for t in result.tasks] == [f"{tmp_path}/clips/a.mp4"]
    assert result.errors[0].reason == "duplicate video_id a (first in row 1)"


def test_prompt_parsing_errors():
    assert parse_texts(' ["a", "b"] ') == ("a", "b")
    assert parse_texts("a; b ;a") == ("a", "b")
    with pytest.raises(PromptError, match="expression 0 is empty"):
        parse_texts(["  "])
    cases = {
        '{"objects": [{"obj_id": 1, "frame": 0}]}': "no prompt; give points, box or mask_rle",
        '{"objects": [{"obj_id": true, "frame": 0, "box": [0, 0, 1, 1]}]}': "obj_id must be an integer",
        '{"objects": [{"obj_id": 1, "frame": 0, "points": [[1, 2]], "labels": [2]}]}': "labels must be 1",
        '{"objects": [{"obj_id": 1, "frame": 0, "points": [[1, 2]], "labels": [1, 0]}]}': "one 0/1 per point",
        '{"objects": [{"obj_id": 1, "frame": 0, "box": [0, 0, 5]}]}': "box must be 4 numbers",
        '{"objects": [{"obj_id": 1, "frame": 0, "mask_rle": {"size": [2, 2], "counts": [4]}}]}': "no foreground",
        '{"objects": [{"obj_id": 1, "frame": 0, "mask_rle": {"size": [2, 2], "counts": [1, 1]}}]}': "does not decode",
        '{"objects": [{"obj_id": 1, "frame": 0, "box": [0, 0, 2, 2], "mask_rle": {"size": [2, 2], "counts": [0, 4]}}]}': "cannot be combined",
        '{"objects": [{"obj_id": 1, "frame": 0, "box": [0, 0, 2, 2]}, {"obj_id": 1, "frame": 0, "points": [[1, 1]]}]}': "two prompts at frame 0",
        '{"objects": [{"obj_id": 1, "frame": 0, "label": "a", "box": [0, 0, 2, 2]}, {"obj_id": 1, "frame": 3, "label": "b", "box": [0, 0, 2, 2]}]}': "two labels",
        '{"objects": [], "texts": ["x"]}': "unknown key 'texts'",
    }
    for text, reason in cases.items():
        with pytest.raises(PromptError, match=reason):
            parse_objects(text)


def test_prompts_json_is_canonical():
    a = VideoPrompts(("x",), parse_objects(json.dumps(GOOD_POINTS)))
    b = VideoPrompts(("x",), parse_objects(json.dumps({"objects": GOOD_POINTS["objects"][::-1]})))
    assert a.to_json() == b.to_json()
    assert VideoPrompts.from_json(a.to_json()) == a
    assert json.loads(a.to_json())["objects"][1] == {
        "obj_id": 2,
        "frame": 5,
        "box": [1.0, 2.0, 30.0, 40.0],
    }


def make_tree(root: Path) -> None:
    for name in [
        "a.mp4",
        "sub/B.MP4",
        "sub/deep/c.mkv",
        "notes.txt",
        ".hidden.mp4",
        "out/overlay_mp4/x.mp4",
    ]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_list_videos_local(tmp_path):
    make_tree(tmp_path)
    exts = (".mp4", ".mkv")
    found = list_videos(str(tmp_path), exts, exclude=(str(tmp_path / "out"),))
    assert found == [f"{tmp_path}/a.mp4", f"{tmp_path}/sub/B.MP4", f"{tmp_path}/sub/deep/c.mkv"]
    assert list_videos(str(tmp_path), exts, recursive=False) == [f"{tmp_path}/a.mp4"]


def config_for(inputs: dict, **extra) -> AnnotateConfig:
    base = {
        "inputs": inputs,
        "output": {"prefix": "/tmp/unused-out"},
        "model": {"checkpoint": "c.pt"},
    }
    return AnnotateConfig.from_dict({**base, **extra})


def test_load_tasks_from_a_prefix_with_hashed_ids(tmp_path, caplog):
    make_tree(tmp_path)
    config = config_for(
        {"prefix": str(tmp_path), "extensions": ["MP4", ".mkv"]},
        output={"prefix": str(tmp_path / "out")},
        prompts=["grasper"],
    )
    with caplog.at_level(logging.DEBUG, logger="surgray.annotate"):
        result = load_tasks(config, environ={"SURGRAY_ID_SALT": SALT})
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert info == ["3 videos to annotate, 0 inputs rejected"]
    assert f"{tmp_path}/a.mp4" in caplog.text  # at DEBUG only
    uris = [f"{tmp_path}/a.mp4", f"{tmp_path}/sub/B.MP4", f"{tmp_path}/sub/deep/c.mkv"]
    expected = [hmac.new(SALT.encode(), u.encode(), hashlib.sha256).hexdigest()[:16] for u in uris]
    assert [(t.video_uri, t.video_id, t.prompts.texts) for t in result.tasks] == [
        (u, i, ("grasper",)) for u, i in zip(uris, expected)
    ]
    plain = load_tasks(
        config.model_copy(
            update={"privacy": config.privacy.model_copy(update={"hash_video_ids": False})}
        )
    )
    assert [t.video_id for t in plain.tasks] == ["a", "sub__B", "sub__deep__c"]


def test_hashed_manifest_ids_hash_the_given_id(tmp_path):
    path = write_manifest(
        tmp_path / "m.csv", [{"video_uri": "/v/a.mp4", "video_id": "Case 17 Smith", "text": "x"}]
    )
    salt_file = tmp_path / "salt"
    salt_file.write_text(SALT + "\n")
    config = config_for({"manifest": str(path)}, privacy={"salt_file": str(salt_file)})
    (task,) = load_tasks(config).tasks
    assert (
        task.video_id == hmac.new(SALT.encode(), b"Case 17 Smith", hashlib.sha256).hexdigest()[:16]
    )


def test_salt_errors(tmp_path):
    config = config_for({"prefix": str(tmp_path)}, prompts=["x"])
    with pytest.raises(ConfigError, match="SURGRAY_ID_SALT .* is not set"):
        load_tasks(config, environ={})
    with pytest.raises(ConfigError, match="at least 16 bytes, got 5"):
        load_tasks(config, environ={"SURGRAY_ID_SALT": "short"})
    with pytest.raises(ConfigError, match="'salt' is not allowed"):
        config_for({"prefix": str(tmp_path)}, prompts=["x"], privacy={"salt": SALT})


def test_unhashed_video_ids_must_be_safe(tmp_path):
    path = write_manifest(
        tmp_path / "m.csv",
        [
            {"video_uri": "/v/a.mp4", "video_id": "../etc", "text": "x"},
            {"video_uri": "/v/b.mp4", "text": "x"},
        ],
    )
    config = config_for({"manifest": str(path)}, privacy={"hash_video_ids": False})
    result = load_tasks(config)
    assert [t.video_id for t in result.tasks] == ["b"]
    assert "video_id '../etc' must be" in result.errors[0].reason


def test_config_yaml_errors_name_the_key(tmp_path):
    demo = Path(__file__).parents[1] / "configs" / "annotate_demo.yaml"
    config = AnnotateConfig.from_yaml(demo)
    assert config.actors.num_cpus == 0.5 and config.exports == ("parquet", "davis", "overlay_mp4")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        demo.read_text()
        .replace("  variant: micro", "  varient: micro")
        .replace("num_cpus: 0.5", "num_cpus: 0")
    )
    with pytest.raises(ConfigError) as caught:
        AnnotateConfig.from_yaml(bad)
    message = str(caught.value)
    assert "model.varient: unknown key (allowed: checkpoint, image_size," in message
    assert "actors.num_cpus: Input should be greater than 0" in message
    with pytest.raises(ConfigError, match="give exactly one of inputs.prefix or inputs.manifest"):
        config_for({"prefix": "/a", "manifest": "/b.csv"}, prompts=["x"])
    with pytest.raises(ConfigError, match="a prefix of videos has no per-video prompts"):
        config_for({"prefix": "/a"})
    with pytest.raises(ConfigError, match=r"credentials \['secret'\] do not belong"):
        config_for({"manifest": "/b.csv"}, storage={"options": {"secret": "x"}})
    with pytest.raises(ConfigError, match="frames.skip_hook: skip_hook must look like"):
        config_for({"manifest": "/b.csv"}, frames={"skip_hook": "not a path"})
    with pytest.raises(ConfigError, match="give frames.stride or frames.target_fps, not both"):
        config_for({"manifest": "/b.csv"}, frames={"stride": 2, "target_fps": 5})
    with pytest.raises(ConfigError, match="not valid YAML"):
        (tmp_path / "broken.yaml").write_text("inputs: [")
        AnnotateConfig.from_yaml(tmp_path / "broken.yaml")


def test_probe_reports_prompts_past_the_end_and_off_the_sampling():
    objects = parse_objects(
        json.dumps(
            {
                "objects": [
                    {"obj_id": 1, "frame": 4, "points": [[5, 5]]},
                    {"obj_id": 2, "frame": 12, "points": [[5, 5]]},
                    {"obj_id": 3, "frame": 3, "points": [[5, 5]]},
                    {"obj_id": 4, "frame": 6, "box": [0, 0, 70, 10]},
                ]
            }
        )
    )
    task = VideoTask(str(FIXTURE_VIDEO), "vid", VideoPrompts((), objects), row=7)
    result = probe_task(task, frames=FramesConfig(stride=2), storage=LOCAL)
    assert result.info.frame_count == 12 and not result.ok
    assert [(e.row, e.video_id, e.reason) for e in result.errors] == [
        (7, "vid", "prompt of obj_id 2 at frame 12 is past the end of the video (12 frames)"),
        (
            7,
            "vid",
            "prompt of obj_id 3 at frame 3 is not a sampled frame (stride 2, target_fps None)",
        ),
        (7, "vid", "prompt of obj_id 4 at frame 6: the box reaches outside the 64x64 frame"),
    ]
    assert probe_task(
        VideoTask(str(FIXTURE_VIDEO), "vid", VideoPrompts((), objects[:1])), storage=LOCAL
    ).ok
    text_only = VideoTask(str(FIXTURE_VIDEO), "vid", VideoPrompts(("x",)))
    assert (needs_probe(task, None), needs_probe(text_only, None), needs_probe(text_only, 100)) == (
        True,
        False,
        True,
    )


def test_manifest_and_listing_on_s3(s3_server, tmp_path):
    bucket = s3_server.make_bucket("annotate-manifest")
    fs = s3_server.filesystem()
    for name in ["archive/a.mp4", "archive/sub/b.mov", "archive/readme.md"]:
        fs.pipe_file(f"annotate-manifest/{name}", b"x")
    opts = s3_server.storage
    assert list_videos(f"{bucket}/archive", (".mp4", ".mov"), storage=opts) == [
        f"{bucket}/archive/a.mp4",
        f"{bucket}/archive/sub/b.mov",
    ]
    local = write_manifest(tmp_path / "m.csv", [row for row, _ in ROWS])
    fs.put_file(str(local), "annotate-manifest/manifests/m.csv")
    check_report(read_manifest(f"{bucket}/manifests/m.csv", storage=opts))
    missing = probe_task(
        VideoTask(f"{bucket}/archive/Smith_John.mp4", "v1", VideoPrompts(("x",))), storage=opts
    )
    assert missing.info is None and "Smith_John" not in missing.errors[0].reason
    assert missing.errors[0].reason.startswith("cannot read the video: <video v1>")


def test_parquet_prompts_as_structs_and_numeric_ids(tmp_path):
    objects = [
        {"obj_id": 1, "frame": 0, "points": [[1.0, 2.0]], "labels": [1]},
        {"obj_id": 2, "frame": 3, "box": [0.0, 0.0, 4.0, 5.0]},
    ]
    row = {"video_uri": "/v/a.mp4", "video_id": 17, "prompts": {"objects": objects}}
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "m.parquet")
    (task,) = read_manifest(tmp_path / "m.parquet").tasks
    assert task.video_id == "17"
    assert [(o.obj_id, o.frame, o.kind, o.points, o.box) for o in task.prompts.objects] == [
        (1, 0, "points", ((1.0, 2.0),), None),
        (2, 3, "box", (), (0.0, 0.0, 4.0, 5.0)),
    ]
