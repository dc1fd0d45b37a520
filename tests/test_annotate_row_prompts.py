"""A pipeline row carries its video's prompts once: in `prompts_json`, not again inside the
provenance column (which held the whole provenance, prompts included, before). For a mask
prompt (RLE) that halves a row; the actor still gets the whole provenance back."""

from __future__ import annotations

import json

import numpy as np

from surgray.annotate.config import FramesConfig
from surgray.annotate.manifest import VideoTask
from surgray.annotate.plan_stage import PlanSettings, plan_one, video_row
from surgray.annotate.prompts import VideoPrompts
from surgray.annotate.provenance import video_provenance
from surgray.annotate.row_provenance import PROVENANCE_COLUMN, provenance_column, row_provenance
from surgray.io.masks import encode_rle
from surgray.io.storage import LOCAL


def _mask_prompted_task() -> VideoTask:
    rng = np.random.default_rng(0)
    mask = rng.random((1, 96, 128)) > 0.5  # a ragged mask: a long RLE, as real ones are
    rle = encode_rle(mask)[0]
    prompts = VideoPrompts.from_json(
        json.dumps({"objects": [{"obj_id": 7, "frame": 0, "mask_rle": rle}]})
    )
    return VideoTask(video_uri="/videos/case.mp4", video_id="case", prompts=prompts, row=3)


def _row_bytes(row: dict) -> int:
    return sum(len(str(v).encode()) for v in row.values())


def test_video_and_work_rows_carry_the_prompts_once_and_rebuild_the_provenance():
    task = _mask_prompted_task()
    provenance = video_provenance("c" * 64, "d" * 64, task.prompts)
    prompts = task.prompts.to_json()
    assert len(prompts) > 2000  # the prompts dominate a row

    row = video_row(task, provenance)
    settings = PlanSettings(max_segment_frames=None, stride=1, frames=FramesConfig(), storage=LOCAL)
    (work,) = plan_one(row, None, settings)  # planned without a probe (the video is fictive)
    for r in (row, work):
        assert r["prompts_json"] == prompts
        assert "prompts_json" not in json.loads(r[PROVENANCE_COLUMN])
        # Once in the whole row: the row is the prompts plus a few hundred bytes.
        assert sum(str(v).count(prompts) for v in r.values()) == 1
        assert _row_bytes(r) < len(prompts) + 1000
        assert row_provenance(r) == provenance  # what the actor records is unchanged

    # The row as it was (whole provenance, prompts twice) was twice the size.
    before = row | {PROVENANCE_COLUMN: json.dumps(provenance.as_dict())}
    assert _row_bytes(before) > 2 * len(prompts) > _row_bytes(row) + 1000
    assert row_provenance(before) == provenance  # older rows still read


def test_provenance_column_leaves_out_only_the_prompts():
    provenance = video_provenance("c" * 64, "d" * 64, VideoPrompts(("grasper",)))
    column = json.loads(provenance_column(provenance))
    assert set(column) == set(provenance.as_dict()) - {"prompts_json"}
    assert column["prompts_sha256"] == provenance.prompts_sha256
