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
out one at a time and a long video does not hold others back.

Lost actors (a worker or a node gone) are not restarted by Ray: Ray Data 2.60 hands each
pool actor its transform and context as object-store references, and Ray logs an error for
every restartable actor built from such arguments (ray-project/ray#53727). Instead the driver
runs the work items that never came back again, in a fresh pool (`LOSS_ATTEMPTS` runs in
all): part files are named by segment, so a re-run segment replaces what the lost actor left. `map_batches` with a fixed
batch size serves both K = 1 and K > 1, with one Arrow schema for the results.
Ray is imported here only, inside functions.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.driver import JobOutcome, JobPlan, ResultCollector, prepare_job
from surgray.annotate.logsafe import logger
from surgray.annotate.progress import PREFIX

LOSS_ATTEMPTS = 3  # runs of a work item whose actor was lost, the first one included


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
    with warnings.catch_warnings():
        # max_restarts=0: losses are re-run by `execute` (see the module docstring). Ray 2.60
        # has no named parameter for it (its own docs say `map_batches(..., max_restarts=0)`)
        # and calls every extra keyword deprecated; the notice says nothing to a user.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
            SegmentAnnotator,
            batch_size=per_step,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
            fn_constructor_kwargs={"config": config, **(annotator_kwargs or {})},
            max_restarts=0,
            **remote_args,
        )


def execute(
    plan: JobPlan,
    *,
    annotator_kwargs: Mapping[str, Any] | None = None,
    exports: bool = True,
    progress_bars: bool = False,
) -> JobOutcome:
    """Run a prepared plan on the connected Ray cluster and return the job's outcome.

    Prints one line per finished video (`surgray.annotate.progress`); Ray Data's progress
    bars only with `progress_bars`."""
    from surgray.annotate.progress import VideoProgress
    from surgray.annotate.progress import progress_bars as ray_data_bars
    from surgray.annotate.video_exports import export_video

    # The per-result log line of the collector goes to DEBUG: the progress line says it better.
    collector = ResultCollector(
        plan, exporter=export_video if exports else None, log_level=logging.DEBUG
    )
    progress = VideoProgress.for_plan(plan)
    logger.info(
        "annotating %d videos in %d work items (%d complete from earlier runs, %d inputs rejected)",
        len(plan.tasks),
        len(plan.rows),
        len(plan.skipped),
        len(plan.rejected),
    )
    if not plan.rows:
        return collector.finish()
    progress.start(skipped=len(plan.skipped))
    pending, returned = list(plan.rows), set()
    with ray_data_bars(progress_bars):
        for attempt in range(1, LOSS_ATTEMPTS + 1):
            try:
                for row in build_dataset(pending, plan.config, annotator_kwargs).iter_rows():
                    returned.add(_work_key(row))
                    status = collector.add(row)
                    if status is not None:
                        progress.video_done(
                            status.video_id, status.state, status.frames, collector.frames_done
                        )
                break
            except _loss_errors() as exc:
                pending = [r for r in pending if _work_key(r) not in returned]
                if attempt == LOSS_ATTEMPTS:  # their videos are marked failed by finish()
                    progress.write(
                        f"{PREFIX} lost an actor again ({type(exc).__name__}); "
                        f"{len(pending)} work items are given up after {attempt} runs"
                    )
                    break
                progress.write(
                    f"{PREFIX} lost an actor ({type(exc).__name__}); "
                    f"running the {len(pending)} unfinished work items again "
                    f"(run {attempt + 1} of at most {LOSS_ATTEMPTS})"
                )
    return collector.finish()


def _work_key(row: Mapping[str, Any]) -> tuple[str, int]:
    """A work item (and its result row): (video id, segment index)."""
    return str(row["video_id"]), int(row["segment_index"])


def _loss_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for a lost actor, worker, node or object: run the work again. Errors of
    our own code never get here (the annotator turns them into failed-video results)."""
    import ray.exceptions as errors

    names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError")
    return tuple(getattr(errors, name) for name in names if hasattr(errors, name))


def run_annotate(
    config: AnnotateConfig,
    *,
    environ: Mapping[str, str] | None = None,
    progress_bars: bool = False,
) -> JobOutcome:
    """Plan and run the job on the Ray cluster this process is connected to.

    Raises `surgray.annotate.driver.JobSetupError` when the job cannot start.
    """
    return execute(prepare_job(config, environ=environ), progress_bars=progress_bars)
