"""Per-segment results, per-video status records, the job summary and the job's exit code."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from surgray.annotate.provenance import Provenance

EXIT_OK = 0
EXIT_ALL_FAILED = 1
EXIT_INVALID_CONFIG = 2


@dataclass(frozen=True)
class PartInfo:
    """One Parquet part of a video's masks: its file name, row count and content digest.

    The digest (sha256 of the file's bytes) lets a rerun tell a part rewritten with the same
    number of rows from the one the marker vouches for; it is left out of equality so that
    parts compare by name and rows, as before digests existed."""

    name: str
    rows: int
    sha256: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PartInfo:
        digest = data.get("sha256")
        return cls(str(data["name"]), int(data["rows"]), str(digest) if digest else None)


@dataclass(frozen=True)
class SegmentResult:
    """What an actor reports for one work item (flat, for a Ray Data row)."""

    video_id: str
    segment_index: int
    num_segments: int
    frames: int = 0  # frames tracked
    frames_skipped: int = 0  # frames the skip hook dropped
    object_ids: tuple[int, ...] = ()
    wall_s: float = 0.0
    error: str | None = None  # already redacted: no source URI
    parts: tuple[PartInfo, ...] = ()

    def to_row(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "segment_index": self.segment_index,
            "num_segments": self.num_segments,
            "frames": self.frames,
            "frames_skipped": self.frames_skipped,
            "object_ids": list(self.object_ids),
            "wall_s": self.wall_s,
            "error": self.error or "",
            "part_names": [p.name for p in self.parts],
            "part_rows": [p.rows for p in self.parts],
            "part_sha256": [p.sha256 or "" for p in self.parts],
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SegmentResult:
        return cls(
            video_id=str(row["video_id"]),
            segment_index=int(row["segment_index"]),
            num_segments=int(row["num_segments"]),
            frames=int(row["frames"]),
            frames_skipped=int(row["frames_skipped"]),
            object_ids=tuple(int(i) for i in row["object_ids"]),
            wall_s=float(row["wall_s"]),
            error=row["error"] or None,
            parts=tuple(
                PartInfo(str(n), int(r), str(d) or None)
                for n, r, d in zip(
                    row["part_names"],
                    row["part_rows"],
                    row.get("part_sha256") or [""] * len(row["part_names"]),
                )
            ),
        )


@dataclass(frozen=True)
class VideoStatus:
    """The record `<prefix>/status/video_id=<id>.json` holds for one video."""

    video_id: str
    state: Literal["done", "failed"]
    frames: int
    frames_skipped: int
    objects: int
    segments: int
    wall_s: float
    error: str | None
    provenance: Provenance | None
    source_uri: str | None = None  # only when video ids are not hashed
    parts: tuple[PartInfo, ...] = field(default=(), repr=False)

    @property
    def fps(self) -> float:
        """Tracked frames per second of actor wall time."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "video_id": self.video_id,
            "state": self.state,
            "frames": self.frames,
            "frames_skipped": self.frames_skipped,
            "objects": self.objects,
            "segments": self.segments,
            "wall_s": round(self.wall_s, 6),
            "fps": round(self.fps, 3),
            "error": self.error,
            "source_uri": self.source_uri,
            "parts": [p.as_dict() for p in self.parts],
        }
        out.update(self.provenance.as_dict() if self.provenance else {})
        return out

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True, indent=1)


def combine_segments(
    video_id: str,
    results: Iterable[SegmentResult],
    provenance: Provenance | None,
    source_uri: str | None = None,
) -> VideoStatus:
    """One video's status from its segments' results: failed unless every segment succeeded."""
    ordered = sorted(results, key=lambda r: r.segment_index)
    errors = [f"segment {r.segment_index}: {r.error}" for r in ordered if r.error]
    expected = ordered[0].num_segments if ordered else 1
    indexes = [r.segment_index for r in ordered]
    if indexes != list(range(expected)) or any(r.num_segments != expected for r in ordered):
        errors.append(f"expected segments 0..{expected - 1}, got {indexes}")
    if any(r.video_id != video_id for r in ordered):
        errors.append(
            f"results of other videos were mixed in: {sorted({r.video_id for r in ordered})}"
        )
    objects = {obj for r in ordered for obj in r.object_ids}
    return VideoStatus(
        video_id=video_id,
        state="failed" if errors else "done",
        frames=sum(r.frames for r in ordered),
        frames_skipped=sum(r.frames_skipped for r in ordered),
        objects=len(objects),
        segments=len(ordered),
        wall_s=sum(r.wall_s for r in ordered),
        error="; ".join(errors) or None,
        provenance=provenance,
        source_uri=source_uri,
        parts=tuple(p for r in ordered for p in r.parts),
    )


@dataclass(frozen=True)
class JobSummary:
    videos: int  # planned: done + skipped + failed
    done: int
    skipped: int  # complete from an earlier run with the same provenance
    failed: int
    rejected_rows: int  # manifest rows or probes reported as invalid
    frames: int
    wall_s: float  # job wall time

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": "finished",
            "finished_at": _utc_now(),
            "videos": self.videos,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "rejected_rows": self.rejected_rows,
            "frames": self.frames,
            "wall_s": round(self.wall_s, 3),
            "fps": round(self.fps, 3),
        }


def running_summary(videos: int) -> dict[str, Any]:
    """`_summary.json` from the start of a run until its end: a crashed run leaves this, never
    the counts of an earlier run whose outputs are being reset."""
    return {"state": "running", "started_at": _utc_now(), "videos": videos}


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def summarize(
    statuses: Iterable[VideoStatus], *, skipped: int, rejected_rows: int, wall_s: float
) -> JobSummary:
    statuses = list(statuses)
    done = sum(s.state == "done" for s in statuses)
    failed = len(statuses) - done
    return JobSummary(
        videos=done + failed + skipped,
        done=done,
        skipped=skipped,
        failed=failed,
        rejected_rows=rejected_rows,
        frames=sum(s.frames for s in statuses),
        wall_s=wall_s,
    )


def exit_code(summary: JobSummary | None) -> int:
    """0 unless the configuration was invalid (None: the job could not start) or every video
    it tried failed. Some failures among successes still exit 0; the summary tells them."""
    if summary is None:
        return EXIT_INVALID_CONFIG
    if summary.failed > 0 and summary.done == 0 and summary.skipped == 0:
        return EXIT_ALL_FAILED
    return EXIT_OK
