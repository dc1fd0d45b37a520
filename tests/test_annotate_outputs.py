"""Annotate job outputs: layout, crash safety, exactly-once reruns, provenance checks, status,
exit codes, checkpoint digests and privacy, on local disk and on a real moto S3 server."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest

from surgray.annotate.completion import check_complete, is_complete, prepare_rerun_by_content
from surgray.annotate.manifest import VideoTask
from surgray.annotate.outputs import (
    JobSummary,
    OutputLayout,
    SegmentResult,
    SegmentWriter,
    combine_segments,
    exit_code,
    finalize_video,
    read_video_records,
    summarize,
)
from surgray.annotate.probe import probe_task
from surgray.annotate.prompts import VideoPrompts
from surgray.annotate.provenance import (
    checkpoint_cache_info,
    checkpoint_sha256,
    video_provenance,
)
from surgray.io.records import MaskRecord
from surgray.io.storage import LOCAL

PROV_A = video_provenance("a" * 64, "b" * 64, VideoPrompts(("grasper",)), version="0.1.0")
PROV_B = video_provenance("f" * 64, "b" * 64, VideoPrompts(("grasper",)), version="0.1.0")
# Frames 0..4, objects 1 and 2 on each: 10 rows.
EXPECTED_KEYS = {(f, o) for f in range(5) for o in (1, 2)}


def records(video_id: str, frames=range(5)) -> list[MaskRecord]:
    out = []
    for frame in frames:
        masks = np.zeros((2, 6, 8), bool)
        masks[0, frame % 6, :] = True
        masks[1, :, frame % 8] = True
        out += MaskRecord.from_masks(
            video_id, frame, [1, 2], ["grasper", "needle"], [0.9, 0.8], masks
        )
    return out


@pytest.fixture(params=["local", "s3"])
def layout(request, tmp_path):
    if request.param == "local":
        return OutputLayout(str(tmp_path / "out"), storage=LOCAL)
    server = request.getfixturevalue("s3_server")
    fs = server.filesystem()
    if not fs.exists("annotate-outputs"):
        server.make_bucket("annotate-outputs")
    return OutputLayout(f"s3://annotate-outputs/{uuid.uuid4().hex}", storage=server.storage)


def stored_rows(layout: OutputLayout, video_id: str) -> list[dict]:
    """Every row under the video's masks folder, read with pyarrow directly (no marker)."""

    fs, path = layout.storage.filesystem(layout.masks_dir(video_id))
    fs.invalidate_cache()
    rows = []
    for name in sorted(fs.find(path)):
        with fs.open(name, "rb") as handle:
            rows += pq.read_table(handle).to_pylist()
    return rows


def run_segment(
    layout, video_id, segment=0, num_segments=1, frames=range(5), rows_per_part=4
) -> SegmentResult:
    writer = SegmentWriter(layout, video_id, segment, rows_per_part=rows_per_part).start()
    recs = records(video_id, frames)
    for n in range(0, len(recs), 2):  # one frame's two objects at a time, as a tracker emits them
        writer.add(recs[n : n + 2])
    return SegmentResult(
        video_id,
        segment,
        num_segments,
        frames=len(frames),
        object_ids=(1, 2),
        wall_s=0.5,
        parts=writer.close(),
    )


def run_video(layout, video_id, provenance=PROV_A, rows_per_part=4):
    result = run_segment(layout, video_id, rows_per_part=rows_per_part)
    return finalize_video(layout, combine_segments(video_id, [result], provenance))


def test_complete_video_layout_and_rows(layout):
    status = run_video(layout, "vid1")
    assert (status.state, status.frames, status.objects, status.fps) == ("done", 5, 2, 10.0)
    assert [(p.name, p.rows) for p in status.parts] == [
        ("part-00000-00000.parquet", 4),
        ("part-00000-00001.parquet", 4),
        ("part-00000-00002.parquet", 2),
    ]
    assert layout.part_names("vid1") == [p.name for p in status.parts]
    assert layout.marker_uri("vid1") == f"{layout.prefix}/_done/vid1.json"
    assert layout.part_uri("vid1", "x") == f"{layout.prefix}/masks/video_id=vid1/x"
    saved = json.loads(layout.read_bytes(layout.status_uri("vid1")))
    assert (saved["state"], saved["error"], saved["config_hash"], saved["fps"]) == (
        "done",
        None,
        "a" * 64,
        10.0,
    )
    assert is_complete(layout, "vid1", PROV_A)
    rows = stored_rows(layout, "vid1")
    assert sorted((r["frame_idx"], r["obj_id"]) for r in rows) == sorted(EXPECTED_KEYS)
    assert {(r.frame_idx, r.obj_id) for r in read_video_records(layout, "vid1")} == EXPECTED_KEYS


