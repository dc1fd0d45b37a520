"""The evaluation job on a tiny synthetic dataset in the Ref-EndoVis18 layout: ground-truth
prompts, the annotation pipeline on Ray, a J&F table whose numbers match a by-hand IoU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml
from PIL import Image

from surgray.annotate.outputs import read_video_records
from surgray.data.synthetic import SyntheticClipConfig
from surgray.data.synthetic_writers import make_synthetic_dataset
from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

SIZE = 64
PLAIN = dict(leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("refendovis18")
    cfg = SyntheticClipConfig(num_frames=10, height=SIZE, width=SIZE, **PLAIN)
    make_synthetic_dataset(
        root / "data", 3, layout="ref-endovis", valid_fraction=1.0, config=cfg, vary=False
    )
    checkpoint = root / "micro.pt"
    save_checkpoint(build_model("micro", image_size=SIZE), str(checkpoint))
    return root, checkpoint


def _config(root: Path, checkpoint: Path, protocol: dict, name: str) -> dict:
    return {
        "datasets": [
            {"name": name, "layout": "ref-endovis", "root": str(root / "data"), "split": "valid"}
        ],
        "output": {"prefix": str(root / "out")},
        "model": {"variant": "micro", "checkpoint": str(checkpoint), "image_size": SIZE},
        "protocol": protocol,
        "actors": {"count": 2, "num_cpus": 0.5, "torch_threads": 1},
    }


def _gt(root: Path, video: str, frame: int) -> np.ndarray:
    path = root / "data" / "valid" / "Annotations" / video / f"{frame:05d}.png"
    return np.asarray(Image.open(path))


@pytest.mark.ray
def test_evaluate_job_prints_a_jf_table_matching_a_by_hand_iou(dataset, ray_cluster, capsys):  # noqa: F811
    from surgray.annotate.evaluate_job import EvaluateConfig, main, plan_dataset

    root, checkpoint = dataset
    protocol = {"prompt": "mask", "skip_first_and_last": False, "id_groups": "endovis18"}
    config_path = root / "evaluate.yaml"
    config_path.write_text(yaml.safe_dump(_config(root, checkpoint, protocol, "ref-endovis18")))
    assert main(["--config", str(config_path)]) == 0
    printed = capsys.readouterr().out
    assert "== ref-endovis18: J&F" in printed
    assert "Global (instrument)" in printed and "Global (tissue)" in printed
    results = json.loads((root / "out" / "ref-endovis18" / "eval_results.json").read_text())

    # J of each object by hand: IoU per frame from its first appearance, mean over frames.
    config = EvaluateConfig.from_yaml(str(config_path))
    plan, samples, items = plan_dataset(config, config.datasets[0])
    assert plan.rows == [] and len(plan.skipped) == 2  # the job's run left both complete
    for video in results["videos"]:
        records = read_video_records(plan.layout, video["video"])
        frames = max(r.frame_idx for r in records) + 1
        assert frames == 10 and len(video["objects"]) >= 2
        for obj in video["objects"]:
            pred = {r.frame_idx: r.mask() for r in records if r.obj_id == obj["object_id"]}
            ious, started = [], False
            for t in range(frames):
                gt = _gt(root, video["video"], t) == obj["object_id"]
                started = started or gt.any() or pred[t].any()
                if started:
                    union = (gt | pred[t]).sum()
                    ious.append((gt & pred[t]).sum() / union if union else 1.0)
            assert obj["j"] == pytest.approx(np.mean(ious), abs=1e-9)
            assert obj["frames"] == len(ious)
        # The ground-truth mask prompt is followed on its own frame.
        first = [r for r in records if r.frame_idx == 0 and r.area > 0]
        assert first, "the prompted objects have masks on their first frame"


def test_click_protocol_per_object_passes_without_ray(dataset):
    """Per-object passes with 3 simulated clicks, run through SegmentAnnotator directly."""
    from surgray.annotate.actor import SegmentAnnotator
    from surgray.annotate.driver import ResultCollector
    from surgray.annotate.evaluate_job import EvaluateConfig, plan_dataset, score_dataset

    root, checkpoint = dataset
    protocol = {"prompt": "clicks", "num_clicks": 3, "passes": "per_object", "non_overlap": True}
    config = EvaluateConfig.model_validate(_config(root, checkpoint, protocol, "clicks"))
    spec = config.datasets[0]
    plan, samples, items = plan_dataset(config, spec)
    video = samples[0].video_id
    ids = sorted(o for i in items if i.sample_id == video for o in i.obj_ids)
    assert [r["video_id"] for r in plan.rows if r["video_id"].startswith(video)] == [
        f"{video}.obj{o:03d}" for o in ids
    ]
    clicks = json.loads(plan.rows[0]["eval_clicks_json"])
    assert [(c["num_clicks"], c["frame"]) for c in clicks] == [(3, 0)]
    annotator = SegmentAnnotator(plan.config, postprocess={"non_overlap_masks": True})
    collector = ResultCollector(plan)
    for row in annotator(pa.Table.from_pylist(plan.rows)).to_pylist():
        assert row["error"] == "" and len(row["object_ids"]) == 1
        collector.add(row)
    outcome = collector.finish()
    assert outcome.summary.done == len(plan.rows)
    report = score_dataset(config, plan, samples, items)
    assert {o.object_id for o in report.objects if o.video == video} <= set(ids)
    assert "Global score" in report.to_table()
