"""The driver's side of the annotation job, without Ray: plan the work, then collect results.

    plan = prepare_job(config)            # tasks, probes, provenance, rerun reset, work rows
    collector = ResultCollector(plan)
    for row in results:                   # SegmentResult rows, in any order, as they finish
        collector.add(row)                # a video is finalized when its last segment arrives
    summary = collector.finish()

Videos are finalized while the job runs, not at its end: a crash of the driver then loses only
the videos in flight, and a rerun skips every video whose completion marker was written.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
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
    prepare_rerun,
    summarize,
    write_summary,
)
from surgray.annotate.plan import plan_work_items
from surgray.annotate.preflight import check_model, check_output_writable
from surgray.annotate.probe import ProbeResult, needs_probe, probe_task
from surgray.annotate.provenance import (
    Provenance,
    checkpoint_sha256,
    config_hash,
    video_provenance,
)
from surgray.errors import UserError
from surgray.io.errors import VideoError
from surgray.io.video_types import VideoInfo

RATE_WINDOW_S = 60.0  # the progress log's frames/s is measured over this window
PROBE_THREADS = 8  # probes wait on the store, not the CPU
PROVENANCE_COLUMN = "provenance_json"  # added to each work row for the actor


class JobSetupError(UserError, ValueError):
    """The job cannot start: invalid config, unusable inputs, unreachable storage."""


@dataclass
class JobPlan:
    config: AnnotateConfig
    layout: OutputLayout
    tasks: dict[str, VideoTask]  # video id -> task, every video to be annotated now
    provenances: dict[str, Provenance]
    infos: dict[str, VideoInfo]  # probe results of the videos that were probed
    rows: list[dict[str, Any]]  # work items for Ray Data, with provenance_json
    skipped: tuple[str, ...] = ()  # complete from an earlier run
    rejected: tuple[ManifestError, ...] = ()  # bad rows, prompts that do not fit their video
    unreadable: tuple[VideoStatus, ...] = ()  # failed when probed, already finalized
    started: float = field(default_factory=time.monotonic)

    @property
    def segments(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row["video_id"]] = int(row["num_segments"])
        return counts


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
        return checkpoint_sha256(config.model.checkpoint, config.storage_options())
    except (OSError, VideoError) as exc:
        raise JobSetupError(f"model.checkpoint: {exc}") from exc


def _probe_all(tasks: list[VideoTask], config: AnnotateConfig) -> dict[str, ProbeResult]:
    storage = config.storage_options()
    wanted = [t for t in tasks if needs_probe(t, config.segmenting.max_segment_frames)]
    if not wanted:
        return {}
    with ThreadPoolExecutor(min(PROBE_THREADS, len(wanted))) as pool:
        results = pool.map(lambda t: probe_task(t, storage, config.frames), wanted)
        return {r.video_id: r for r in results}


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
        layout = OutputLayout(config.output.prefix, config.storage_options())
    except ValueError as exc:
        raise JobSetupError(f"output.prefix: {exc}") from exc
    check_output_writable(layout)
    config = resolve_demo_inputs(config, dict(environ) if environ is not None else None)
    loaded = _load(config, environ)
    needs_text = any(task.prompts.texts for task in loaded.tasks)
    check_model(config.model, config.storage_options(), needs_text=needs_text)
    digest = checkpoint_digest(config)
    config_digest = config_hash(config)
    provenances = {
        t.video_id: video_provenance(config_digest, digest, t.prompts) for t in loaded.tasks
    }
    rerun = prepare_rerun(layout, provenances)
    pending = [t for t in loaded.tasks if t.video_id in set(rerun.pending)]
    probes = _probe_all(pending, config)
    rejected, unreadable, runnable = list(loaded.errors), [], []
    hashed = config.privacy.hash_video_ids
    for task in pending:
        probe = probes.get(task.video_id)
        if probe is None or probe.ok:
            runnable.append(task)
        elif probe.info is None:  # the video itself is unreadable: a failed video
            status = VideoStatus(
                video_id=task.video_id,
                state="failed",
                frames=0,
                frames_skipped=0,
                objects=0,
                segments=0,
                wall_s=0.0,
                error="; ".join(e.reason for e in probe.errors),
                provenance=provenances[task.video_id],
                source_uri=None if hashed else task.video_uri,
            )
            unreadable.append(finalize_video(layout, status))
        else:
            rejected.extend(probe.errors)
            for error in probe.errors:
                logger.warning("input rejected: %s", error)
    infos = {vid: p.info for vid, p in probes.items() if p.info is not None}
    rows = plan_work_items(
        runnable,
        max_segment_frames=config.segmenting.max_segment_frames,
        stride=config.frames.stride,
        infos=infos,
    )
    for row in rows:
        row[PROVENANCE_COLUMN] = json.dumps(provenances[row["video_id"]].as_dict())
    return JobPlan(
        config=config,
        layout=layout,
        tasks={t.video_id: t for t in runnable},
        provenances=provenances,
        infos=infos,
        rows=rows,
        skipped=rerun.skipped,
        rejected=tuple(rejected),
        unreadable=tuple(unreadable),
        started=started,
    )


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
    """Groups results by video, finalizes each video once all its segments are in, and logs
    the job's progress (videos, frames, frames per second)."""

    def __init__(self, plan: JobPlan, *, exporter: Any = None, log_level: int = logging.INFO):
        self.plan = plan
        self.exporter = exporter  # callable(plan, status) -> error text or None
        self.log_level = log_level
        self._expected = plan.segments
        self._pending: dict[str, list[SegmentResult]] = {}
        self.statuses: list[VideoStatus] = list(plan.unreadable)
        self.frames_done = 0
        self._window: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])

    @property
    def videos_total(self) -> int:
        return len(self._expected) + len(self.plan.unreadable)

    def add(self, row: Mapping[str, Any]) -> VideoStatus | None:
        result = SegmentResult.from_row(row)
        self.frames_done += result.frames
        if result.video_id not in self._expected:
            logger.warning("result for unplanned %s ignored", video_label(result.video_id))
            return None
        group = self._pending.setdefault(result.video_id, [])
        group.append(result)
        status = None
        if len(group) >= self._expected[result.video_id]:
            status = self._finalize(result.video_id, self._pending.pop(result.video_id))
        self._log_progress()
        return status

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
        finished = {s.video_id for s in self.statuses}
        for video_id in self._expected:
            if video_id not in finished:
                self._finalize(video_id, [])
        summary = summarize(
            self.statuses,
            skipped=len(self.plan.skipped),
            rejected_rows=len(self.plan.rejected),
            wall_s=time.monotonic() - self.plan.started,
        )
        write_summary(self.plan.layout, summary)
        write_rejections(self.plan.layout, self.plan.rejected)
        logger.info("summary: %s", json.dumps(summary.as_dict()))
        return JobOutcome(summary, tuple(self.statuses), self.plan.rejected, self.plan.skipped)


def write_rejections(layout: OutputLayout, rejected: tuple[ManifestError, ...]) -> None:
    """`<prefix>/_rejected.json`: the inputs not annotated and why (row numbers, video ids)."""
    entries = [{"row": e.row, "video_id": e.video_id, "reason": e.reason} for e in rejected]
    layout.put_bytes(f"{layout.prefix}/_rejected.json", json.dumps(entries, indent=1).encode())
