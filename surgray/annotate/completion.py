"""When a video counts as complete, and what a rerun does with one that is not.

Complete: its marker (`surgray.annotate.outputs.Marker`) carries the provenance the job would
record now and lists exactly the parts present, with their row counts and sha256 digests, so a
part rewritten since makes the video incomplete. A video that is not complete is reset: all of
it is removed, marker first, and it is annotated again. This is the per-video check, which
reads every part; `surgray.annotate.rerun` puts the run index in front of it so that a rerun
of a large archive reads almost nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from surgray.annotate.logsafe import logger, video_label
from surgray.annotate.output_scan import OutputScan, scan_outputs
from surgray.annotate.outputs import OutputLayout, read_marker
from surgray.annotate.provenance import Provenance
from surgray.annotate.status import running_summary


@dataclass(frozen=True)
class Completion:
    complete: bool
    reason: str


def check_complete(layout: OutputLayout, video_id: str, provenance: Provenance) -> Completion:
    """Complete: a marker with this provenance whose parts are on the store with the same
    names, row counts and sha256 digests (each part is read once to check)."""
    marker = read_marker(layout, video_id)
    if marker is None:
        return Completion(False, "no valid completion marker")
    if marker.provenance != provenance:
        changed = [
            k for k, v in provenance.as_dict().items() if marker.provenance.as_dict()[k] != v
        ]
        return Completion(False, f"made with other {', '.join(changed)}")
    present = layout.part_names(video_id)
    listed = {p.name: p.rows for p in marker.parts}
    if sorted(listed) != present:
        return Completion(
            False, f"parts on the store {present} differ from the marker's {sorted(listed)}"
        )
    for part in marker.parts:
        if part.sha256 is None:
            return Completion(False, f"the marker has no digest of part {part.name} (older run)")
        try:
            rows, digest = layout.part_content(video_id, part.name)
        except Exception as exc:  # a truncated or foreign file: not complete, whatever the cause
            return Completion(False, f"part {part.name} unreadable: {type(exc).__name__}")
        if rows != part.rows:
            return Completion(
                False, f"part {part.name} has {rows} rows, the marker says {part.rows}"
            )
        if digest != part.sha256:
            return Completion(False, f"part {part.name} was rewritten since (its digest differs)")
    return Completion(True, "complete")


def is_complete(layout: OutputLayout, video_id: str, provenance: Provenance) -> bool:
    return check_complete(layout, video_id, provenance).complete


def reset_video(layout: OutputLayout, video_id: str) -> int:
    """Delete everything of one video (marker first); returns how many entries went."""
    targets = [
        (layout.marker_uri(video_id), False),
        (layout.status_uri(video_id), False),
        (layout.masks_dir(video_id), True),
        (layout.export_uri(video_id, "davis"), True),
        (layout.export_uri(video_id, "sav_json"), False),
        (layout.export_uri(video_id, "overlay_mp4"), False),
    ]
    return sum(layout.remove(uri, recursive) for uri, recursive in targets)


@dataclass(frozen=True)
class RerunPlan:
    pending: tuple[str, ...]  # reset, to be annotated
    skipped: tuple[str, ...]  # complete with the same provenance


RERUN_THREADS = 16  # rerun checks wait on the store, not the CPU


def prepare_rerun_by_content(
    layout: OutputLayout, provenances: Mapping[str, Provenance]
) -> RerunPlan:
    """Skip complete videos (restoring a missing status record from the marker's copy);
    clear whatever an earlier run left of the others. `_summary.json` says `running` first.

    One listing per output folder (`scan_outputs`) finds the videos the prefix holds anything
    of; the others are pending without a request each, so a fresh prefix costs a few LISTs
    however large the archive. The videos found are checked concurrently."""
    layout.put_bytes(layout.summary_uri, json.dumps(running_summary(len(provenances))).encode())
    scan = scan_outputs(layout)
    found = [v for v in provenances if v in scan.present]
    if found:
        with ThreadPoolExecutor(min(RERUN_THREADS, len(found))) as pool:
            verdicts = dict(
                zip(found, pool.map(lambda v: rerun_one(layout, v, provenances[v], scan), found))
            )
    else:
        verdicts = {}
    skipped = tuple(v for v in provenances if verdicts.get(v, False))
    pending = tuple(v for v in provenances if not verdicts.get(v, False))
    return RerunPlan(pending, skipped)


def rerun_one(
    layout: OutputLayout, video_id: str, provenance: Provenance, scan: OutputScan
) -> bool:
    """True when the video is complete (skip it); else what it left is removed."""
    if video_id in scan.markers:
        state = check_complete(layout, video_id, provenance)
    else:
        state = Completion(False, "no completion marker")
    if state.complete:
        logger.debug("%s: complete from an earlier run, skipped", video_label(video_id))
        restore_status(layout, video_id)
        return True
    removed = reset_video(layout, video_id)
    if removed:
        logger.info(
            "%s: %s; removed %d stale entries", video_label(video_id), state.reason, removed
        )
    return False


def restore_status(layout: OutputLayout, video_id: str) -> None:
    if layout.read_bytes(layout.status_uri(video_id)) is not None:
        return
    marker = read_marker(layout, video_id)
    if marker is not None and marker.status_json is not None:
        layout.put_bytes(layout.status_uri(video_id), marker.status_json.encode())
        logger.info(
            "%s: status record was missing; restored from the marker", video_label(video_id)
        )
