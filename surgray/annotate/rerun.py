"""The rerun check of the annotate job, at archive scale: which videos an earlier run left
complete (skip them) and which must be redone (reset them).

    listings: _done/, status/, masks/, exports/*    (scan_outputs: one LIST per thousand keys)
    index:    _index/*.parquet                      (a few GETs; `surgray.annotate.run_index`)
    (masks/ is listed flat, with sizes and ETags: the parts of every video in one pass)

A video with a marker is complete without a request of its own when an index row matches the
listing (provenance, marker and every part's size and tag). Every other video the prefix holds
anything of gets the per-video check of `surgray.annotate.completion` on `RERUN_THREADS` threads
(read the marker, list the parts, read them for their sha256); one that passes it is added to
this run's index, so the next rerun finds it by listing. Videos with nothing under the prefix
are pending without a request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from surgray.annotate.completion import RERUN_THREADS, RerunPlan, rerun_one
from surgray.annotate.logsafe import logger, video_label
from surgray.annotate.output_scan import OutputScan, scan_outputs
from surgray.annotate.outputs import OutputLayout, read_marker
from surgray.annotate.provenance import Provenance
from surgray.annotate.run_index import (
    IndexEntry,
    IndexWriter,
    entry_now,
    provenance_key,
    read_index,
)
from surgray.annotate.status import running_summary


def indexed_complete(
    layout: OutputLayout, provenances: Mapping[str, Provenance], scan: OutputScan
) -> set[str]:
    """The videos with a marker that an index row proves complete (see the module docstring)."""
    candidates = [v for v in provenances if v in scan.markers]
    if not candidates:
        return set()
    index = read_index(layout, candidates)
    if not index:
        return set()
    complete = set()
    for video_id, entries in index.items():
        key = provenance_key(provenances[video_id])
        marker = scan.marker_prints.get(video_id)
        listed = scan.part_prints.get(video_id, {})
        if any(e.matches(key, marker, listed) for e in entries):
            complete.add(video_id)
    return complete


def _restore_missing_status(layout: OutputLayout, video_id: str) -> None:
    marker = read_marker(layout, video_id)
    if marker is not None and marker.status_json is not None:
        layout.put_bytes(layout.status_uri(video_id), marker.status_json.encode())
        logger.info(
            "%s: status record was missing; restored from the marker", video_label(video_id)
        )


def prepare_rerun(
    layout: OutputLayout,
    provenances: Mapping[str, Provenance],
    index: IndexWriter | None = None,
) -> RerunPlan:
    """Skip complete videos (restoring a missing status record from the marker's copy);
    clear whatever an earlier run left of the others. `_summary.json` says `running` first.

    Videos found complete by the per-video check go to `index` (a new writer if None), which
    is flushed before returning."""
    layout.put_bytes(layout.summary_uri, json.dumps(running_summary(len(provenances))).encode())
    scan = scan_outputs(layout)
    fast = indexed_complete(layout, provenances, scan)
    for video_id in fast:
        if video_id not in scan.statuses:
            _restore_missing_status(layout, video_id)
    slow = [v for v in provenances if v in scan.present and v not in fast]
    verdicts: dict[str, bool] = {}
    if slow:
        with ThreadPoolExecutor(min(RERUN_THREADS, len(slow))) as pool:
            checked = pool.map(lambda v: rerun_one(layout, v, provenances[v], scan), slow)
            verdicts = dict(zip(slow, checked))
    verified = [v for v in slow if verdicts[v]]
    if verified:
        writer = index or IndexWriter(layout)
        for video_id in verified:  # indexed now, so the next rerun skips them by listing
            entry: IndexEntry | None = entry_now(layout, video_id, provenances[video_id])
            if entry is not None:
                writer.add_entry(entry)
        writer.flush()
    logger.info(
        "rerun check: %d complete by the index, %d checked one by one, %d complete in all",
        len(fast),
        len(slow),
        len(fast) + len(verified),
    )
    skipped = tuple(v for v in provenances if v in fast or verdicts.get(v, False))
    done = set(skipped)
    return RerunPlan(tuple(v for v in provenances if v not in done), skipped)
