"""The planning stage of the annotate job, run inside the Ray pipeline instead of on the driver.

    video rows (one per pending video: id, URI, prompts, provenance)
      -> plan_batch (Ray Data tasks)  probe the video when planning needs it, check its
                                      prompts against it, cut it into segments
      -> work rows                    one per video or segment (`surgray.annotate.plan`)
         or one outcome row           "rejected" (prompts that do not fit the video) or
                                      "unreadable" (the video cannot be read)

Before, the driver probed every such video before any actor started, so the time to the
first tracked frame grew with the archive (issue 23). Here each batch of a few videos is
planned by a task while the actors already track what was planned before it.

Outcome rows travel through the actor pool untouched (`PlanningAnnotator` turns each into
one result row with `segment_index == OUTCOME_SEGMENT`), so the driver's collector records
them exactly as the driver recorded them when it probed: rejected prompts in
`_rejected.json`, an unreadable video as a failed video with its status record.

A row carries its video's prompts once: `prompts_json`, with the provenance column less
them (`surgray.annotate.row_provenance`).

Every row has the same columns (Arrow needs one schema for a block): work rows leave the
outcome columns empty, outcome rows fill the work-item columns with neutral values.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from surgray.annotate.config import AnnotateConfig, FramesConfig
from surgray.annotate.manifest import ManifestError, VideoTask
from surgray.annotate.plan import plan_video
from surgray.annotate.probe import ProbeResult, needs_probe, probe_task
from surgray.annotate.prompts import VideoPrompts
from surgray.annotate.provenance import Provenance
from surgray.annotate.row_provenance import PROVENANCE_COLUMN, provenance_column
from surgray.io.storage import Storage

ROW_COLUMN = "manifest_row"  # the manifest row number, -1 when the video came from a prefix
OUTCOME_COLUMN = "plan_outcome"  # "" for a work row, else "rejected" or "unreadable"
OUTCOME_JSON_COLUMN = "plan_outcome_json"  # the reasons, as JSON
OUTCOME_SEGMENT = -1  # segment index of an outcome's result row (never a real segment)
PROBE_THREADS = 8  # probes wait on the store, not the CPU


@dataclass(frozen=True)
class PlanSettings:
    """What planning needs from the job's config (small, pickled into every planning task)."""

    max_segment_frames: int | None
    stride: int
    frames: FramesConfig
    storage: Storage

    @classmethod
    def from_config(cls, config: AnnotateConfig) -> PlanSettings:
        return cls(
            max_segment_frames=config.segmenting.max_segment_frames,
            stride=config.frames.stride,
            frames=config.frames,
            storage=config.storage.build(),
        )


@dataclass(frozen=True)
class PlanOutcome:
    """A video that planning did not turn into work: its prompts do not fit, or it is
    unreadable (then `errors` name why it failed)."""

    video_id: str
    kind: str  # "rejected" | "unreadable"
    errors: tuple[ManifestError, ...]

    @property
    def reason(self) -> str:
        return "; ".join(e.reason for e in self.errors)

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "errors": [[e.row, e.reason, e.video_id] for e in self.errors],
            }
        )

    @classmethod
    def from_json(cls, video_id: str, text: str) -> PlanOutcome:
        data = json.loads(text)
        errors = tuple(ManifestError(row, reason, vid) for row, reason, vid in data["errors"])
        return cls(video_id, str(data["kind"]), errors)


def video_row(task: VideoTask, provenance: Provenance) -> dict[str, Any]:
    """The row a pending video enters the pipeline as."""
    return {
        "video_id": task.video_id,
        "video_uri": task.video_uri,
        "prompts_json": task.prompts.to_json(),
        ROW_COLUMN: -1 if task.row is None else task.row,
        PROVENANCE_COLUMN: provenance_column(provenance),  # less the prompts: they are above
    }


def _task(row: Mapping[str, Any]) -> VideoTask:
    number = int(row[ROW_COLUMN])
    return VideoTask(
        video_uri=str(row["video_uri"]),
        video_id=str(row["video_id"]),
        prompts=VideoPrompts.from_json(str(row["prompts_json"])),
        row=None if number < 0 else number,
    )


def _outcome_row(row: Mapping[str, Any], outcome: PlanOutcome) -> dict[str, Any]:
    return {
        "video_id": outcome.video_id,
        "video_uri": "",  # not needed, and an outcome row need not carry the source's name
        "prompts_json": "{}",
        "segment_index": OUTCOME_SEGMENT,
        "num_segments": 0,
        "start_frame": 0,
        "end_frame": -1,
        PROVENANCE_COLUMN: row[PROVENANCE_COLUMN],
        OUTCOME_COLUMN: outcome.kind,
        OUTCOME_JSON_COLUMN: outcome.to_json(),
    }


def plan_one(
    row: Mapping[str, Any], probe: ProbeResult | None, settings: PlanSettings
) -> list[dict[str, Any]]:
    """A video row and its probe (None when none was needed) -> its work or outcome rows."""
    task = _task(row)
    if probe is not None and not probe.ok:
        kind = "unreadable" if probe.info is None else "rejected"
        return [_outcome_row(row, PlanOutcome(task.video_id, kind, probe.errors))]
    items = plan_video(
        task,
        max_segment_frames=settings.max_segment_frames,
        stride=settings.stride,
        info=probe.info if probe is not None else None,
    )
    rows = []
    for item in items:
        work = item.to_row()
        work.update(
            {PROVENANCE_COLUMN: row[PROVENANCE_COLUMN], OUTCOME_COLUMN: "", OUTCOME_JSON_COLUMN: ""}
        )
        rows.append(work)
    return rows


def plan_rows(rows: Iterable[Mapping[str, Any]], settings: PlanSettings) -> list[dict[str, Any]]:
    """Plan video rows in order; the probes they need run on `PROBE_THREADS` threads."""
    rows = list(rows)
    tasks = [_task(r) for r in rows]
    wanted = [i for i, t in enumerate(tasks) if needs_probe(t, settings.max_segment_frames)]
    probes: dict[int, ProbeResult] = {}
    if wanted:
        with ThreadPoolExecutor(min(PROBE_THREADS, len(wanted))) as pool:
            found = pool.map(
                lambda i: probe_task(tasks[i], settings.frames, storage=settings.storage), wanted
            )
            probes = dict(zip(wanted, found))
    planned: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        planned.extend(plan_one(row, probes.get(index), settings))
    return planned


def plan_batch(batch: Any, settings: PlanSettings) -> Any:
    """`map_batches` function: a pyarrow Table of video rows -> a Table of planned rows."""
    import pyarrow as pa

    return pa.Table.from_pylist(plan_rows(batch.to_pylist(), settings))


def outcome_of(result_row: Mapping[str, Any]) -> PlanOutcome | None:
    """The planning outcome a result row carries, or None for a work item's result."""
    if int(result_row["segment_index"]) != OUTCOME_SEGMENT:
        return None
    return PlanOutcome.from_json(str(result_row["video_id"]), str(result_row["error"]))