def test_crash_before_marker_is_incomplete_and_rerun_gives_rows_once(layout):
    run_segment(layout, "vid2", frames=range(3))  # crashed after writing two parts, no marker
    assert layout.part_names("vid2") and not is_complete(layout, "vid2", PROV_A)
    assert check_complete(layout, "vid2", PROV_A).reason == "no valid completion marker"
    plan = prepare_rerun_by_content(layout, {"vid2": PROV_A})
    assert (plan.pending, plan.skipped) == (("vid2",), ())
    assert layout.part_names("vid2") == []
    run_video(layout, "vid2")
    rows = stored_rows(layout, "vid2")
    assert len(rows) == 10 and {(r["frame_idx"], r["obj_id"]) for r in rows} == EXPECTED_KEYS
    assert prepare_rerun_by_content(layout, {"vid2": PROV_A}).skipped == ("vid2",)


def test_retried_segment_replaces_its_earlier_attempt(layout):
    run_segment(layout, "vid3", rows_per_part=3)  # first attempt: 4 parts, then the actor died
    retry = run_segment(layout, "vid3", rows_per_part=4)  # the retry writes 3 parts
    assert layout.part_names("vid3") == [f"part-00000-0000{n}.parquet" for n in range(3)]
    finalize_video(layout, combine_segments("vid3", [retry], PROV_A))
    assert len(stored_rows(layout, "vid3")) == 10 and is_complete(layout, "vid3", PROV_A)


def test_unlisted_parts_are_removed_before_the_marker(layout):
    stray = SegmentWriter(layout, "vid4", 7, rows_per_part=100)
    stray.add(records("vid4", [9]))
    stray.close()  # a segment index this plan does not have
    run_video(layout, "vid4")
    assert "part-00007-00000.parquet" not in layout.part_names("vid4")
    assert len(stored_rows(layout, "vid4")) == 10


def test_marker_with_other_provenance_or_damaged_parts_is_not_complete(layout):
    run_video(layout, "vid5")
    assert not is_complete(layout, "vid5", PROV_B)
    assert check_complete(layout, "vid5", PROV_B).reason == "made with other config_hash"
    # A part rewritten with fewer rows.
    one = SegmentWriter(layout, "vid5", 0, rows_per_part=100)
    one.add(records("vid5", [0]))
    assert one.close()[0].name == "part-00000-00000.parquet"
    assert (
        check_complete(layout, "vid5", PROV_A).reason
        == "part part-00000-00000.parquet has 2 rows, the marker says 4"
    )
    plan = prepare_rerun_by_content(layout, {"vid5": PROV_B})
    assert plan.pending == ("vid5",) and layout.read_bytes(layout.marker_uri("vid5")) is None
    run_video(layout, "vid5", PROV_B)
    assert is_complete(layout, "vid5", PROV_B) and len(stored_rows(layout, "vid5")) == 10


def test_missing_extra_or_unreadable_parts_and_bad_markers(layout):
    run_video(layout, "vid6")
    layout.remove(layout.part_uri("vid6", "part-00000-00002.parquet"))
    assert "differ from the marker's" in check_complete(layout, "vid6", PROV_A).reason
    run_video(layout, "vid6")
    layout.put_bytes(layout.part_uri("vid6", "part-00000-00002.parquet"), b"PAR1 truncated")
    assert check_complete(layout, "vid6", PROV_A).reason.startswith(
        "part part-00000-00002.parquet unreadable"
    )
    run_video(layout, "vid6")
    layout.put_bytes(layout.part_uri("vid6", "part-00009-00000.parquet"), b"x")
    assert not is_complete(layout, "vid6", PROV_A)
    layout.put_bytes(layout.marker_uri("vid6"), b'{"video_id": "vid6"')
    assert check_complete(layout, "vid6", PROV_A).reason == "no valid completion marker"


def test_segments_combine_and_a_failed_segment_leaves_no_marker(layout):
    first = run_segment(layout, "vid7", 0, 2, frames=range(3))
    second = run_segment(layout, "vid7", 1, 2, frames=range(3, 5))
    status = finalize_video(layout, combine_segments("vid7", [second, first], PROV_A))
    assert (status.state, status.segments, status.frames) == ("done", 2, 5)
    assert {(r["frame_idx"], r["obj_id"]) for r in stored_rows(layout, "vid7")} == EXPECTED_KEYS
    assert is_complete(layout, "vid7", PROV_A)

    ok = run_segment(layout, "vid8", 0, 2, frames=range(3))
    bad = SegmentResult("vid8", 1, 2, error="VideoError: <video vid8>: corrupt packet")
    failed = finalize_video(layout, combine_segments("vid8", [ok, bad], PROV_A))
    assert (
        failed.state == "failed"
        and failed.error == "segment 1: VideoError: <video vid8>: corrupt packet"
    )
    assert layout.read_bytes(layout.marker_uri("vid8")) is None
    assert json.loads(layout.read_bytes(layout.status_uri("vid8")))["state"] == "failed"
    lost = combine_segments("vid9", [SegmentResult("vid9", 1, 3)], PROV_A)
    assert lost.state == "failed" and "expected segments 0..2, got [1]" in lost.error


