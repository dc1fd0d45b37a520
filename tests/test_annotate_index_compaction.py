"""Compaction of the run index: every run appends `_index/` files; a rerun that reads more than
`COMPACT_OVER` of them writes their entries as one file and then removes the files it read.

On a local folder and on a real S3 server (moto). Checked: after 5 small runs the next rerun
leaves one file holding every entry, and skips every video without a read of its own; a
compaction interrupted after its new file was written (nothing removed) still reads right and
is finished by the next one; a file another job writes during a compaction is kept.
"""

from __future__ import annotations

import pytest
from test_annotate_index import CountingLayout, counting_layout
from test_annotate_outputs import PROV_A, PROV_B, run_video

from surgray.annotate.outputs import OutputLayout
from surgray.annotate.rerun import prepare_rerun
from surgray.annotate.run_index import (
    COMPACT_OVER,
    INDEX_FOLDER,
    IndexWriter,
    compact_index,
    latest_entries,
    read_index,
    read_index_files,
)
from surgray.io.storage import LOCAL

RUNS = 5
assert RUNS > COMPACT_OVER  # the test's premise: 5 runs' files are more than the threshold


class NoRemoveLayout(OutputLayout):
    """A job that dies after writing the compacted file: no removal happens."""

    def remove(self, uri: str, recursive: bool = False) -> bool:
        return False


@pytest.fixture(params=["local", "s3"])
def layout(request, tmp_path):
    return counting_layout(request, tmp_path, "annotate-compact")


def _run(layout: OutputLayout, video_ids: list[str]) -> None:
    """One small job: its videos finalized and indexed in one file of its own."""
    writer = IndexWriter(layout)
    for video_id in video_ids:
        run_video(layout, video_id)
        writer.add(video_id, PROV_A)
    writer.flush()


def _index_files(layout: OutputLayout) -> list[str]:
    return sorted(n for n in layout.entries_in(INDEX_FOLDER) if n.endswith(".parquet"))


def _five_runs(layout: OutputLayout) -> dict:
    videos = {}
    for n in range(RUNS):
        _run(layout, [f"v{n}"])
        videos[f"v{n}"] = PROV_A
    assert len(_index_files(layout)) == RUNS
    return videos


def test_five_runs_leave_one_index_file_with_every_entry(layout):
    videos = _five_runs(layout)
    layout.reads.clear()
    plan = prepare_rerun(layout, videos)
    assert plan.skipped == tuple(videos) and plan.pending == ()
    assert [r for r in layout.reads if not r.startswith(INDEX_FOLDER + "/")] == []
    files = _index_files(layout)
    assert len(files) == 1
    _, entries = read_index_files(layout)
    assert sorted(e.video_id for e in entries) == sorted(videos)
    # The next rerun reads that one file and still skips everything.
    layout.reads.clear()
    assert prepare_rerun(layout, videos).skipped == tuple(videos)
    assert [r for r in layout.reads if r.startswith(INDEX_FOLDER + "/")] == [
        f"{INDEX_FOLDER}/{files[0]}"
    ]


def test_an_interrupted_compaction_reads_right_and_is_finished_later(tmp_path):
    layout = CountingLayout(str(tmp_path / "out"), storage=LOCAL)
    videos = _five_runs(layout)
    dying = NoRemoveLayout(layout.prefix, storage=LOCAL)
    names, entries = read_index_files(dying)
    assert compact_index(dying, names, entries) is not None
    assert len(_index_files(layout)) == RUNS + 1  # written, nothing removed
    found = read_index(layout, videos, compact_over=100)
    assert all(len(found[v]) == 2 for v in videos)  # every entry twice
    layout.reads.clear()
    plan = prepare_rerun(layout, videos)  # compacts again, and removes all it read
    assert plan.skipped == tuple(videos)
    assert [r for r in layout.reads if not r.startswith(INDEX_FOLDER + "/")] == []
    assert len(_index_files(layout)) == 1
    _, entries = read_index_files(layout)
    assert sorted(e.video_id for e in entries) == sorted(videos)  # duplicates dropped


def test_a_file_written_during_a_compaction_is_kept(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"), storage=LOCAL)
    videos = _five_runs(layout)
    names, entries = read_index_files(layout)  # the compaction's reading ...
    _run(layout, ["late"])  # ... another job indexes a video meanwhile ...
    compact_index(layout, names, entries)  # ... then the compaction writes and removes
    videos["late"] = PROV_A
    assert len(_index_files(layout)) == 2
    assert set(read_index(layout, videos, compact_over=100)) == set(videos)


def test_superseded_entries_are_dropped_others_kept(tmp_path):
    layout = OutputLayout(str(tmp_path / "out"), storage=LOCAL)
    _run(layout, ["a", "b"])
    writer = IndexWriter(layout)
    run_video(layout, "a")  # "a" redone: its new entry supersedes the old one
    writer.add("a", PROV_A)
    writer.add("b", PROV_B)  # another provenance: a different entry, kept
    writer.flush()
    names, entries = read_index_files(layout)
    kept = latest_entries(entries)
    assert sorted((e.video_id, e.provenance == entries[0].provenance) for e in kept) == [
        ("a", True),
        ("b", False),
        ("b", True),
    ]
    assert [e for e in kept if e.video_id == "a"] == [entries[2]]
