"""The evaluation job: the annotation pipeline over datasets with ground truth, scored with
J, F, J&F, Dice and Challenge IoU (`surgray.eval`), one table per dataset.

    python jobs/evaluate.py --config configs/evaluate_endovis18_surgsam2.yaml
    surgray benchmark --config ...        (a local Ray; `surgray evaluate` is its old name)

Per dataset, under `<output.prefix>/<dataset name>/`: the annotation layout (masks/, status/,
_done/, so an interrupted run resumes), and eval_results.csv / eval_results.json. The table is
printed. A rerun skips complete videos by the run index (`surgray.annotate.rerun`), as the
annotate job does. Prompts come from the ground truth (`surgray.annotate.eval_prompts`); a video that
fails is scored with empty predictions (and reported), so failures cannot raise the score.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from surgray.annotate.config import (
    ActorsConfig,
    AnnotateConfig,
    BatchingConfig,
    ConfigError,
    ModelSection,
    StorageConfig,
)
from surgray.annotate.driver import JobPlan, JobSetupError, checkpoint_digest
from surgray.annotate.eval_prompts import EvalItem, eval_items
from surgray.annotate.logsafe import logger
from surgray.annotate.outputs import OutputLayout
from surgray.annotate.provenance import canonical_json, sha256_text, video_provenance
from surgray.annotate.rerun import prepare_rerun
from surgray.annotate.revisions import read_latest_records
from surgray.annotate.row_provenance import PROVENANCE_COLUMN, provenance_column
from surgray.annotate.session import CLICKS_COLUMN, FRAME_COUNT_COLUMN
from surgray.annotate.status import EXIT_ALL_FAILED, EXIT_INVALID_CONFIG, EXIT_OK
from surgray.errors import one_line
from surgray.io.storage import Storage


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    layout: Literal["davis", "ref-endovis", "endovis18"]
    root: str = Field(min_length=1)
    split: str | None = None  # davis / ref-endovis: e.g. "valid"
    videos: tuple[str, ...] | None = None  # a subset, by the dataset's video ids
    # davis layout: folder names under root/split (e.g. "VOS/Annotations_vos_instrument")
    images_dir: str = "JPEGImages"
    annotations_dir: str = "Annotations"


class ProtocolConfig(_Section):
    prompt: Literal["mask", "box", "clicks"] = "mask"
    num_clicks: int = Field(1, ge=1, le=20)
    passes: Literal["joint", "per_object"] = "joint"
    non_overlap: bool = False  # each pixel to one object (the highest-scoring)
    skip_first_and_last: bool = True  # SurgSAM2 / SA-V: True; ReSurgSAM2: False
    count_frames: Literal["first_appearance", "all"] = "first_appearance"
    id_groups: Literal["none", "endovis18"] = "none"  # EndoVis18 instrument / tissue groups


class EvalOutput(_Section):
    prefix: str = Field(min_length=1)


class EvaluateConfig(_Section):
    datasets: tuple[DatasetSpec, ...] = Field(min_length=1)
    output: EvalOutput
    model: ModelSection
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    actors: ActorsConfig = Field(default_factory=ActorsConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)

    @classmethod
    def from_yaml(cls, path: str) -> EvaluateConfig:
        from surgray.config import load_yaml_mapping, validate_config

        data = load_yaml_mapping(path, ConfigError)  # missing, folder, not UTF-8, not YAML
        return validate_config(cls, data, source=path, kind="benchmark", error=ConfigError)

    def annotate_config(self, dataset: DatasetSpec) -> AnnotateConfig:
        """The annotation settings the actors run with (inputs are unused there)."""
        return AnnotateConfig(
            inputs={"manifest": dataset.root},
            output={"prefix": f"{self.output.prefix.rstrip('/')}/{dataset.name}"},
            storage=self.storage,
            model=self.model,
            actors=self.actors,
            batching=self.batching,
            privacy={"hash_video_ids": False},
        )


def open_dataset(spec: DatasetSpec, *, storage: Storage) -> Any:
    from surgray.data.davis import DavisDataset
    from surgray.data.endovis_raw import EndoVis18Raw
    from surgray.data.ref_endovis import RefEndoVisDataset

    if spec.layout == "davis":
        return DavisDataset(
            spec.root,
            spec.split,
            images_dir=spec.images_dir,
            annotations_dir=spec.annotations_dir,
            dataset_name=spec.name,
            storage=storage,
        )
    if spec.layout == "ref-endovis":
        return RefEndoVisDataset(
            spec.root, spec.split or "valid", dataset_name=spec.name, storage=storage
        )
    return EndoVis18Raw(spec.root, storage=storage)


def plan_dataset(
    config: EvaluateConfig, spec: DatasetSpec
) -> tuple[JobPlan, list[Any], list[EvalItem]]:
    """(the pipeline plan, the dataset's samples, their eval items) of one dataset."""
    annotate = config.annotate_config(spec)
    storage = annotate.storage.build()
    samples = list(open_dataset(spec, storage=storage))
    if spec.videos is not None:
        unknown = sorted(set(spec.videos) - {s.video_id for s in samples})
        if unknown:
            raise JobSetupError(f"datasets.{spec.name}.videos: not in the dataset: {unknown}")
        samples = [s for s in samples if s.video_id in spec.videos]
    protocol = config.protocol
    items = [
        item
        for s in samples
        for item in eval_items(s, protocol.prompt, protocol.num_clicks, protocol.passes)
    ]
    layout = OutputLayout(annotate.output.prefix, storage=storage)
    digest = checkpoint_digest(annotate)
    base = sha256_text(
        canonical_json({"annotate": annotate.output_affecting(), "protocol": protocol.model_dump()})
    )
    provenances, rows = {}, []
    for item in items:
        clicks = json.dumps([c.__dict__ for c in item.clicks], sort_keys=True)
        # The clicks' ground truth is not in the prompts, so it enters the config hash.
        item_hash = sha256_text(base + clicks)
        provenances[item.task.video_id] = video_provenance(item_hash, digest, item.task.prompts)
    # As the annotate job: videos a run index vouches for are skipped from listings alone
    # (no GET of their own); the rest get the per-video content check, and are indexed.
    rerun = prepare_rerun(layout, provenances)
    for item in items:
        if item.task.video_id not in rerun.pending:
            continue
        rows.append(
            {
                "video_id": item.task.video_id,
                "video_uri": item.task.video_uri,
                "prompts_json": item.task.prompts.to_json(),
                "segment_index": 0,
                "num_segments": 1,
                "start_frame": 0,
                "end_frame": -1,
                PROVENANCE_COLUMN: provenance_column(provenances[item.task.video_id]),
                CLICKS_COLUMN: json.dumps([c.__dict__ for c in item.clicks]),
                FRAME_COUNT_COLUMN: item.frame_count,
            }
        )
    plan = JobPlan(
        config=annotate,
        layout=layout,
        tasks={i.task.video_id: i.task for i in items if i.task.video_id in rerun.pending},
        provenances=provenances,
        infos={},
        rows=rows,
        skipped=rerun.skipped,
    )
    return plan, samples, items


def _predictions(layout: OutputLayout, items: list[EvalItem], non_overlap: bool):
    """frame index -> {obj_id: mask} of one dataset video, merged over its passes."""
    per_frame: dict[int, dict[int, tuple[float, np.ndarray]]] = {}
    for item in items:
        try:
            records = read_latest_records(layout, item.task.video_id)  # reviewed, if any
        except FileNotFoundError:
            logger.warning("%s has no results; scored as empty", item.task.video_id)
            continue
        for record in records:
            if record.obj_id in item.obj_ids:
                per_frame.setdefault(record.frame_idx, {})[record.obj_id] = (
                    record.score,
                    record.mask(),
                )
    out: dict[int, dict[int, np.ndarray]] = {}
    for frame, objects in per_frame.items():
        masks = {k: m for k, (_, m) in objects.items()}
        if non_overlap and len(objects) > 1:
            ids = list(objects)
            scores = np.array([objects[k][0] for k in ids])[:, None, None]
            stack = np.stack([objects[k][1] for k in ids])
            best = np.argmax(np.where(stack, scores, -np.inf), axis=0)
            masks = {k: stack[n] & (best == n) for n, k in enumerate(ids)}
        out[frame] = masks
    return out


def score_dataset(
    config: EvaluateConfig, plan: JobPlan, samples: list[Any], items: list[EvalItem]
) -> Any:
    """The `EvaluationReport` of one dataset, from the masks the pipeline wrote."""
    from surgray.eval.evaluate import ENDOVIS18_ID_GROUPS, EvalOptions, VideoInput, evaluate

    protocol = config.protocol
    options = EvalOptions(
        skip_first_and_last=protocol.skip_first_and_last,
        count_frames=protocol.count_frames,
        id_groups=ENDOVIS18_ID_GROUPS if protocol.id_groups == "endovis18" else (),
    )
    inputs = []
    for sample in samples:
        mine = [i for i in items if i.sample_id == sample.video_id]
        # Joint passes with non_overlap were already made disjoint by the tracker.
        merge = protocol.non_overlap and protocol.passes == "per_object"
        predicted = _predictions(plan.layout, mine, merge)
        index = {name: n for n, name in enumerate(sample.frame_names)}

        def load(name: str, sample=sample, predicted=predicted, index=index):
            frame = index[name]
            return sample.load_mask(frame), predicted.get(frame, {})

        frames = tuple(sample.frame_names[i] for i in sample.annotated_frames)
        inputs.append(VideoInput(sample.video_id, frames, load))
    return evaluate(inputs, options)


def run_evaluation(config: EvaluateConfig) -> dict[str, Any]:
    """Plan, run and score every dataset on the connected Ray cluster; name -> report."""
    from surgray.annotate.pipeline import execute

    reports = {}
    for spec in config.datasets:
        plan, samples, items = plan_dataset(config, spec)
        postprocess = {"non_overlap_masks": config.protocol.non_overlap}
        outcome = execute(plan, annotator_kwargs={"postprocess": postprocess}, exports=False)
        if outcome.summary.failed:
            logger.warning("%s: %s", spec.name, outcome.report())
        report = score_dataset(config, plan, samples, items)
        plan.layout.put_bytes(f"{plan.layout.prefix}/eval_results.csv", report.to_csv().encode())
        plan.layout.put_bytes(f"{plan.layout.prefix}/eval_results.json", report.to_json().encode())
        reports[spec.name] = (report, outcome)
    return reports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="evaluate config YAML (see configs/)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    parser.add_argument("--ray-temp-dir", default=None, help="session folder of a local Ray")


def run(args: argparse.Namespace) -> int:
    from surgray.annotate.pipeline import connect_ray

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    logging.getLogger("surgray").setLevel(logging.INFO)
    from surgray.annotate.preflight import check_evaluate_job

    # A bad config, missing data or a wrong checkpoint raise a UserError before Ray starts:
    # `surgray.cli.main` prints it as one line, exit 2.
    config = EvaluateConfig.from_yaml(args.config)
    check_evaluate_job(config)
    started = connect_ray(args.ray_address, num_cpus=args.num_cpus, temp_dir=args.ray_temp_dir)
    try:
        reports = run_evaluation(config)
    except (JobSetupError, ValueError, OSError) as exc:
        print(f"surgray benchmark: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr)
        return EXIT_INVALID_CONFIG
    finally:
        if started:
            import ray

            ray.shutdown()
    all_failed = True
    for name, (report, outcome) in reports.items():
        print(f"\n== {name}: J&F {100 * report.overall.jf:.2f} ==")
        print(report.to_table())
        print(outcome.report())
        all_failed &= outcome.summary.done + outcome.summary.skipped == 0
    return EXIT_ALL_FAILED if all_failed else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`jobs/*.py` and `python -m`: the same as `surgray benchmark ...` (one-line errors, exit 2)."""
    from surgray.cli import main as surgray_main

    return surgray_main(["benchmark", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
