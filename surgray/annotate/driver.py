"""The driver's side of the annotation job, without Ray: plan the work, then collect results.

    plan = prepare_job(config)            # tasks, provenance, rerun reset, one row per video
    collector = ResultCollector(plan)
    for row in results:                   # SegmentResult rows, in any order, as they finish
        collector.add(row)                # a video is finalized when its last segment arrives
    summary = collector.finish()

The driver does no per-video I/O before the job starts beyond the rerun check's listings
(`surgray.annotate.rerun`): probing, checking prompts against their video and cutting videos
into segments run in the pipeline (`surgray.annotate.plan_stage`), so the first video is
tracked while the rest of the archive is still being planned. The collector learns each
video's segment count from its results, and what planning rejected from outcome rows.

Videos are finalized while the job runs, not at its end: a crash of the driver then loses only
the videos in flight, and a rerun skips every video whose completion marker was written.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from surgray.annotate.config import AnnotateConfig, ConfigError
from surgray.annotate.logsafe import logger, redact, video_label
from surgray.annotate.manifest import ManifestError, ManifestInvalid, VideoTask, load_tasks
from surgray.annotate.outputs import (
    JobSummary,
    OutputLayout,
    SegmentResult,
    VideoStatus,
    combine_segments,
    finalize_video,
    summarize,
    write_summary,
)
from surgray.annotate.plan_stage import PlanOutcome, outcome_of, video_row
from surgray.annotate.preflight import check_model, check_output_writable
from surgray.annotate.provenance import (
    Provenance,
    checkpoint_sha256,
    config_hash,
    video_provenance,
)
from surgray.annotate.rerun import prepare_rerun
from surgray.annotate.run_index import IndexWriter
from surgray.errors import UserError
from surgray.io.errors import VideoError
from surgray.io.video_types import VideoInfo

RATE_WINDOW_S = 60.0  # the progress log's frames/s is measured over this window


class JobSetupError(UserError, ValueError):
    """The job cannot start: invalid config, unusable inputs, unreachable storage."""


@dataclass
class JobPlan:
    """What the driver hands to Ray. `rows` are either one row per pending video, planned in
    the pipeline (`streamed`, the annotate job), or work items planned already (one per video
    or segment, with `provenance_json`: the evaluation job)."""

    config: AnnotateConfig
    layout: OutputLayout
    tasks: dict[str, VideoTask]  # video id -> task, every video to be annotated now
    provenances: dict[str, Provenance]
    infos: dict[str, VideoInfo]  # probe results, where the driver has them (none when streamed)
    rows: list[dict[str, Any]]  # video rows (streamed) or work items, for Ray Data
    skipped: tuple[str, ...] = ()  # complete from an earlier run
    rejected: tuple[ManifestError, ...] = ()  # bad rows (and, not streamed, unfit prompts)
    unreadable: tuple[VideoStatus, ...] = ()  # failed when probed by the driver, finalized
    started: float = field(default_factory=time.monotonic)
    streamed: bool = False  # rows are videos, planned by `surgray.annotate.plan_stage`

    @property
    def video_ids(self) -> list[str]:
        """The videos handed to Ray, in row order, once each."""
        return list(dict.fromkeys(str(row["video_id"]) for row in self.rows))


def _load(config: AnnotateConfig, environ: Mapping[str, str] | None):
    try:
        return load_tasks(config, environ=dict(environ) if environ is not None else None)
    except (ManifestInvalid, ConfigError) as exc:
        raise JobSetupError(str(exc)) from exc
    except (OSError, VideoError) as exc:
        source = config.inputs.manifest or config.inputs.prefix
        raise JobSetupError(f"inputs {source}: {type(exc).__name__}: {exc}") from exc


def checkpoint_digest(config: AnnotateConfig) -> str:
    try:
        return checkpoint_sha256(config.model.checkpoint, storage=config.storage.build())
    except (OSError, VideoError) as exc:
        raise JobSetupError(f"model.checkpoint: {exc}") from exc


def prepare_job(config: AnnotateConfig, *, environ: Mapping[str, str] | None = None) -> JobPlan:
    """Everything the driver does before the actors start; raises `JobSetupError` or
    `surgray.annotate.preflight.PreflightError` (both `UserError`s).

    The checks of `surgray.annotate.preflight` run here, before Ray starts: the checkpoint is
    built as the actors build it, so a wrong file or variant is one line, not an actor's
    traceback. `demo:` inputs are written first (`surgray.annotate.demo_source`)."""
    from surgray.annotate.demo_source import resolve_demo_inputs
    from surgray.annotate.hooks import load_skip_hook

    started = time.monotonic()
    try:
        load_skip_hook(config.frames.skip_hook)
    except ValueError as exc:
        raise JobSetupError(f"frames.skip_hook: {exc}") from exc
    try:
        layout = OutputLayout(config.output.prefix, storage=config.storage.build())
    except ValueError as exc:
        raise JobSetupError(f"output.prefix: {exc}") from exc
    check_output_writable(layout)
    config = resolve_demo_inputs(config, dict(environ) if environ is not None else None)
    loaded = _load(config, environ)
    needs_text = any(task.prompts.texts for task in loaded.tasks)
    check_model(config.model, storage=layout.storage, needs_text=needs_text)
    digest = checkpoint_digest(config)
    config_digest = config_hash(config)
    provenances = {
        t.video_id: video_provenance(config_digest, digest, t.prompts) for t in loaded.tasks
    }
    rerun = prepare_rerun(layout, provenances)
    pending = set(rerun.pending)
    tasks = {t.video_id: t for t in loaded.tasks if t.video_id in pending}
    return JobPlan(
        config=config,
        layout=layout,
        tasks=tasks,
        provenances=provenances,
        infos={},
        rows=[video_row(task, provenances[vid]) for vid, task in tasks.items()],
        skipped=rerun.skipped,
        rejected=tuple(loaded.errors),
        started=started,
        streamed=True,
    )


def local_work_rows(plan: JobPlan) -> list[dict[str, Any]]:
    """The plan's work rows, planned in this process (tests and benchmarks that call the
    annotator without Ray); outcome rows included. The job itself plans in the pipeline."""
    from surgray.annotate.plan_stage import PlanSettings, plan_rows

    if not plan.streamed:
        return list(plan.rows)
    return plan_rows(plan.rows, PlanSettings.from_config(plan.config))


@dataclass(frozen=True)
class JobOutcome:
    """What a finished job reports: its summary, every video's status, what was rejected."""

    summary: JobSummary
    statuses: tuple[VideoStatus, ...]
    rejected: tuple[ManifestError, ...]
    skipped: tuple[str, ...]

    def report(self) -> str:
        """A short text report: the summary, then failed videos and rejected inputs."""
        s = self.summary
        lines = [
            f"videos: {s.videos} ({s.done} done, {s.skipped} complete before, {s.failed} failed), "
            f"{s.rejected_rows} inputs rejected, {s.frames} frames in {s.wall_s:.1f} s "
            f"({s.fps:.1f} frames/s)"
        ]
        lines += [f"  failed {v.video_id}: {v.error}" for v in self.statuses if v.state == "failed"]
        lines += [f"  rejected {e}" for e in self.rejected]
        return "\n".join(lines)