def test_segment_result_rows_round_trip():
    result = SegmentResult("v", 1, 2, 3, 1, (4, 5), 0.25, None)
    assert SegmentResult.from_row(result.to_row()) == result


def test_summary_and_exit_codes():
    done = combine_segments("a", [SegmentResult("a", 0, 1, frames=50, wall_s=2.0)], PROV_A)
    failed = combine_segments("b", [SegmentResult("b", 0, 1, error="boom")], PROV_A)
    summary = summarize([done, failed], skipped=3, rejected_rows=2, wall_s=10.0)
    assert summary == JobSummary(
        videos=5, done=1, skipped=3, failed=1, rejected_rows=2, frames=50, wall_s=10.0
    )
    assert summary.fps == 5.0 and exit_code(summary) == 0
    assert exit_code(summarize([failed], skipped=0, rejected_rows=0, wall_s=1.0)) == 1
    assert exit_code(summarize([failed], skipped=1, rejected_rows=0, wall_s=1.0)) == 0
    assert exit_code(summarize([], skipped=4, rejected_rows=0, wall_s=1.0)) == 0
    assert exit_code(None) == 2


def test_checkpoint_sha256_local_and_s3_with_cache(tmp_path, s3_server):
    payload = os.urandom(3 * (1 << 20) + 17)  # crosses the 1 MiB read chunks
    local = tmp_path / "ckpt.pt"
    local.write_bytes(payload)
    expected = hashlib.sha256(payload).hexdigest()
    before = checkpoint_cache_info()
    assert checkpoint_sha256(local, storage=LOCAL) == expected
    assert checkpoint_sha256(str(local), storage=LOCAL) == expected
    after = checkpoint_cache_info()
    assert (after["misses"] - before["misses"], after["hits"] - before["hits"]) == (1, 1)
    local.write_bytes(payload[::-1])
    os.utime(local, (1, 1))  # a new mtime, whatever the clock's resolution
    assert checkpoint_sha256(local, storage=LOCAL) == hashlib.sha256(payload[::-1]).hexdigest()
    bucket = s3_server.make_bucket("annotate-ckpt")
    s3_server.filesystem().pipe_file("annotate-ckpt/models/ckpt.pt", payload)
    assert checkpoint_sha256(f"{bucket}/models/ckpt.pt", storage=s3_server.storage) == expected
    with pytest.raises(FileNotFoundError, match="missing.pt: checkpoint not found"):
        checkpoint_sha256(tmp_path / "missing.pt", storage=LOCAL)


def test_info_logs_and_records_name_videos_by_id_only(s3_server, tmp_path, caplog):
    uri = "s3://annotate-outputs/archive/2024-03-01_Smith_John_cholecystectomy.mp4"
    task = VideoTask(uri, "3f9a1c0b7d2e4a65", VideoPrompts(("grasper",)))
    layout = OutputLayout(str(tmp_path / "out"), storage=LOCAL)
    # DEBUG too: a skipped video is logged at debug level, and no level may leak a name.
    with caplog.at_level(logging.DEBUG, logger="surgray.annotate"):
        if not s3_server.filesystem().exists("annotate-outputs"):
            s3_server.make_bucket("annotate-outputs")
        probe = probe_task(task, storage=s3_server.storage)
        run_segment(layout, task.video_id, frames=range(2))
        prepare_rerun_by_content(layout, {task.video_id: PROV_A})
        bad = SegmentResult(task.video_id, 0, 1, error=probe.errors[0].reason)
        finalize_video(layout, combine_segments(task.video_id, [bad], PROV_A))
        failed_status = layout.read_bytes(layout.status_uri(task.video_id)).decode()
        run_video(layout, task.video_id)
        prepare_rerun_by_content(layout, {task.video_id: PROV_A})
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("surgray.annotate")]
    assert len(messages) >= 4 and all("video 3f9a1c0b7d2e4a65" in m for m in messages)
    assert "Smith" not in caplog.text and "archive/" not in caplog.text
    assert "cannot read the video: <video 3f9a1c0b7d2e4a65>" in failed_status
    for status in (failed_status, layout.read_bytes(layout.status_uri(task.video_id)).decode()):
        assert "Smith" not in status and "archive/" not in status
