"""Text prompts in the annotation job (no Ray): a referring checkpoint (tiny ReSurgSAM2 with a
tiny random CLIP) annotates a synthetic MP4 from expressions alone, with the object state on
every row; and a video split into two segments agrees with the same video annotated whole."""

from __future__ import annotations

import json

import numpy as np
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
from surgray.io.masks import decode_rle
from surgray.io.storage import LOCAL
from surgray.io.video import probe
from surgray.model.checkpoints.referring_checkpoint import save_referring_checkpoint
from surgray.tracking.cifs import CIFSConfig

SIZE = 64  # network input
FRAMES, PIXELS = 20, 96
TEXTS = ("the grasper", "the needle driver")
PLAIN = dict(leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> str:
    clip = generate_clip(
        SyntheticClipConfig(num_frames=FRAMES, height=PIXELS, width=PIXELS, **PLAIN), seed=5
    )
    path = tmp_path_factory.mktemp("videos") / "case.mp4"
    write_clip_video(clip, str(path))
    return str(path)


def _checkpoint(path, clip_dir, object_score: float, iou: float, cifs: CIFSConfig) -> str:
    torch.manual_seed(0)  # buffers (the prompt encoder's Fourier matrix) use the global RNG
    model = tiny_model(clip_dir, size=SIZE, cifs=cifs)
    script_scores(model, object_score, iou)
    save_referring_checkpoint(model, path)
    return str(path)


def _config(tmp_path, checkpoint: str, clip_dir, name: str) -> AnnotateConfig:
    return AnnotateConfig.from_dict({
        "inputs": {"manifest": str(tmp_path / "unused.csv")},
        "output": {"prefix": str(tmp_path / name), "rows_per_part": 7},
        "model": {
            "variant": "micro", "checkpoint": checkpoint, "image_size": SIZE,
            "text_encoder": None if clip_dir is None else str(clip_dir),
        },
        "actors": {"torch_threads": 1},
        "privacy": {"hash_video_ids": False},
    })  # fmt: skip


def _annotate(config: AnnotateConfig, rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Run the rows through one SegmentAnnotator; (result rows, mask rows in segment order)."""
    from surgray.annotate.actor import SegmentAnnotator

    prompts = VideoPrompts(texts=TEXTS)
    provenance = video_provenance("c" * 64, "d" * 64, prompts, version="0.1.0")
    rows = [r | {"provenance_json": json.dumps(provenance.as_dict())} for r in rows]
    results = SegmentAnnotator(config)(pa.Table.from_pylist(rows)).to_pylist()
    layout = OutputLayout(config.output.prefix, storage=LOCAL)
    masks = []
    for result in sorted(results, key=lambda r: r["segment_index"]):
        parts = [PartInfo(n, c) for n, c in zip(result["part_names"], result["part_rows"])]
        masks.extend(read_mask_rows(layout, result["video_id"], parts))
    return results, masks


def _work_rows(video: str, max_segment_frames: int | None) -> list[dict]:
    task = VideoTask(video, "case", VideoPrompts(texts=TEXTS))
    return plan_work_items(
        [task], max_segment_frames=max_segment_frames, infos={"case": probe(video)}
    )


def _mask(row: dict) -> np.ndarray:
    return decode_rle([{"size": row["rle_size"], "counts": row["rle_counts"]}])[0]


def test_text_prompts_give_every_frame_and_expression_with_states(tmp_path, clip_dir, video):
    # Scripted heads: sigmoid(4) = 0.98 > 0.9 and IoU 0.95 > 0.7, so with the default CIFS
    # settings (saved in the checkpoint) every frame is credible and the window of 5 fills
    # on frame 4, whose result already reports the switch: searching on frames 0-3, then
    # tracking (as in tests/test_referring.py's end-to-end run).
    checkpoint = _checkpoint(tmp_path / "ref.pt", clip_dir, 4.0, 0.95, CIFSConfig())
    config = _config(tmp_path, checkpoint, clip_dir, "out")
    results, rows = _annotate(config, _work_rows(video, None))
    assert len(results) == 1 and results[0]["error"] == ""
    assert results[0]["frames"] == FRAMES and results[0]["object_ids"] == [1, 2]
    assert [(r["frame_idx"], r["obj_id"]) for r in rows] == [
        (f, o) for f in range(FRAMES) for o in (1, 2)
    ]
    assert [r["label"] for r in rows[:2]] == list(TEXTS)
    for obj_id in (1, 2):
        states = [r["state"] for r in rows if r["obj_id"] == obj_id]
        assert states == ["searching"] * 4 + ["tracking"] * (FRAMES - 4)
    assert all(r["rle_size"] == [PIXELS, PIXELS] for r in rows)


def test_text_prompt_errors_are_clear(tmp_path, clip_dir, video):
    checkpoint = _checkpoint(tmp_path / "ref.pt", clip_dir, 4.0, 0.95, CIFSConfig())
    # Neither the checkpoint nor the config names a CLIP folder.
    results, _ = _annotate(_config(tmp_path, checkpoint, None, "a"), _work_rows(video, None))
    assert "set model.text_encoder in the config" in results[0]["error"]
    # A plain SAM2 checkpoint cannot take text prompts.
    from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

    plain = str(tmp_path / "plain.pt")
    save_checkpoint(build_model("micro", image_size=SIZE), plain)
    results, _ = _annotate(_config(tmp_path, plain, clip_dir, "b"), _work_rows(video, None))
    assert (
        results[0]["error"]
        == "text prompts need a referring (ReSurgSAM2) checkpoint; model.checkpoint is a plain SAM2 one"
    )


def test_split_video_agrees_with_the_whole_video(tmp_path, clip_dir, video):
    """Issue 7: the same video annotated whole and in 2 segments of 10 frames.

    Why they can agree: each segment starts a fresh tracker state, so the runs can only
    differ through state carried across the cut. The scripted IoU head says 0.5 on every
    frame, under the 0.7 threshold, so CIFS never finds a credible frame and every frame of
    both runs is decided by stage 1: the text, the frame and up to two earlier frames'
    features, no memory bank. The one thing that still crosses the cut is that history: on
    frames 10 and 11 the whole run fuses frames 8-9 / 9-10, while segment 2 has only its
    own frames (the current one repeated). So every frame outside those two must be
    identical, and those two differ slightly. With these weights (global seed 0) they
    measured IoU 0.955-0.983 on masks of 42-58 pixels when this file ran alone, and 0.930 when
    the other annotate tests ran first in the same process (the float rounding of the CPU
    kernels depends on the process's state, and one pixel is 0.02 of IoU here); a model built
    after another global RNG state (other Fourier buffer) measured 0.87-0.94 there. Hence 0.85
    on those two frames: slightly different, not the same. Frames 0-9 and 12-19 are equal.
    """
    checkpoint = _checkpoint(tmp_path / "ref.pt", clip_dir, 4.0, 0.5, CIFSConfig())
    config = _config(tmp_path, checkpoint, clip_dir, "whole")
    whole_rows = _work_rows(video, None)
    split_rows = _work_rows(video, FRAMES // 2)
    assert [(r["start_frame"], r["end_frame"]) for r in split_rows] == [(0, 10), (10, 20)]
    _, whole = _annotate(config, whole_rows)
    config = _config(tmp_path, checkpoint, clip_dir, "split")
    results, split = _annotate(config, split_rows)
    assert [r["error"] for r in results] == ["", ""]
    assert [(r["frame_idx"], r["obj_id"]) for r in split] == [
        (r["frame_idx"], r["obj_id"]) for r in whole
    ]
    assert {r["state"] for r in whole + split} == {"searching"}
    history_frames = {10, 11}  # stage 1 of segment 2 lacks the frames before the cut
    non_empty = 0
    for a, b in zip(whole, split):
        ma, mb = _mask(a), _mask(b)
        union = (ma | mb).sum()
        non_empty += int(ma.any() and mb.any())
        iou = 1.0 if union == 0 else (ma & mb).sum() / union
        where = (a["frame_idx"], a["obj_id"], iou)
        if a["frame_idx"] in history_frames:
            assert iou >= 0.85, where
        else:
            assert np.array_equal(ma, mb), where
    # The check means something only if the masks are not empty.
    assert non_empty >= 0.8 * len(whole)