class ResultCollector:
    """Groups results by video, finalizes each video once all its segments are in, records
    what planning rejected, and logs the job's progress (videos, frames, frames per second).

    A video's segment count comes with each of its results (`num_segments`), so the collector
    needs no plan of the work items; `finished` holds the ids of the videos settled this run
    (finalized or rejected), which is what a re-run after a lost actor leaves out."""

    def __init__(
        self,
        plan: JobPlan,
        *,
        exporter: Any = None,
        log_level: int = logging.INFO,
        on_outcome: Any = None,
        index: IndexWriter | None = None,
    ):
        self.plan = plan
        self.index = index  # this run's index of completed videos (`surgray.annotate.run_index`)
        self.exporter = exporter  # callable(plan, status) -> error text or None
        self.on_outcome = on_outcome  # callable(PlanOutcome), told of each planning outcome
        self.log_level = log_level
        self._pending: dict[str, list[SegmentResult]] = {}
        self.statuses: list[VideoStatus] = list(plan.unreadable)
        self.rejected: list[ManifestError] = list(plan.rejected)
        self.finished: set[str] = {s.video_id for s in plan.unreadable}
        self.frames_done = 0
        self._window: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])

    @property
    def videos_total(self) -> int:
        return len(self.plan.tasks) + len(self.plan.unreadable)

    def add(self, row: Mapping[str, Any]) -> VideoStatus | None:
        """Take one result row; returns the video's status when this row finished it."""
        video_id = str(row["video_id"])
        if video_id not in self.plan.tasks or video_id in self.finished:
            logger.warning("result for %s ignored: not pending in this run", video_label(video_id))
            return None
        outcome = outcome_of(row)
        if outcome is not None:
            return self._settle(outcome)
        result = SegmentResult.from_row(row)
        self.frames_done += result.frames
        group = self._pending.setdefault(result.video_id, [])
        group.append(result)
        status = None
        if len(group) >= result.num_segments:
            status = self._finalize(result.video_id, self._pending.pop(result.video_id))
        self._log_progress()
        return status

    def _settle(self, outcome: PlanOutcome) -> VideoStatus | None:
        """Record what planning decided: rejected prompts, or an unreadable (failed) video."""
        self.finished.add(outcome.video_id)
        if self.on_outcome is not None:
            self.on_outcome(outcome)
        if outcome.kind != "unreadable":
            self.rejected.extend(outcome.errors)
            for error in outcome.errors:
                logger.warning("input rejected: %s", error)
            return None
        task = self.plan.tasks[outcome.video_id]
        status = VideoStatus(
            video_id=outcome.video_id,
            state="failed",
            frames=0,
            frames_skipped=0,
            objects=0,
            segments=0,
            wall_s=0.0,
            error=outcome.reason,
            provenance=self.plan.provenances[outcome.video_id],
            source_uri=None if self.plan.config.privacy.hash_video_ids else task.video_uri,
        )
        status = finalize_video(self.plan.layout, status)
        self.statuses.append(status)
        return status

    def forget_unfinished(self) -> None:
        """Drop the results of videos not finished yet (their work runs again, whole)."""
        self._pending.clear()

    def _finalize(self, video_id: str, results: list[SegmentResult]) -> VideoStatus:
        task = self.plan.tasks[video_id]
        hashed = self.plan.config.privacy.hash_video_ids
        status = combine_segments(
            video_id,
            results,
            self.plan.provenances[video_id],
            source_uri=None if hashed else task.video_uri,
        )
        if status.state == "done" and self.exporter is not None:
            try:
                self.exporter(self.plan, status)
            except Exception as exc:  # an export failure fails this video, not the job
                message = redact(f"{type(exc).__name__}: {exc}", task.video_uri, video_id)
                status = replace(status, state="failed", error=f"export failed: {message}")
        status = finalize_video(self.plan.layout, status)
        self.statuses.append(status)
        self.finished.add(video_id)
        if status.state == "done" and self.index is not None:
            self.index.add(video_id, self.plan.provenances[video_id])
        return status

    def current_fps(self) -> float:
        """Frames per second over the last `RATE_WINDOW_S` seconds of results."""
        now = time.monotonic()
        self._window.append((now, self.frames_done))
        while len(self._window) > 2 and self._window[1][0] < now - RATE_WINDOW_S:
            self._window.popleft()
        start, frames = self._window[0]
        return (self.frames_done - frames) / (now - start) if now > start else 0.0

    def _log_progress(self) -> None:
        failed = sum(s.state == "failed" for s in self.statuses)
        logger.log(
            self.log_level,
            "progress: %d/%d videos finished (%d failed), %d frames, %.1f frames/s",
            len(self.statuses),
            self.videos_total,
            failed,
            self.frames_done,
            self.current_fps(),
        )

    def finish(self) -> JobOutcome:
        """Fail the videos whose results never came, write and log the summary."""
        for video_id, results in list(self._pending.items()):
            self._finalize(video_id, results)  # incomplete segments: combine marks it failed
        self._pending.clear()
        for video_id in self.plan.tasks:
            if video_id not in self.finished:
                self._finalize(video_id, [])
        if self.index is not None:
            self.index.flush()
        rejected = tuple(self.rejected)
        summary = summarize(
            self.statuses,
            skipped=len(self.plan.skipped),
            rejected_rows=len(rejected),
            wall_s=time.monotonic() - self.plan.started,
        )
        write_summary(self.plan.layout, summary)
        write_rejections(self.plan.layout, rejected)
        logger.info("summary: %s", json.dumps(summary.as_dict()))
        return JobOutcome(summary, tuple(self.statuses), rejected, self.plan.skipped)


def write_rejections(layout: OutputLayout, rejected: tuple[ManifestError, ...]) -> None:
    """`<prefix>/_rejected.json`: the inputs not annotated and why (row numbers, video ids)."""
    entries = [{"row": e.row, "video_id": e.video_id, "reason": e.reason} for e in rejected]
    layout.put_bytes(f"{layout.prefix}/_rejected.json", json.dumps(entries, indent=1).encode())
