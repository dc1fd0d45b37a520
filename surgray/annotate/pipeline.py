"""The annotation job on Ray Data: video rows -> planning tasks -> an actor pool that tracks
the planned work items -> results streamed back to the driver, which finalizes each video as
its last segment arrives.

    ray.data.from_items(video_rows)             one row per pending video, PLAN_VIDEOS per block
                                                (more when that would exceed PLAN_BLOCKS_MAX)
      .map_batches(plan_batch,                  probe, check prompts, cut into segments
                   compute=TaskPoolStrategy(PLAN_TASKS), num_cpus=0)
      .repartition(target_num_rows_per_block=K) streaming: K work items per block (no CPU)
      .map_batches(PlanningAnnotator,           each actor loads the model once
                   batch_size=K,                K = batching.videos_per_step, stepped together
                   compute=ActorPoolStrategy(size=actors.count,
                                             max_tasks_in_flight_per_actor=N, ...),
                   num_cpus=actors.num_cpus,    fractional: read tasks are never starved
                   num_gpus=actors.num_gpus)    N = actors.concurrent_videos calls at once,
                                                each in its own thread on the actor's model
      .iter_rows()                              SegmentResult rows, in completion order

Planning is per video and runs in the pipeline (`surgray.annotate.plan_stage`), so the actors
start tracking the first planned videos while later ones are still being probed: the time to
the first tracked frame does not grow with the archive. Planning tasks ask for no CPU: they
wait on the store (a probe reads a video's header), and a task that needs a CPU would starve
behind actors that hold every CPU of a small cluster. Their number is capped instead.
Work rows that are already planned (the evaluation job) skip the planning step.

Bounded memory (issue 23, item 2): decoded frames never enter the object store. Each actor
decodes its own videos' frames (`surgray.annotate.session`), one frame per video in its batch
at a time, and runs at most N tasks at a time (`max_tasks_in_flight_per_actor=N`, N =
`actors.concurrent_videos`, 1 by default), so the frames in flight are at most actors x N x K,
whatever the archive's size. Each of an actor's N calls also holds its videos' tracker states
(the memory bank: a few MB per object at 512 on CPU), so N multiplies that too; the model's
weights are shared by the N calls. What waits in the object store
ahead of the pool are planned work rows (a few hundred bytes each), held back by Ray Data's
backpressure: the planning operator stops launching tasks when its object-store budget is
used (ResourceBudgetBackpressurePolicy, `DataContext.execution_options.resource_limits`) or
when its queued output exceeds `DataContext.downstream_capacity_backpressure_ratio` (2.0 by
default) times what the pool has in flight (DownstreamCapacityBackpressurePolicy); at most
PLAN_TASKS planning tasks run at once.

Every work item is its own block (K items per block when batching), so the pool hands them
out one at a time and a long video does not hold others back.

Lost actors (a worker or a node gone) are not restarted by Ray: Ray Data 2.60 hands each
pool actor its transform and context as object-store references, and Ray logs an error for
every restartable actor built from such arguments (ray-project/ray#53727). Instead the driver
runs the videos that were not finished again, whole, in a fresh pool (`LOSS_ATTEMPTS` runs in
all): part files are named by segment, so a re-run segment replaces what the lost actor left,
and the collector drops the results it held of those videos. Before the fresh pool starts,
the driver waits (bounded by the GCS's health-check window) until the node it lost actors on
is marked dead, keeps it out of placement if it is not by then, and sizes the pool to the
CPUs left (`surgray.annotate.node_loss`). `map_batches` with a fixed
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

LOSS_ATTEMPTS = 3  # runs of a video whose actor was lost, the first one included
PLAN_VIDEOS = 8  # videos per planning task: small, so the first work item comes soon
# ... but at most this many blocks: `from_items` puts each block in the object store from the
# driver, 12,500 of them for 100,000 videos cost about 20 s before anything runs (1,000: 3 s)
PLAN_BLOCKS_MAX = 2000
PLAN_TASKS = 4  # planning tasks at once (they wait on the store; see the docstring)


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
    if "RAY_worker_niceness" not in environ:
        # Ray starts workers at nice +15 by default, so on a machine with any other load the
        # model actor gets a fraction of the CPU its own driver would: the job ran at half the
        # reference loop's speed on a shared machine for this alone (benchmarks/README.md,
        # archive throughput). Workers of the instance we start run at the driver's priority.
        options["_system_config"] = {"worker_niceness": 0}
    ray.init(**options)
    return True


def build_dataset(
    rows: list[dict[str, Any]],
    config: AnnotateConfig,
    annotator_kwargs: Mapping[str, Any] | None = None,
    *,
    streamed: bool = False,
) -> Any:
    """The lazy Ray Dataset of results for `rows` (not started until iterated): video rows
    planned in the pipeline when `streamed`, else work rows as they are. `annotator_kwargs` go
    to the annotator besides the config."""
    import ray
    from ray.data import TaskPoolStrategy

    from surgray.annotate.actor import SegmentAnnotator
    from surgray.annotate.plan_stage import PlanSettings, plan_batch
    from surgray.annotate.planning_annotator import PlanningAnnotator

    per_step = config.batching.videos_per_step
    actors = max(1, min(config.actors.count, math.ceil(len(rows) / per_step)))
    remote_args: dict[str, Any] = {"num_cpus": config.actors.num_cpus}
    if config.actors.num_gpus > 0:
        remote_args["num_gpus"] = config.actors.num_gpus
    if streamed:
        settings = PlanSettings.from_config(config)
        blocks = max(1, min(math.ceil(len(rows) / PLAN_VIDEOS), PLAN_BLOCKS_MAX))
        dataset = (
            ray.data.from_items(rows, override_num_blocks=blocks)
            .map_batches(
                plan_batch,
                batch_size=None,
                batch_format="pyarrow",
                fn_kwargs={"settings": settings},
                compute=TaskPoolStrategy(size=min(PLAN_TASKS, blocks)),
                num_cpus=0,
            )
            .repartition(target_num_rows_per_block=per_step)
        )
        _repartition_without_cpu(dataset)
        annotator: type = PlanningAnnotator
    else:
        blocks = max(1, math.ceil(len(rows) / per_step))
        dataset = ray.data.from_items(rows, override_num_blocks=blocks)
        annotator = SegmentAnnotator
    with warnings.catch_warnings():
        # max_restarts=0: losses are re-run by `execute` (see the module docstring). Ray 2.60
        # has no named parameter for it (its own docs say `map_batches(..., max_restarts=0)`)
        # and calls every extra keyword deprecated; the notice says nothing to a user.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return dataset.map_batches(
            annotator,
            batch_size=per_step,
            batch_format="pyarrow",
            compute=actor_pool(actors, config.actors.concurrent_videos),
            fn_constructor_kwargs={"config": config, **(annotator_kwargs or {})},
            max_restarts=0,
            **remote_args,
        )


def _repartition_without_cpu(dataset: Any) -> None:
    """Let the streaming repartition's tasks ask for no CPU, as the planning tasks do.

    Ray 2.60's `repartition` takes no remote arguments, so its tasks ask for one CPU each; when
    the pool's actors hold every CPU (2 actors of 1 CPU on a 2-CPU node) the repartition can
    never run, the actors never get work and the job hangs. The split only moves rows between
    blocks, so it needs no CPU of its own. Ray is pinned (pyproject), and the check below fails
    loudly if its plan ever looks different."""
    from ray.data._internal.logical.operators import StreamingRepartition

    operator = dataset._logical_plan.dag
    if not isinstance(operator, StreamingRepartition):
        raise RuntimeError(
            f"expected Ray Data's StreamingRepartition at the end of the plan, got {operator!r}"
        )
    object.__setattr__(operator, "ray_remote_args", {**operator.ray_remote_args, "num_cpus": 0})


def actor_pool(size: int, concurrent: int) -> Any:
    """The pool's strategy: one call at a time per actor, or `concurrent` calls each in a
    thread of its own (Ray's threaded actor; `surgray.annotate.actor` makes them safe)."""
    from ray.data import ActorPoolStrategy

    if concurrent == 1:
        return ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=1)
    return ActorPoolStrategy(
        size=size,
        max_tasks_in_flight_per_actor=concurrent,
        max_concurrent_calls_per_actor=concurrent,
        enable_true_multi_threading=True,
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
    from surgray.annotate.node_loss import cpus_left, fit_pool, placement_excluding
    from surgray.annotate.progress import VideoProgress
    from surgray.annotate.progress import progress_bars as ray_data_bars
    from surgray.annotate.run_index import IndexWriter
    from surgray.annotate.video_exports import export_video

    # The per-result log line of the collector goes to DEBUG: the progress line says it better.
    progress = VideoProgress.for_plan(plan)
    collector = ResultCollector(
        plan,
        exporter=export_video if exports else None,
        log_level=logging.DEBUG,
        on_outcome=lambda outcome: progress.drop(outcome.video_id, outcome.kind),
        index=IndexWriter(plan.layout),
    )
    logger.info(
        "annotating %d videos (%d complete from earlier runs, %d inputs rejected)",
        len(plan.tasks),
        len(plan.skipped),
        len(plan.rejected),
    )
    if not plan.rows:
        return collector.finish()
    progress.start(skipped=len(plan.skipped))
    pending = list(plan.rows)
    excluded: set[str] = set()  # lost nodes the GCS still listed alive (see node_loss)
    config = plan.config  # a re-run's pool is sized to the nodes left
    with ray_data_bars(progress_bars):
        for attempt in range(1, LOSS_ATTEMPTS + 1):
            try:
                with placement_excluding(excluded):
                    dataset = build_dataset(
                        pending, config, annotator_kwargs, streamed=plan.streamed
                    )
                    for row in dataset.iter_rows():
                        status = collector.add(row)
                        if status is not None:
                            progress.video_done(
                                status.video_id, status.state, status.frames, collector.frames_done
                            )
                break
            except _loss_errors() as exc:
                collector.forget_unfinished()
                pending = [r for r in pending if str(r["video_id"]) not in collector.finished]
                videos = len({str(r["video_id"]) for r in pending})
                if attempt == LOSS_ATTEMPTS:  # their videos are marked failed by finish()
                    progress.write(
                        f"{PREFIX} lost an actor again ({type(exc).__name__}); "
                        f"{videos} unfinished videos are given up after {attempt} runs"
                    )
                    break
                progress.write(
                    f"{PREFIX} lost an actor ({type(exc).__name__}); "
                    f"running the {videos} unfinished videos again "
                    f"(run {attempt + 1} of at most {LOSS_ATTEMPTS})"
                )
                excluded |= _keep_off_lost_nodes(exc, progress)
                # Nothing else in the pipeline asks for a CPU (`_repartition_without_cpu`).
                config = fit_pool(plan.config, cpus_left(excluded))
                if config.actors.count < plan.config.actors.count:
                    progress.write(
                        f"{PREFIX} {config.actors.count} actor(s) fit the nodes left "
                        f"(of {plan.config.actors.count})"
                    )
    return collector.finish()


def _keep_off_lost_nodes(exc: BaseException, progress: Any) -> set[str]:
    """Wait (bounded) until the nodes `exc` lost actors on are marked dead by the GCS or
    proven alive, so the fresh pool cannot be placed on a dead one; returns the nodes to
    exclude from placement (`surgray.annotate.node_loss`)."""
    from surgray.annotate.node_loss import settle_after_loss

    verdict = settle_after_loss(exc)
    if verdict.dead or verdict.unsure:
        excluded = verdict.exclude
        unsure = f"; {len(verdict.unsure)} not yet" if verdict.unsure else ""
        kept = ", kept out of placement" if excluded else ""
        progress.write(
            f"{PREFIX} waited {verdict.waited_s:.1f} s: {len(verdict.dead)} lost node(s) "
            f"marked dead{unsure}{kept}"
        )
        return excluded
    return set()


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
