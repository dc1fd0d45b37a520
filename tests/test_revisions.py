"""Reviewed revisions beside an annotation store: written by the job's own writers, corrected,
never overwriting the batch output, exactly once, with a conflict for a stale save."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np
import pytest

from surgray.annotate.completion import reset_video
from surgray.annotate.outputs import OutputLayout, SegmentWriter, finalize_video
from surgray.annotate.provenance import Provenance
from surgray.annotate.revisions import (
    RevisionConflict,
    RevisionError,
    RevisionStore,
    apply_correction,
    read_latest_records,
)
from surgray.annotate.status import SegmentResult, combine_segments
from surgray.io.records import MaskRecord
from surgray.io.storage import LOCAL

VIDEO = "case-1"
FRAMES, SIZE = 6, 16
PROVENANCE = Provenance("0.1", "c" * 64, "k" * 64, "p" * 64, "{}")


def _mask(frame: int, obj: int, shift: int = 0) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[2 + obj : 6 + obj, frame + shift : frame + shift + 4] = True
    return mask


def _records(frames: range, obj: int, shift: int = 0, video: str = VIDEO) -> list[MaskRecord]:
    out = []
    for frame in frames:
        out += MaskRecord.from_masks(
            video, frame, [obj], [f"tool {obj}"], [0.5], _mask(frame, obj, shift)[None]
        )
    return out


def _batch_store(root: Path) -> OutputLayout:
    """A store as the annotate job leaves it: parts of two segments, status, marker."""
    layout = OutputLayout(str(root), storage=LOCAL)
    results = []
    for segment, frames in enumerate([range(0, 3), range(3, FRAMES)]):
        writer = SegmentWriter(layout, VIDEO, segment, rows_per_part=2).start()
        writer.add(
            sorted(_records(frames, 1) + _records(frames, 2), key=lambda r: (r.frame_idx, r.obj_id))
        )
        results.append(
            SegmentResult(
                VIDEO, segment, 2, frames=len(frames), object_ids=(1, 2), parts=writer.close()
            )
        )
    finalize_video(layout, combine_segments(VIDEO, results, PROVENANCE))
    return layout


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "revisions" not in p.parts
    }


def _save(store: RevisionStore, parent: int, shift: int, author: str = "token-abc"):
    base = store.records(VIDEO, parent)
    new = _records(range(3, FRAMES), 2, shift=shift)
    rows = apply_correction(base, 2, 3, new)
    return store.save(
        VIDEO, parent=parent, records=rows, frames=FRAMES, frames_changed=range(3, FRAMES),
        objects_changed=[2], prompts=[{"frame": 3, "point": [4, 5], "label": 1}], author=author,
    )  # fmt: skip


def test_a_save_is_a_new_revision_and_the_batch_output_stays_byte_identical(tmp_path):
    layout = _batch_store(tmp_path)
    before = _digests(tmp_path)
    store = RevisionStore(layout)
    assert store.latest(VIDEO) is None and len(store.records(VIDEO)) == 2 * FRAMES

    first = _save(store, 0, shift=1)
    assert (first.revision, first.parent, first.objects_changed) == (1, 0, (2,))
    assert first.frames_changed == (3, 4, 5) and first.author == "token-abc"
    second = _save(store, 1, shift=2)
    assert _digests(tmp_path) == before  # nothing of the batch output was touched

    latest = {(r.frame_idx, r.obj_id): r for r in read_latest_records(layout, VIDEO)}
    assert len(latest) == 2 * FRAMES
    assert np.array_equal(latest[(4, 2)].mask(), _mask(4, 2, shift=2))
    assert np.array_equal(latest[(2, 2)].mask(), _mask(2, 2))  # before the correction: kept
    assert np.array_equal(latest[(4, 1)].mask(), _mask(4, 1))  # another object: kept
    by_id = {(r.frame_idx, r.obj_id): r for r in read_latest_records(layout, VIDEO, revision=1)}
    assert np.array_equal(by_id[(4, 2)].mask(), _mask(4, 2, shift=1))
    batch = {(r.frame_idx, r.obj_id): r for r in read_latest_records(layout, VIDEO, revision=0)}
    assert np.array_equal(batch[(4, 2)].mask(), _mask(4, 2))
    assert [r.revision for r in store.revisions(VIDEO)] == [1, 2] and second.parent == 1
    with pytest.raises(RevisionError, match="no revision 7"):
        read_latest_records(layout, VIDEO, revision=7)
    record = (tmp_path / "revisions" / f"video_id={VIDEO}" / "r-00002.json").read_text()
    assert '"author": "token-abc"' in record and '"parent": 1' in record


def test_a_stale_save_is_refused_and_leaves_nothing(tmp_path):
    layout = _batch_store(tmp_path)
    store = RevisionStore(layout)
    _save(store, 0, shift=1, author="token-first")
    with pytest.raises(RevisionConflict, match="revision 1 is the latest"):
        _save(store, 0, shift=2, author="token-second")
    assert [r.author for r in store.revisions(VIDEO)] == ["token-first"]
    folders = [p for p in (tmp_path / "revisions" / f"video_id={VIDEO}").iterdir() if p.is_dir()]
    assert len(folders) == 1  # the refused save wrote no parts


def test_two_savers_at_once_make_exactly_one_revision(tmp_path):
    layout = _batch_store(tmp_path)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def saver(name: str) -> None:
        store = RevisionStore(OutputLayout(str(tmp_path), storage=LOCAL))
        barrier.wait(timeout=10)
        try:
            _save(store, 0, shift=1, author=name)
            outcomes.append("saved")
        except RevisionConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=saver, args=(f"token-{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["conflict", "saved"]
    assert len(RevisionStore(layout).revisions(VIDEO)) == 1


def test_a_crashed_save_is_invisible_and_a_rerun_batch_makes_revisions_stale(tmp_path):
    layout = _batch_store(tmp_path)
    store = RevisionStore(layout)
    # Parts without a record (a save that died before its record): readers never see them.
    stray = tmp_path / "revisions" / f"video_id={VIDEO}" / "r-00001-deadbeef"
    stray.mkdir(parents=True)
    (stray / "part-00000.parquet").write_bytes(b"partial")
    assert store.latest(VIDEO) is None and len(read_latest_records(layout, VIDEO)) == 2 * FRAMES
    _save(store, 0, shift=1)
    assert store.latest_number(VIDEO) == 1
    # A rerun of the job with other provenance rewrites the batch output: the old correction
    # no longer applies to it, and readers fall back to the new batch rows.
    reset_video(layout, VIDEO)
    _batch_store(tmp_path)  # the same rows and the same marker bytes:
    assert store.latest_number(VIDEO) == 1  # identical marker: the revision still applies
    marker = tmp_path / "_done" / f"{VIDEO}.json"
    marker.write_text(marker.read_text().replace('"frames": 6', '"frames": 6 '))
    assert store.latest(VIDEO) is None
    assert len(read_latest_records(layout, VIDEO)) == 2 * FRAMES


def test_bad_saves_and_unknown_videos(tmp_path):
    layout = _batch_store(tmp_path)
    store = RevisionStore(layout)
    with pytest.raises(RevisionError, match="a row of video other"):
        store.save(
            VIDEO, parent=0, records=_records(range(1), 1, video="other"), frames=1,
            frames_changed=[0], objects_changed=[1], author="x",
        )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no batch output and no revision"):
        read_latest_records(layout, "missing-video")
    with pytest.raises(ValueError, match="video id"):
        store.folder("../escape")


def test_surgray_eval_reads_a_store_at_its_latest_revision(tmp_path):
    from surgray.annotate.revisions import store_mask_table
    from surgray.eval.sources import EvalInputError, open_predictions

    layout = _batch_store(tmp_path)
    with pytest.raises(EvalInputError, match="is an annotation store"):
        open_predictions(tmp_path)  # eval alone does not know the store's format
    before = open_predictions(tmp_path, store_mask_table).load(VIDEO, "00004", (SIZE, SIZE))
    assert np.array_equal(before[2], _mask(4, 2))  # the batch output, no revision yet
    _save(RevisionStore(layout), 0, shift=1)
    after = open_predictions(tmp_path, store_mask_table).load(VIDEO, "00004", (SIZE, SIZE))
    assert np.array_equal(after[2], _mask(4, 2, shift=1)) and np.array_equal(after[1], _mask(4, 1))
    masks_only = open_predictions(tmp_path / "masks").load(VIDEO, "00004", (SIZE, SIZE))
    assert np.array_equal(masks_only[2], _mask(4, 2))  # the masks folder alone: the job's rows


def test_revisions_on_object_storage_are_created_once(s3_server):
    bucket = s3_server.make_bucket("revisions-test")
    layout = OutputLayout(f"{bucket}/out", storage=s3_server.storage)
    writer = SegmentWriter(layout, VIDEO, 0).start()
    writer.add(_records(range(FRAMES), 1))
    result = SegmentResult(VIDEO, 0, 1, frames=FRAMES, object_ids=(1,), parts=writer.close())
    finalize_video(layout, combine_segments(VIDEO, [result], PROVENANCE))
    store = RevisionStore(layout)
    first = _save(store, 0, shift=1)
    assert first.revision == 1 and len(read_latest_records(layout, VIDEO)) == 2 * FRAMES - 3
    # The record is created with a conditional put: a second create of it is refused.
    assert store._create(store.record_uri(VIDEO, 1), b"{}") is False
    fs, path = layout._fs(store.record_uri(VIDEO, 1))
    with pytest.raises(FileExistsError):  # what _create relies on when two race past exists()
        fs.pipe_file(path, b"{}", mode="create")
    assert store.latest(VIDEO) == first
    with pytest.raises(RevisionConflict):
        _save(store, 0, shift=2)
