"""`PlanningAnnotator`: the actor of the streamed job; a `SegmentAnnotator` that also passes
the planning stage's outcome rows (rejected prompts, unreadable videos) through to the driver.

Ray Data has one output per dataset, so what planning decided without making work has to
reach the driver the same way results do: through the actor pool. An outcome row costs the
actor nothing (no video is opened); it becomes one result row whose `segment_index` is
`surgray.annotate.plan_stage.OUTCOME_SEGMENT` and whose `error` holds the outcome as JSON.
"""

from __future__ import annotations

from typing import Any

from surgray.annotate.actor import SegmentAnnotator
from surgray.annotate.plan_stage import OUTCOME_COLUMN, OUTCOME_JSON_COLUMN, OUTCOME_SEGMENT
from surgray.annotate.rows import results_table
from surgray.annotate.status import SegmentResult


class PlanningAnnotator(SegmentAnnotator):
    """Tracks the work rows of a batch; turns its outcome rows into outcome results."""

    def __call__(self, batch: Any) -> Any:
        rows = batch.to_pylist() if hasattr(batch, "to_pylist") else list(batch)
        work = [r for r in rows if not r.get(OUTCOME_COLUMN)]
        passed = [
            SegmentResult(
                video_id=str(r["video_id"]),
                segment_index=OUTCOME_SEGMENT,
                num_segments=0,
                error=str(r[OUTCOME_JSON_COLUMN]),
            )
            for r in rows
            if r.get(OUTCOME_COLUMN)
        ]
        return results_table([*self.annotate_rows(work), *passed])
