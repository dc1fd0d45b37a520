"""The annotation job end to end: synthetic MP4s and a random-weight micro checkpoint in a
moto S3 bucket, a local Ray cluster, results written back to the bucket.

Checked: every frame of every video comes back once per object, in order, with provenance;
a truncated video, an unreadable one, malformed manifest rows and prompts past a video's end
are reported while the rest complete (exit 0); a rerun skips complete videos; a job SIGKILLed
mid-run and run again leaves every (video, frame, object) key exactly once; batched stepping
(K videos per encoder pass) gives the masks of one-at-a-time stepping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.outputs import OutputLayout, PartInfo, read_marker
from surgray.annotate.rows import PROVENANCE_COLUMNS, read_mask_rows
from surgray.annotate.status import EXIT_ALL_FAILED, EXIT_INVALID_CONFIG, EXIT_OK, exit_code
from surgray.data.synthetic import SyntheticClipConfig, generate_clip
from surgray.data.synthetic_writers import write_clip_video
from surgray.io.masks import decode_rle, encode_rle
from surgray.io.storage import LOCAL, Storage
from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
SIZE = 64
SHORT, LONG = 10, 36
PLAIN = dict(leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)


@dataclass(frozen=True)
class Archive:
    bucket: str
    checkpoint: str
    storage: Storage  # the moto server (with credentials, for the test only)
    endpoint: str
    frames: dict[str, int]  # video name -> frame count
    prompts: dict[str, str]  # video name -> prompts JSON


def _prompts(clip) -> str:
    first = clip.masks[0]
    obj = int(np.bincount(first.ravel(), minlength=2)[1:].argmax()) + 1  # largest at frame 0
    rle = encode_rle((first == obj)[None])[0]
    objects = [
        {"obj_id": 1, "frame": 0, "label": "tool", "mask_rle": rle},
        {"obj_id": 2, "frame": 3, "points": [[20, 30], [40, 40]], "labels": [1, 0]},
    ]
    return json.dumps({"objects": objects})


@pytest.fixture(scope="module")
def archive(s3_server):
    bucket = s3_server.make_bucket(f"archive-{uuid.uuid4().hex[:8]}")
    storage = s3_server.storage
    frames, prompts = {}, {}
    for n, (name, count) in enumerate(
        [("short", SHORT), ("long1", LONG), ("long2", LONG), ("long3", LONG)]
    ):
        cfg = SyntheticClipConfig(num_frames=count, height=SIZE, width=SIZE, **PLAIN)
        clip = generate_clip(cfg, seed=n)
        write_clip_video(clip, f"{bucket}/videos/{name}.mp4", storage=storage)
        frames[name], prompts[name] = count, _prompts(clip)
    fs = s3_server.filesystem()
    payload = fs.cat_file(f"{bucket[5:]}/videos/long2.mp4")
    fs.pipe_file(f"{bucket[5:]}/videos/truncated.mp4", payload[: len(payload) // 2])
    fs.pipe_file(f"{bucket[5:]}/videos/garbage.mp4", b"\x00not a video\x01" * 64)
    checkpoint = f"{bucket}/models/micro.pt"
    torch_seed_model = build_model("micro", image_size=SIZE)
    save_checkpoint(torch_seed_model, checkpoint, storage=storage)
    return Archive(bucket, checkpoint, storage, s3_server.endpoint_url, frames, prompts)


def _config(archive: Archive, manifest: str, out: str, **changes) -> AnnotateConfig:
    data = {
        "inputs": {"manifest": manifest},
        "output": {"prefix": out, "rows_per_part": changes.pop("rows_per_part", 50_000)},
        "storage": {"endpoint_url": archive.endpoint, "region": "us-west-2"},
        "model": {"variant": "micro", "checkpoint": archive.checkpoint, "image_size": SIZE},
        "actors": {"count": 2, "num_cpus": 0.5, "torch_threads": 1},
        "batching": {"videos_per_step": changes.pop("videos_per_step", 1)},
        "privacy": {"hash_video_ids": False},
        "exports": list(changes.pop("exports", ["parquet"])),
    }
    assert not changes, changes
    return AnnotateConfig.from_dict(data)


def _put_manifest(archive: Archive, name: str, rows: list[dict]) -> str:
    import s3fs

    uri = f"{archive.bucket}/manifests/{name}.jsonl"
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    s3fs.S3FileSystem(**archive.storage.options, skip_instance_cache=True).pipe_file(
        uri[5:], text.encode()
    )
    return uri


def _row(archive: Archive, name: str, video_id: str | None = None, prompts: str | None = None):
    return {
        "video_uri": f"{archive.bucket}/videos/{name}.mp4",
        "video_id": video_id or name,
        "prompts": prompts or archive.prompts[name],
    }


def _check_video_rows(layout: OutputLayout, video_id: str, frames: int) -> list[dict]:
    """Rows of a complete video in part order: frames 0..n-1 in order, objects 1 and 2 each."""
    marker = read_marker(layout, video_id)
    assert marker is not None, f"{video_id} has no marker"
    rows = read_mask_rows(layout, video_id, marker.parts)
    keys = [(r["frame_idx"], r["obj_id"]) for r in rows]
    assert keys == [(f, o) for f in range(frames) for o in (1, 2)]
    assert {r["video_id"] for r in rows} == {video_id}
    assert all(r["rle_size"] == [SIZE, SIZE] for r in rows)
    expected = marker.provenance.as_dict()
    for column in PROVENANCE_COLUMNS:
        assert {r[column] for r in rows} == {expected[column]}
    # Object 2 is prompted at frame 3: empty (score 0) before it, tracked from it on.
    assert all(
        r["area"] == 0 and r["score"] == 0 for r in rows if r["obj_id"] == 2 and r["frame_idx"] < 3
    )
    assert any(r["area"] > 0 for r in rows if r["obj_id"] == 1 and r["frame_idx"] == 0)
    return rows


@pytest.fixture(scope="module")
def first_run(archive, ray_cluster):  # noqa: F811
    """One job over good and bad inputs, K = 2 videos per step, all exports."""
    from surgray.annotate.pipeline import run_annotate

    rows = [
        _row(archive, "short"),
        "{not json",  # row 2: malformed
        _row(archive, "long1"),
        _row(archive, "truncated", prompts=archive.prompts["long2"]),  # decodes half, then fails
        _row(archive, "garbage", prompts=archive.prompts["short"]),  # not a video at all
        _row(archive, "long3", "late", json.dumps({"objects": [{"obj_id": 1, "frame": 99, "box": [1, 1, 9, 9]}]})),
        _row(archive, "long2"),
    ]  # fmt: skip
    manifest = _put_manifest(archive, "first", rows)
    out = f"{archive.bucket}/out-first"
    config = _config(
        archive,
        manifest,
        out,
        videos_per_step=2,
        rows_per_part=25,
        exports=["davis", "sav_json", "overlay_mp4"],
    )
    started = time.monotonic()
    outcome = run_annotate(config)
    return config, outcome, time.monotonic() - started


@pytest.mark.ray
def test_videos_from_a_bucket_come_back_complete_in_order_with_provenance(archive, first_run):
    config, outcome, _ = first_run
    layout = OutputLayout(config.output.prefix, storage=config.storage.build())
    for name in ("short", "long1", "long2"):
        rows = _check_video_rows(layout, name, archive.frames[name])
        status = json.loads(layout.read_bytes(layout.status_uri(name)))
        assert (status["state"], status["frames"], status["objects"]) == ("done", len(rows) // 2, 2)
        assert status["checkpoint_sha256"] == read_marker(layout, name).provenance.checkpoint_sha256
    marker = read_marker(layout, "long1")
    assert [p.rows for p in marker.parts] == [25, 25, 22]  # 36 frames x 2 objects, 25 a part


@pytest.mark.ray
def test_bad_inputs_are_reported_and_the_rest_complete(first_run):
    config, outcome, _ = first_run
    summary = outcome.summary
    assert (summary.done, summary.failed, summary.rejected_rows) == (3, 2, 2)
    assert exit_code(summary) == EXIT_OK
    errors = {s.video_id: s.error for s in outcome.statuses if s.state == "failed"}
    assert "corrupt" in errors["truncated"]
    assert "cannot read the video" in errors["garbage"]
    assert all("s3://" not in e and "archive-" not in e for e in errors.values())  # ids only
    layout = OutputLayout(config.output.prefix, storage=config.storage.build())
    for video_id in ("truncated", "garbage"):
        status = json.loads(layout.read_bytes(layout.status_uri(video_id)))
        assert status["state"] == "failed" and status["error"] == errors[video_id]
        assert read_marker(layout, video_id) is None
    assert layout.part_names("truncated") == []  # a failed video leaves no rows behind
    rejected = json.loads(layout.read_bytes(f"{layout.prefix}/_rejected.json"))
    reasons = {(r["row"], r["video_id"]): r["reason"] for r in rejected}
    assert reasons[(2, None)].startswith("bad JSON")
    assert "past the end of the video (36 frames)" in reasons[(6, "late")]


@pytest.mark.ray
def test_exports_follow_the_masks(archive, first_run):
    from surgray.io.video import probe

    config, _, _ = first_run
    storage = config.storage.build()
    layout = OutputLayout(config.output.prefix, storage=storage)
    fs = __import__("s3fs").S3FileSystem(**archive.storage.options, skip_instance_cache=True)
    pngs = fs.ls(layout.export_uri("short", "davis")[5:])
    assert len(pngs) == SHORT
    sav = json.loads(layout.read_bytes(layout.export_uri("short", "sav_json")))
    assert sav["masklet_id"] == [1, 2] and len(sav["masklet"]) == SHORT
    assert (
        probe(layout.export_uri("long1", "overlay_mp4"), storage=archive.storage).frame_count
        == LONG
    )


@pytest.mark.ray
def test_rerun_skips_complete_videos_and_retries_failed_ones(first_run):
    """Planning the same job again (the Ray part of a rerun is in the SIGKILL test)."""
    from surgray.annotate.driver import prepare_job

    config, _, _ = first_run
    layout = OutputLayout(config.output.prefix, storage=config.storage.build())
    before = {v: layout.read_bytes(layout.marker_uri(v)) for v in ("short", "long1", "long2")}
    from surgray.annotate.driver import local_work_rows
    from surgray.annotate.plan_stage import OUTCOME_COLUMN

    plan = prepare_job(config)
    assert sorted(plan.skipped) == ["long1", "long2", "short"]
    # Failed or rejected before: tried again. Probing is the pipeline's (plan_stage), which
    # finds garbage unreadable and late's prompt past the end, as the first run did.
    assert sorted(r["video_id"] for r in plan.rows) == ["garbage", "late", "truncated"]
    assert plan.unreadable == () and len(plan.rejected) == 1  # the bad JSON row
    planned = {r["video_id"]: r[OUTCOME_COLUMN] for r in local_work_rows(plan)}
    assert planned == {"garbage": "unreadable", "late": "rejected", "truncated": ""}
    assert {v: layout.read_bytes(layout.marker_uri(v)) for v in before} == before


def _actors_alive(job_hex: str) -> int:
    import ray

    actors = ray._private.state.actors()
    return sum(1 for a in actors.values() if a["JobID"] == job_hex and a["State"] != "DEAD")


def _listing(fs, prefix: str) -> list[str]:
    fs.invalidate_cache()
    try:
        return fs.find(prefix)
    except FileNotFoundError:
        return []


@pytest.mark.ray
def test_sigkilled_job_reruns_to_exactly_once_rows(archive, first_run, ray_cluster, tmp_path):  # noqa: F811
    import ray
    import s3fs

    from surgray.annotate.pipeline import run_annotate

    names = ["long1", "short", "long2", "long3"]
    manifest = _put_manifest(archive, "killed", [_row(archive, n) for n in names])
    out = f"{archive.bucket}/out-killed"
    config = _config(archive, manifest, out, rows_per_part=4)
    config_path = tmp_path / "annotate.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    log = open(tmp_path / "job.log", "wb")
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address, PYTHONPATH=str(REPO))
    job = subprocess.Popen(
        [sys.executable, "jobs/annotate.py", "--config", str(config_path)],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    fs = s3fs.S3FileSystem(**archive.storage.options, skip_instance_cache=True)
    root = out[5:]
    done, running = set(), set()
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and job.poll() is None:
            files = _listing(fs, root)
            done = {f.rsplit("/", 1)[1][:-5] for f in files if "/_done/" in f}
            with_parts = {f.split("video_id=")[1].split("/")[0] for f in files if "/masks/" in f}
            running = with_parts - done
            if done and running:
                break
            time.sleep(0.25)
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
        log.close()
    assert done and running, (done, running, (tmp_path / "job.log").read_text()[-3000:])
    # The killed driver's actors die with its job; wait so no stray writer remains.
    jobs = {a["JobID"] for a in ray._private.state.actors().values()}
    mine = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + 60
    while any(_actors_alive(j) for j in jobs - {mine}) and time.monotonic() < deadline:
        time.sleep(0.25)
    layout = OutputLayout(out, storage=config.storage.build())
    done = {f.rsplit("/", 1)[1][:-5] for f in _listing(fs, f"{root}/_done")}
    markers = {v: layout.read_bytes(layout.marker_uri(v)) for v in done}

    outcome = run_annotate(config)
    s = outcome.summary
    assert s.skipped == len(done) and s.done == len(names) - len(done) and s.failed == 0
    assert {v: layout.read_bytes(layout.marker_uri(v)) for v in done} == markers
    # Every Parquet file under masks/, listed or not: each key exactly once.
    keys: list[tuple[str, int, int]] = []
    for path in _listing(fs, f"{root}/masks"):
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle, columns=["video_id", "frame_idx", "obj_id"])
        keys += list(zip(*(table.column(c).to_pylist() for c in table.column_names)))
    expected = [(v, f, o) for v in names for f in range(archive.frames[v]) for o in (1, 2)]
    assert sorted(keys) == sorted(expected)
    for name in names:
        _check_video_rows(layout, name, archive.frames[name])
    _compare_batched(first_run[0], config, ("short", "long1", "long2"))


def _compare_batched(batched: AnnotateConfig, single: AnnotateConfig, videos) -> None:
    """K = 2 (first run) and K = 1 (this run) give the same masks (IoU >= 0.99 per mask)."""
    one = OutputLayout(batched.output.prefix, storage=batched.storage.build())
    two = OutputLayout(single.output.prefix, storage=single.storage.build())
    for video in videos:
        rows = [read_mask_rows(lay, video, read_marker(lay, video).parts) for lay in (one, two)]
        for a, b in zip(*rows):
            assert (a["frame_idx"], a["obj_id"]) == (b["frame_idx"], b["obj_id"])
            ma, mb = (
                decode_rle([{"size": r["rle_size"], "counts": r["rle_counts"]}])[0] for r in (a, b)
            )
            union = (ma | mb).sum()
            assert union == 0 or (ma & mb).sum() / union >= 0.99, (video, a["frame_idx"])


# ---------------------------------------------------------------- without Ray


def skip_frames_4_and_7(frame) -> bool:
    """Skip hook for the test below (imported by name: "test_annotate_job:skip_frames_4_and_7")."""
    return frame.index in (4, 7)


def _local_video(path: Path, count: int, seed: int) -> str:
    cfg = SyntheticClipConfig(num_frames=count, height=SIZE, width=SIZE, **PLAIN)
    clip = generate_clip(cfg, seed=seed)
    write_clip_video(clip, str(path))
    return _prompts(clip)


def _actor_config(tmp_path: Path, skip_hook: str, **output) -> AnnotateConfig:
    """A job config for calling `SegmentAnnotator` directly: micro checkpoint, ids as given."""
    checkpoint = tmp_path / "micro.pt"
    save_checkpoint(build_model("micro", image_size=SIZE), str(checkpoint))
    return AnnotateConfig.from_dict({
        "inputs": {"manifest": str(tmp_path / "unused.csv")},
        "output": {"prefix": str(tmp_path / "out"), **output},
        "model": {"variant": "micro", "checkpoint": str(checkpoint), "image_size": SIZE},
        "privacy": {"hash_video_ids": False},
        "frames": {"skip_hook": skip_hook},
    })  # fmt: skip


def _work_rows(items) -> list[dict]:
    """Work rows of (video id, video path, VideoPrompts), one segment each, as the planner
    writes them."""
    from surgray.annotate.plan import WorkItem
    from surgray.annotate.provenance import video_provenance

    rows = []
    for video_id, path, video_prompts in items:
        item = WorkItem(video_id, str(path), video_prompts.to_json(), 0, 1, 0, None)
        provenance = video_provenance("c" * 64, "d" * 64, video_prompts, version="0.1.0")
        rows.append(item.to_row() | {"provenance_json": json.dumps(provenance.as_dict())})
    return rows


def test_actor_steps_videos_together_and_isolates_their_failures(tmp_path):
    """SegmentAnnotator called directly with K = 4 rows: a good video (skip hook drops two
    frames), one cut short mid-stream, one with text prompts, one whose prompt is past its end
    (not probed, so found on the actor): one good result, three clear errors."""
    from surgray.annotate.actor import SegmentAnnotator
    from surgray.annotate.prompts import VideoPrompts
    from surgray.annotate.rows import result_schema

    prompts = _local_video(tmp_path / "good.mp4", 12, seed=3)
    payload = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(payload[: len(payload) // 2])
    config = _actor_config(tmp_path, "test_annotate_job:skip_frames_4_and_7", rows_per_part=4)
    late = json.dumps({"objects": [{"obj_id": 1, "frame": 30, "box": [1, 1, 9, 9]}]})
    items = [
        ("good", "good.mp4", VideoPrompts.from_json(json.dumps({"texts": [], **json.loads(prompts)}))),
        ("cut", "cut.mp4", VideoPrompts.from_json(json.dumps({"texts": [], **json.loads(prompts)}))),
        ("text", "good.mp4", VideoPrompts(texts=("grasper",))),
        ("late", "good.mp4", VideoPrompts.from_json(json.dumps({"texts": [], **json.loads(late)}))),
    ]  # fmt: skip
    rows = _work_rows((video_id, tmp_path / file, p) for video_id, file, p in items)
    table = SegmentAnnotator(config)(pa.Table.from_pylist(rows))
    assert table.schema == result_schema()
    results = {r["video_id"]: r for r in table.to_pylist()}
    assert (results["good"]["frames"], results["good"]["frames_skipped"]) == (10, 2)
    assert results["good"]["error"] == "" and results["good"]["object_ids"] == [1, 2]
    assert "corrupt" in results["cut"]["error"]
    assert results["cut"]["part_names"] == []
    assert (
        results["text"]["error"]
        == "text prompts need a referring (ReSurgSAM2) checkpoint; model.checkpoint is a plain SAM2 one"
    )
    assert "prompts at frames [30] were never reached" in results["late"]["error"]
    assert str(tmp_path) not in "".join(r["error"] for r in results.values())
    layout = OutputLayout(config.output.prefix, storage=LOCAL)
    # Failed segments delete the parts they had flushed (4 rows a part here).
    assert layout.part_names("cut") == layout.part_names("late") == []
    assert len(layout.part_names("good")) == 5  # 10 frames x 2 objects
    parts = [
        PartInfo(n, r) for n, r in zip(results["good"]["part_names"], results["good"]["part_rows"])
    ]
    written = read_mask_rows(layout, "good", parts)
    assert sorted({r["frame_idx"] for r in written}) == [0, 1, 2, 3, 5, 6, 8, 9, 10, 11]


def hook_that_breaks(frame) -> bool:
    """Skip hook for the test below: a bug of its own on frame 4."""
    if frame.index == 4:
        raise RuntimeError("hook broke on frame 4")
    return False


def test_an_internal_error_is_one_line_in_the_status_and_a_traceback_in_the_log(tmp_path, caplog):
    """A failure that is not the input's fault (here a skip hook's bug) keeps one line in the
    result and logs its traceback at WARNING, naming the video by id only; a corrupt video,
    the input's fault, logs no traceback."""
    import logging

    from surgray.annotate.actor import SegmentAnnotator
    from surgray.annotate.prompts import VideoPrompts

    secret = tmp_path / "2024-03-01_Smith_case7"
    secret.mkdir()
    prompts = VideoPrompts.from_json(_local_video(secret / "good.mp4", 6, seed=4))
    payload = (secret / "good.mp4").read_bytes()
    (secret / "cut.mp4").write_bytes(payload[: len(payload) // 2])
    config = _actor_config(tmp_path, "test_annotate_job:hook_that_breaks")
    rows = _work_rows(
        (video_id, secret / f"{video_id}.mp4", prompts) for video_id in ("good", "cut")
    )
    with caplog.at_level(logging.WARNING, logger="surgray.annotate"):
        results = {r.video_id: r for r in SegmentAnnotator(config).annotate_rows(rows)}
    assert results["good"].error == "RuntimeError: hook broke on frame 4"
    assert "corrupt" in results["cut"].error
    traces = [r.getMessage() for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(traces) == 1
    assert traces[0].startswith("video good failed in segment 0:")
    assert "in hook_that_breaks" in traces[0] and "RuntimeError: hook broke" in traces[0]
    assert "Smith" not in caplog.text


def test_cli_exit_codes_for_bad_configs_and_inputs(tmp_path, s3_server, capsys):
    """Invalid config, unreachable output bucket, unknown URI scheme: 2 before Ray starts;
    every video failing: 1. None of these start Ray."""
    from surgray.annotate.cli import main

    def run(config: dict) -> int:
        path = tmp_path / f"c{uuid.uuid4().hex[:6]}.yaml"
        path.write_text(yaml.safe_dump(config))
        return main(["--config", str(path), "--quiet"])

    checkpoint = tmp_path / "micro.pt"
    save_checkpoint(build_model("micro", image_size=SIZE), str(checkpoint))
    (tmp_path / "bad.mp4").write_bytes(b"garbage" * 50)
    (tmp_path / "m.csv").write_text(
        'video_uri,prompts\nbad.mp4,"{""objects"": [{""obj_id"": 1, ""frame"": 0, ""box"": [1, 1, 5, 5]}]}"\n'
    )
    good = {
        "inputs": {"manifest": str(tmp_path / "m.csv")},
        "output": {"prefix": str(tmp_path / "out")},
        "model": {"variant": "micro", "checkpoint": str(checkpoint), "image_size": SIZE},
        "privacy": {"hash_video_ids": False},
    }
    assert run({**good, "actors": {"count": 0}}) == EXIT_INVALID_CONFIG
    assert "actors.count" in capsys.readouterr().err
    storage = {"endpoint_url": s3_server.endpoint_url, "region": "us-west-2"}
    missing = {**good, "output": {"prefix": "s3://no-such-bucket-x/out"}, "storage": storage}
    assert run(missing) == EXIT_INVALID_CONFIG
    assert "cannot write" in capsys.readouterr().err
    assert run({**good, "inputs": {"manifest": "nosuch://bucket/m.csv"}}) == EXIT_INVALID_CONFIG
    assert "unknown URI scheme 'nosuch'" in capsys.readouterr().err
    assert run(good) == EXIT_ALL_FAILED
    assert "failed bad: cannot read the video" in capsys.readouterr().out
