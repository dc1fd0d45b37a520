"""The annotation job on Ray Data: work-item rows -> an actor pool that tracks them -> results
streamed back to the driver, which finalizes each video as its last segment arrives.

    ray.data.from_items(rows)                   one row per video or segment
      .map_batches(SegmentAnnotator,            each actor loads the model once
                   batch_size=K,                K = batching.videos_per_step, stepped together
                   compute=ActorPoolStrategy(size=actors.count),
                   num_cpus=actors.num_cpus,    fractional: read tasks are never starved
                   num_gpus=actors.num_gpus)
      .iter_rows()                              SegmentResult rows, in completion order

Every work item is its own block (K items per block when batching), so the pool hands them
out one at a time and a long video does not hold others back. `map_batches` with a fixed
batch size serves both K = 1 and K > 1, with one Arrow schema for the results.
Ray is imported here only, inside functions.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.driver import JobOutcome, JobPlan, ResultCollector, prepare_job
from surgray.annotate.logsafe import logger


def connect_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    temp_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Join the cluster at `address` or `RAY_ADDRESS` (as inside `ray job submit`; "auto"
    finds one started on this machine), or else start a local Ray. Returns True when this call started a local instance (the caller
    shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    environ = os.environ if environ is None else environ
    address = address or environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    # "local": a new instance, never a cluster that happens to run on this machine.
    options: dict[str, Any] = {
        "address": "local",
        "include_dashboard": False,
        "logging_level": logging.WARNING,
    }
    if num_cpus is not None:
        options["num_cpus"] = num_cpus
    if temp_dir is not None:
        options["_temp_dir"] = temp_dir
    ray.init(**options)
    return True


def build_dataset(
    rows: list[dict[str, Any]],
    config: AnnotateConfig,
    annotator_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """The lazy Ray Dataset of results for `rows` (not started until iterated);
    `annotator_kwargs` go to `SegmentAnnotator` besides the config."""
    import ray
    from ray.data import ActorPoolStrategy

    from surgray.annotate.actor import SegmentAnnotator

    per_step = config.batching.videos_per_step
    blocks = max(1, math.ceil(len(rows) / per_step))
    actors = max(1, min(config.actors.count, blocks))
    remote_args: dict[str, Any] = {"num_cpus": config.actors.num_cpus}
    if config.actors.num_gpus > 0:
        remote_args["num_gpus"] = config.actors.num_gpus
    return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        SegmentAnnotator,
        batch_size=per_step,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs={"config": config, **(annotator_kwargs or {})},
        **remote_args,
    )


def execute(
    plan: JobPlan,
    *,
    annotator_kwargs: Mapping[str, Any] | None = None,
    exports: bool = True,
) -> JobOutcome:
    """Run a prepared plan on the connected Ray cluster and return the job's outcome."""
    from surgray.annotate.video_exports import export_video

    collector = ResultCollector(plan, exporter=export_video if exports else None)
    logger.info(
        "annotating %d videos in %d work items (%d complete from earlier runs, %d inputs rejected)",
        len(plan.tasks),
        len(plan.rows),
        len(plan.skipped),
        len(plan.rejected),
    )
    if plan.rows:
        dataset = build_dataset(plan.rows, plan.config, annotator_kwargs)
        for row in dataset.iter_rows():
            collector.add(row)
    return collector.finish()


def run_annotate(config: AnnotateConfig, *, environ: Mapping[str, str] | None = None) -> JobOutcome:
    """Plan and run the job on the Ray cluster this process is connected to.

    Raises `surgray.annotate.driver.JobSetupError` when the job cannot start.
    """
    return execute(prepare_job(config, environ=environ))
