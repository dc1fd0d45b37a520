"""The rerun check by index (issue 23): a run indexes the videos it completes under
`<prefix>/_index/`, and a rerun skips them from listings and that index without reading a
marker, status or part of theirs; anything changed since (a part rewritten, removed or added,
the marker replaced, another provenance) sends the video to the per-video content check.

On a local folder and on a real S3 server (moto), where the fingerprint is the ETag. Reads
are counted by a layout that records each `read_bytes` URI (the store itself is real).
"""

from __future__ import annotations

import json
import uuid

import pytest
from test_annotate_outputs import PROV_A, PROV_B, run_video

from surgray.annotate.outputs import OutputLayout, read_marker
from surgray.annotate.rerun import prepare_rerun
from surgray.annotate.run_index import (
    INDEX_FOLDER,
    IndexWriter,
    decode_entries,
    encode_entries,
    entry_now,
    read_index,
)
from surgray.io.storage import LOCAL


class CountingLayout(OutputLayout):
    """An output layout that remembers which objects were read (GETs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads: list[str] = []

    def read_bytes(self, uri: str) -> bytes | None:
        self.reads.append(uri.removeprefix(self.prefix + "/"))
        return super().read_bytes(uri)


def counting_layout(request, tmp_path, bucket: str) -> CountingLayout:
    """A fresh counting layout on a local folder or, for the "s3" param, in `bucket` on moto."""
    if request.param == "local":
        return CountingLayout(str(tmp_path / "out"), storage=LOCAL)
    server = request.getfixturevalue("s3_server")
    if not server.filesystem().exists(bucket):
        server.make_bucket(bucket)
    return CountingLayout(f"s3://{bucket}/{uuid.uuid4().hex}", storage=server.storage)


@pytest.fixture(params=["local", "s3"])
def layout(request, tmp_path):
    return counting_layout(request, tmp_path, "annotate-index")


def _indexed_run(layout: OutputLayout, video_ids: list[str]) -> None:
    """What a job does: finalize each video, then index it; one index file at the end."""
    writer = IndexWriter(layout, flush_every=1000)
    for video_id in video_ids:
        run_video(layout, video_id)
        writer.add(video_id, PROV_A)
    writer.flush()


def _object_reads(layout: CountingLayout) -> list[str]:
    """Reads of anything but the index itself."""
    return [r for r in layout.reads if not r.startswith(INDEX_FOLDER + "/")]


def test_indexed_videos_are_skipped_without_a_read_of_their_own(layout):
    _indexed_run(layout, ["a", "b", "c"])
    layout.reads.clear()
    plan = prepare_rerun(layout, {"a": PROV_A, "b": PROV_A, "c": PROV_A, "new": PROV_A})
    assert plan.skipped == ("a", "b", "c") and plan.pending == ("new",)
    assert _object_reads(layout) == []  # no marker, status or part was read
    assert [r for r in layout.reads if r.startswith(INDEX_FOLDER)]  # the index was


def test_a_part_rewritten_removed_or_added_since_is_checked_and_redone(layout):
    _indexed_run(layout, ["same", "rewritten", "removed", "added", "marker"])
    rewritten = read_marker(layout, "rewritten").parts[0].name
    payload = layout.read_bytes(layout.part_uri("rewritten", rewritten))
    layout.put_bytes(layout.part_uri("rewritten", rewritten), payload[:-8] + b"\0" * 8)
    assert layout.remove(layout.part_uri("removed", read_marker(layout, "removed").parts[0].name))
    layout.put_bytes(layout.part_uri("added", "part-00009-00000.parquet"), b"stray")
    marker = json.loads(layout.read_bytes(layout.marker_uri("marker")))
    layout.put_bytes(layout.marker_uri("marker"), json.dumps(marker | {"frames": 4}).encode())
    layout.reads.clear()
    ids = ["same", "rewritten", "removed", "added", "marker"]
    plan = prepare_rerun(layout, dict.fromkeys(ids, PROV_A))
    # "marker" still passes the content check (its parts are intact): skipped, after a read.
    assert set(plan.skipped) == {"same", "marker"}
    assert set(plan.pending) == {"rewritten", "removed", "added"}
    for video_id in ("rewritten", "removed", "added"):
        assert layout.part_names(video_id) == []  # reset for the redo
    assert "_done/marker.json" in _object_reads(layout)
    assert not any("same" in r for r in _object_reads(layout))


def test_outputs_of_an_older_run_are_checked_once_then_indexed(layout):
    for video_id in ("old1", "old2"):
        run_video(layout, video_id)  # no index: written before the index existed
    plan = prepare_rerun(layout, {"old1": PROV_A, "old2": PROV_A})
    assert plan.skipped == ("old1", "old2")
    assert {"_done/old1.json", "_done/old2.json"} <= set(_object_reads(layout))
    assert set(read_index(layout, ["old1", "old2"])) == {"old1", "old2"}
    layout.reads.clear()
    again = prepare_rerun(layout, {"old1": PROV_A, "old2": PROV_A})
    assert again.skipped == ("old1", "old2") and _object_reads(layout) == []


def test_another_provenance_is_redone_and_a_missing_status_is_restored(layout):
    _indexed_run(layout, ["changed", "kept"])
    saved = layout.read_bytes(layout.status_uri("kept"))
    assert layout.remove(layout.status_uri("kept"))
    plan = prepare_rerun(layout, {"changed": PROV_B, "kept": PROV_A})
    assert plan.skipped == ("kept",) and plan.pending == ("changed",)
    assert layout.read_bytes(layout.status_uri("kept")) == saved
    assert layout.part_names("changed") == []


def test_index_files_round_trip_and_a_broken_one_is_ignored(layout):
    run_video(layout, "vid")
    entry = entry_now(layout, "vid", PROV_A)
    assert entry is not None and len(entry.parts) == 3 and all(fp[1] for _, fp in entry.parts)
    assert decode_entries(encode_entries([entry])) == [entry]
    layout.put_bytes(f"{layout.prefix}/{INDEX_FOLDER}/broken.parquet", b"not parquet")
    writer = IndexWriter(layout, run_id="r1")
    writer.add_entry(entry)
    assert writer.flush() == f"{layout.prefix}/{INDEX_FOLDER}/r1-00000.parquet"
    assert writer.flush() is None  # nothing new
    assert read_index(layout, ["vid", "other"]) == {"vid": [entry]}
    assert entry_now(layout, "missing", PROV_A) is None
