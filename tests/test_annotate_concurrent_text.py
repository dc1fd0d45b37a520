"""Concurrent calls on one annotator with text prompts (no Ray): two threads call the same
`SegmentAnnotator` at once, as Ray's threaded actor does with `actors.concurrent_videos` 2,
while the text encoder is loaded lazily by the first of them and the tokenizer is shared. The
masks and states equal those of one call at a time."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pytest
import torch
from _referring_fixtures import script_scores, tiny_model, write_tiny_clip

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.manifest import VideoTask
from surgray.annotate.outputs import OutputLayout, PartInfo
from surgray.annotate.plan import plan_work_items
from surgray.annotate.prompts import VideoPrompts
from surgray.annotate.provenance import video_provenance
from surgray.annotate.rows import read_mask_rows
from surgray.data.synthetic import SyntheticClipConfig, generate_clip
from surgray.data.synthetic_writers import write_clip_video
from surgray.io.storage import LOCAL
from surgray.io.video import probe
from surgray.model.checkpoints.referring_checkpoint import save_referring_checkpoint
from surgray.tracking.cifs import CIFSConfig

SIZE, FRAMES, PIXELS = 64, 12, 96
TEXTS = ("the grasper", "the needle driver")
PLAIN = dict(leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concurrent_text")
    clip_dir = write_tiny_clip(folder / "clip")
    torch.manual_seed(0)
    model = tiny_model(clip_dir, size=SIZE, cifs=CIFSConfig())
    script_scores(model, 4.0, 0.95)
    save_referring_checkpoint(model, folder / "ref.pt")
    rows = []
    for n in range(2):
        clip = generate_clip(
            SyntheticClipConfig(num_frames=FRAMES, height=PIXELS, width=PIXELS, **PLAIN), seed=n
        )
        path = folder / f"case{n}.mp4"
        write_clip_video(clip, str(path))
        task = VideoTask(str(path), f"case{n}", VideoPrompts(texts=TEXTS))
        provenance = video_provenance("c" * 64, "d" * 64, VideoPrompts(texts=TEXTS), version="0")
        (row,) = plan_work_items(
            [task], max_segment_frames=None, infos={task.video_id: probe(str(path))}
        )
        rows.append(row | {"provenance_json": json.dumps(provenance.as_dict())})
    return folder, clip_dir, rows


def _config(folder, clip_dir, concurrent: int, precision: str = "fp32") -> AnnotateConfig:
    return AnnotateConfig.from_dict({
        "inputs": {"manifest": str(folder / "unused.csv")},
        "output": {"prefix": str(folder / f"out{concurrent}")},
        "model": {"variant": "micro", "checkpoint": str(folder / "ref.pt"), "image_size": SIZE,
                  "text_encoder": str(clip_dir), "precision": precision},
        "actors": {"torch_threads": concurrent, "concurrent_videos": concurrent},
        "privacy": {"hash_video_ids": False},
    })  # fmt: skip


def _masks(config: AnnotateConfig, results: list[dict]) -> dict[str, list[dict]]:
    layout = OutputLayout(config.output.prefix, storage=LOCAL)
    out = {}
    for result in results:
        assert result["error"] == "", result["error"]
        parts = [PartInfo(n, c) for n, c in zip(result["part_names"], result["part_rows"])]
        rows = read_mask_rows(layout, result["video_id"], parts)
        out[result["video_id"]] = [
            {k: r[k] for k in ("frame_idx", "obj_id", "rle_counts", "score", "state", "label")}
            for r in rows
        ]
    return out


def test_two_threads_on_one_annotator_match_one_call_at_a_time(setup):
    from surgray.annotate.actor import SegmentAnnotator

    folder, clip_dir, rows = setup
    serial_config = _config(folder, clip_dir, 1)
    serial = SegmentAnnotator(serial_config)
    expected = _masks(
        serial_config, [serial(pa.Table.from_pylist([r])).to_pylist()[0] for r in rows]
    )

    config = _config(folder, clip_dir, 2)
    annotator = SegmentAnnotator(config)  # the text encoder is loaded by the first call
    barrier, results, errors = threading.Barrier(2), [None, None], []

    def call(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[n] = annotator(pa.Table.from_pylist([rows[n]])).to_pylist()[0]
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and all(r is not None for r in results), errors
    got = _masks(config, results)
    assert got == expected
    assert {r["state"] for rows in got.values() for r in rows} == {"searching", "tracking"}


def test_a_fast_copy_of_the_model_tracks_text_prompts_with_concurrent_videos(setup):
    """Under `precision: fast` the tracker runs an int8 copy of the loaded model; the text
    encoder is loaded onto that copy, which is the one that encodes."""
    from surgray.annotate.actor import SegmentAnnotator

    folder, clip_dir, rows = setup
    annotator = SegmentAnnotator(_config(folder, clip_dir, 2, precision="fast"))
    result = annotator(pa.Table.from_pylist([rows[0]])).to_pylist()[0]
    assert result["error"] == "" and sum(result["part_rows"]) > 0, result["error"]
    assert annotator.context.tracker.model.text_encoder is not None
