"""Reruns verified by content (issue 22): the completion marker records each part's sha256, so
a part rewritten with the same number of rows (zeroed scores) is found and its video redone;
a deleted status record is restored from the marker; `_summary.json` says `running` from the
start of a run until its end.

First on local disk through the output functions (no Ray), then through the real job: a local
Ray, moto S3, synthetic MP4s (the archive of test_annotate_job).
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_annotate_job import _config, _put_manifest, _row, archive  # noqa: F401  (fixture)
from test_annotate_outputs import PROV_A, run_segment, run_video

from surgray.annotate.completion import check_complete, prepare_rerun_by_content
from surgray.annotate.outputs import (
    Marker,
    OutputLayout,
    combine_segments,
    finalize_video,
    read_marker,
)
from surgray.io.storage import LOCAL


def _zero_scores(layout: OutputLayout, video_id: str, name: str) -> None:
    """Rewrite one part with the same rows but every score 0 (as a buggy tool might)."""
    uri = layout.part_uri(video_id, name)
    table = pq.read_table(pa.BufferReader(layout.read_bytes(uri)))
    column = table.schema.get_field_index("score")
    zeros = pa.array([0.0] * table.num_rows, type=table.schema.field("score").type)
    sink = pa.BufferOutputStream()
    pq.write_table(table.set_column(column, "score", zeros), sink)
    layout.put_bytes(uri, sink.getvalue().to_pybytes())


def test_part_rewritten_with_the_same_rows_is_found_and_the_video_redone(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"), storage=LOCAL)
    status = run_video(layout, "vid")
    marker = read_marker(layout, "vid")
    assert all(p.sha256 and len(p.sha256) == 64 for p in marker.parts)
    assert check_complete(layout, "vid", PROV_A).complete
    first = marker.parts[0]
    _zero_scores(layout, "vid", first.name)
    assert layout.part_content("vid", first.name)[0] == first.rows  # same row count
    state = check_complete(layout, "vid", PROV_A)
    assert not state.complete and "rewritten" in state.reason
    plan = prepare_rerun_by_content(layout, {"vid": PROV_A})
    assert plan.pending == ("vid",) and layout.part_names("vid") == []
    redone = run_video(layout, "vid")
    assert check_complete(layout, "vid", PROV_A).complete
    assert [p.sha256 for p in redone.parts] == [p.sha256 for p in status.parts]  # deterministic


def test_a_marker_without_digests_is_not_trusted(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"), storage=LOCAL)
    run_video(layout, "old")
    marker = read_marker(layout, "old")
    stripped = [{"name": p.name, "rows": p.rows} for p in marker.parts]
    data = json.loads(marker.to_json()) | {"format": 1, "parts": stripped}
    data.pop("status")
    layout.put_bytes(layout.marker_uri("old"), json.dumps(data).encode())
    assert Marker.from_json(layout.read_bytes(layout.marker_uri("old"))).status_json is None
    state = check_complete(layout, "old", PROV_A)
    assert not state.complete and "no digest" in state.reason


def test_missing_status_record_is_restored_and_summary_says_running(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"), storage=LOCAL)
    run_video(layout, "vid")
    saved = layout.read_bytes(layout.status_uri("vid"))
    layout.put_bytes(layout.summary_uri, b'{"done": 8}')  # an earlier run's counts
    assert layout.remove(layout.status_uri("vid"))
    plan = prepare_rerun_by_content(layout, {"vid": PROV_A, "new": PROV_A})
    assert plan.skipped == ("vid",) and plan.pending == ("new",)
    assert layout.read_bytes(layout.status_uri("vid")) == saved
    summary = json.loads(layout.read_bytes(layout.summary_uri))
    assert summary["state"] == "running" and summary["videos"] == 2 and "done" not in summary


def test_segment_results_carry_digests_through_ray_rows(tmp_path):
    from surgray.annotate.status import SegmentResult

    layout = OutputLayout(str(tmp_path / "out"), storage=LOCAL)
    result = run_segment(layout, "vid")
    again = SegmentResult.from_row(result.to_row())
    assert [p.sha256 for p in again.parts] == [p.sha256 for p in result.parts]
    assert all(p.sha256 for p in again.parts)
    status = finalize_video(layout, combine_segments("vid", [again], PROV_A))
    assert check_complete(layout, "vid", PROV_A).complete and status.state == "done"


@pytest.mark.ray
def test_job_rerun_redoes_a_rewritten_part_and_restores_a_status(archive, ray_cluster):  # noqa: F811
    from surgray.annotate.driver import prepare_job
    from surgray.annotate.pipeline import execute, run_annotate

    manifest = _put_manifest(archive, "content", [_row(archive, "short"), _row(archive, "long1")])
    config = _config(archive, manifest, f"{archive.bucket}/out-content", rows_per_part=8)
    first = run_annotate(config)
    assert (first.summary.done, first.summary.failed) == (2, 0)
    layout = OutputLayout(config.output.prefix, storage=config.storage.build())
    part = read_marker(layout, "short").parts[0]
    original = layout.read_bytes(layout.part_uri("short", part.name))
    _zero_scores(layout, "short", part.name)
    status_long1 = layout.read_bytes(layout.status_uri("long1"))
    assert layout.remove(layout.status_uri("long1"))

    plan = prepare_job(config)  # the start of the rerun
    assert json.loads(layout.read_bytes(layout.summary_uri))["state"] == "running"
    assert [r["video_id"] for r in plan.rows] == ["short"] and plan.skipped == ("long1",)
    assert layout.read_bytes(layout.status_uri("long1")) == status_long1
    outcome = execute(plan)
    assert (outcome.summary.done, outcome.summary.skipped, outcome.summary.failed) == (1, 1, 0)
    summary = json.loads(layout.read_bytes(layout.summary_uri))
    assert summary["state"] == "finished" and summary["done"] == 1
    redone = layout.read_bytes(layout.part_uri("short", part.name))
    table = pq.read_table(pa.BufferReader(redone))
    assert max(table.column("score").to_pylist()) > 0  # the zeroed scores are gone
    assert check_complete(layout, "short", read_marker(layout, "short").provenance).complete
    assert hashlib.sha256(redone).hexdigest() == read_marker(layout, "short").parts[0].sha256
    assert redone == original  # the same job on the same video writes the same bytes
