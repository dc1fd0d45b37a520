"""The evaluation job's rerun check goes through the run index, as the annotate job's does: a
second evaluation over complete outputs reads no object of any video (only listings and the
index), and a video whose part was removed since is redone.

A real run on the session's local Ray over a tiny Ref-EndoVis-layout dataset; reads are
counted by an output layout that records each `read_bytes` URI (the store itself is real).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from surgray.annotate.outputs import OutputLayout, read_marker
from surgray.annotate.run_index import INDEX_FOLDER
from surgray.data.synthetic import SyntheticClipConfig
from surgray.data.synthetic_writers import make_synthetic_dataset
from surgray.model.checkpoints.sam2_checkpoint import build_model, save_checkpoint

SIZE = 64
PLAIN = dict(leave_and_return=False, occlusion=False, smoke=False, motion_blur=False)


class CountingLayout(OutputLayout):
    """An output layout that remembers which objects were read (GETs)."""

    reads: list[str] = []  # class-wide: plan_dataset builds its own layout

    def read_bytes(self, uri: str) -> bytes | None:
        CountingLayout.reads.append(uri.removeprefix(self.prefix + "/"))
        return super().read_bytes(uri)


@pytest.fixture()
def evaluation(tmp_path: Path, monkeypatch):
    import surgray.annotate.evaluate_job as evaluate_job

    cfg = SyntheticClipConfig(num_frames=6, height=SIZE, width=SIZE, **PLAIN)
    make_synthetic_dataset(
        tmp_path / "data", 3, layout="ref-endovis", valid_fraction=1.0, config=cfg, vary=False
    )
    checkpoint = tmp_path / "micro.pt"
    save_checkpoint(build_model("micro", image_size=SIZE), str(checkpoint))
    config = evaluate_job.EvaluateConfig.model_validate(
        {
            "datasets": [
                {
                    "name": "tiny",
                    "layout": "ref-endovis",
                    "root": str(tmp_path / "data"),
                    "split": "valid",
                }
            ],
            "output": {"prefix": str(tmp_path / "out")},
            "model": {"variant": "micro", "checkpoint": str(checkpoint), "image_size": SIZE},
            "protocol": {"prompt": "mask", "skip_first_and_last": False},
            "actors": {"count": 1, "num_cpus": 0.5, "torch_threads": 1},
        }
    )
    monkeypatch.setattr(evaluate_job, "OutputLayout", CountingLayout)
    CountingLayout.reads = []
    return evaluate_job, config


def _video_reads() -> list[str]:
    """Reads of anything but the run index itself."""
    return [r for r in CountingLayout.reads if not r.startswith(INDEX_FOLDER + "/")]


@pytest.mark.ray
def test_second_evaluation_reads_no_video_object_and_redoes_a_damaged_one(evaluation, ray_cluster):  # noqa: F811
    evaluate_job, config = evaluation
    spec = config.datasets[0]
    first = evaluate_job.run_evaluation(config)["tiny"][1]
    assert first.summary.done >= 1 and first.summary.failed == 0, first.report()

    CountingLayout.reads = []
    plan, _, _ = evaluate_job.plan_dataset(config, spec)
    videos = sorted(plan.provenances)
    assert plan.rows == [] and sorted(plan.skipped) == videos
    assert _video_reads() == []  # no marker, status or part of any video was read
    assert any(r.startswith(INDEX_FOLDER + "/") for r in CountingLayout.reads)

    damaged = videos[0]
    part = read_marker(plan.layout, damaged).parts[0].name
    assert plan.layout.remove(plan.layout.part_uri(damaged, part))
    again = evaluate_job.run_evaluation(config)["tiny"][1]
    assert (again.summary.done, again.summary.skipped) == (1, len(videos) - 1), again.report()
    marker = read_marker(plan.layout, damaged)
    assert marker is not None and part in {p.name for p in marker.parts}
