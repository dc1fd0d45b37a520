"""The job's output layout under one prefix, and how a video becomes complete exactly once.

    <prefix>/masks/video_id=<id>/part-<segment>-<chunk>.parquet   mask rows (RLE)
    <prefix>/status/video_id=<id>.json                            per-video status record
    <prefix>/_done/<id>.json                                      completion marker, written last
    <prefix>/exports/<format>/...                                 DAVIS, SA-V JSON, overlay MP4

A segment's rows go out in chunks of `rows_per_part`, so a writer's memory does not grow with
video length. Object stores have no rename, so nothing is made visible by renaming: a video
counts as complete only when its marker exists, carries the provenance the job would record
now, and lists exactly the parts present with their row counts and sha256 digests: a part
rewritten since (even with the same number of rows) makes the video incomplete. A crash at any
point leaves a video without a valid marker; the rerun deletes what it finds of that video and
redoes it, so two runs give the same rows, once. The marker also keeps a copy of the video's
status record, which a rerun writes back if it went missing. `_summary.json` says `running`
from the start of a run (before anything is reset) until the run writes its final counts.
Works on local paths and fsspec URIs (s3:// ...).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from surgray.annotate.logsafe import check_video_id, logger, video_label
from surgray.annotate.provenance import Provenance
from surgray.annotate.status import (  # noqa: F401  (re-exported: the job imports them here)
    EXIT_ALL_FAILED,
    EXIT_INVALID_CONFIG,
    EXIT_OK,
    JobSummary,
    PartInfo,
    SegmentResult,
    VideoStatus,
    combine_segments,
    exit_code,
    running_summary,
    summarize,
)
from surgray.io.records import MaskRecord
from surgray.io.storage import Storage

MARKER_FORMAT = 2  # 2: parts carry sha256 digests, and the marker a copy of the status


class OutputLayout:
    """Where each output of a video lives, and the few store operations the job needs."""

    def __init__(self, prefix: str | os.PathLike[str], *, storage: Storage):
        self.prefix = os.fspath(prefix).rstrip("/")
        if not self.prefix:
            raise ValueError("output prefix is empty")
        self.storage = storage

    def masks_dir(self, video_id: str) -> str:
        return f"{self.prefix}/masks/video_id={check_video_id(video_id)}"

    def part_uri(self, video_id: str, name: str) -> str:
        return f"{self.masks_dir(video_id)}/{name}"

    def status_uri(self, video_id: str) -> str:
        return f"{self.prefix}/status/video_id={check_video_id(video_id)}.json"

    def marker_uri(self, video_id: str) -> str:
        return f"{self.prefix}/_done/{check_video_id(video_id)}.json"

    def export_uri(self, video_id: str, fmt: str) -> str:
        """DAVIS: the folder of this video's PNGs; SA-V JSON and overlay MP4: one file."""
        check_video_id(video_id)
        suffix = {"davis": "", "sav_json": ".json", "overlay_mp4": ".mp4"}
        if fmt not in suffix:
            raise ValueError(f"unknown export format {fmt!r}; expected one of {sorted(suffix)}")
        return f"{self.prefix}/exports/{fmt}/{video_id}{suffix[fmt]}"

    @property
    def summary_uri(self) -> str:
        return f"{self.prefix}/_summary.json"

    # Store operations, through fsspec; listings are refreshed since other processes write.
    def _fs(self, uri: str) -> tuple[Any, str]:
        fs, path = self.storage.filesystem(uri)
        fs.invalidate_cache(path)
        return fs, path

    def put_bytes(self, uri: str, payload: bytes) -> None:
        from surgray.io.storage import is_local

        fs, path = self._fs(uri)
        if is_local(uri):  # object stores have no folders (and s3fs would create the bucket)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, payload)

    def read_bytes(self, uri: str) -> bytes | None:
        fs, path = self._fs(uri)
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    def names_in(self, folder: str) -> list[str]:
        """Base names of the entries directly in `<prefix>/<folder>` (none if it is missing):
        one listing, not walked (a LIST per thousand keys on object storage)."""
        fs, path = self._fs(f"{self.prefix}/{folder}")
        try:
            entries = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return [str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries]

    def entries_in(self, folder: str, *, recursive: bool = False) -> dict[str, dict[str, Any]]:
        """Path under `<prefix>/<folder>` -> the store's details (size, ETag or mtime) of
        each file there; recursive: one flat LIST of every key below (per thousand keys on
        object storage), not a walk folder by folder. Empty if the folder is missing."""
        fs, path = self._fs(f"{self.prefix}/{folder}")
        base = path.rstrip("/") + "/"
        try:
            if recursive:
                found = fs.find(path, detail=True)
            else:
                found = {e["name"]: e for e in fs.ls(path, detail=True)}
        except FileNotFoundError:
            return {}
        return {
            str(name).removeprefix(base): info
            for name, info in found.items()
            if info.get("type") != "directory" and str(name).startswith(base)
        }

    def entry(self, uri: str) -> dict[str, Any] | None:
        """The store's details of one file (one HEAD on object storage), None if missing."""
        fs, path = self._fs(uri)
        try:
            return dict(fs.info(path))
        except FileNotFoundError:
            return None

    def part_names(self, video_id: str) -> list[str]:
        fs, path = self._fs(self.masks_dir(video_id))
        try:
            listing = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(n.rsplit("/", 1)[-1] for n in listing if n.endswith(".parquet"))

    def part_rows(self, video_id: str, name: str) -> int:
        import pyarrow.parquet as pq

        fs, path = self._fs(self.part_uri(video_id, name))
        with fs.open(path, "rb") as handle:
            return pq.ParquetFile(handle).metadata.num_rows

    def part_content(self, video_id: str, name: str) -> tuple[int, str]:
        """(rows, sha256 hex) of a part as it is on the store now."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        payload = self.read_bytes(self.part_uri(video_id, name))
        if payload is None:
            raise FileNotFoundError(name)
        rows = pq.ParquetFile(pa.BufferReader(payload)).metadata.num_rows
        return rows, hashlib.sha256(payload).hexdigest()

    def remove(self, uri: str, recursive: bool = False) -> bool:
        fs, path = self._fs(uri)
        try:
            if not fs.exists(path):
                return False
            fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            return False
        return True


def part_name(segment_index: int, chunk_index: int) -> str:
    return f"part-{segment_index:05d}-{chunk_index:05d}.parquet"


class SegmentWriter:
    """Streams one work item's mask records into Parquet parts of at most `rows_per_part` rows.

    `start()` first deletes parts this segment may have left in an earlier attempt; only
    `close()` returns the parts, so an attempt that fails half way lists none.
    """

    def __init__(
        self, layout: OutputLayout, video_id: str, segment_index: int, rows_per_part: int = 50_000
    ):
        if rows_per_part < 1:
            raise ValueError(f"rows_per_part must be >= 1, got {rows_per_part}")
        self.layout = layout
        self.video_id = check_video_id(video_id)
        self.segment_index = segment_index
        self.rows_per_part = rows_per_part
        self._buffer: list[MaskRecord] = []
        self._parts: list[PartInfo] = []

    def start(self) -> SegmentWriter:
        own = f"part-{self.segment_index:05d}-"
        for name in self.layout.part_names(self.video_id):
            if name.startswith(own):
                self.layout.remove(self.layout.part_uri(self.video_id, name))
        return self

    def add(self, records: Iterable[MaskRecord]) -> None:
        for record in records:
            if record.video_id != self.video_id:
                raise ValueError(
                    f"a record of {video_label(record.video_id)} reached the writer of "
                    f"{video_label(self.video_id)}"
                )
            self._buffer.append(record)
        while len(self._buffer) >= self.rows_per_part:
            self._flush(self.rows_per_part)

    def _flush(self, count: int) -> None:
        from surgray.io.exports import mask_table

        chunk, self._buffer = self._buffer[:count], self._buffer[count:]
        self._parts.append(self._put_part(mask_table(chunk)))

    def _put_part(self, table: Any) -> PartInfo:
        """Write the next part from an Arrow table; its digest is of the bytes written."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        name = part_name(self.segment_index, len(self._parts))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        payload = sink.getvalue().to_pybytes()
        self.layout.put_bytes(self.layout.part_uri(self.video_id, name), payload)
        return PartInfo(name, table.num_rows, hashlib.sha256(payload).hexdigest())

    def close(self) -> tuple[PartInfo, ...]:
        if self._buffer:
            self._flush(len(self._buffer))
        return tuple(self._parts)


@dataclass(frozen=True)
class Marker:
    video_id: str
    provenance: Provenance
    parts: tuple[PartInfo, ...]
    frames: int
    status_json: str | None = None  # the status record, to restore it if it goes missing

    def to_json(self) -> str:
        payload = {
            "format": MARKER_FORMAT,
            "video_id": self.video_id,
            "provenance": self.provenance.as_dict(),
            "parts": [p.as_dict() for p in self.parts],
            "frames": self.frames,
            "status": self.status_json,
        }
        return json.dumps(payload, sort_keys=True, indent=1)

    @classmethod
    def from_json(cls, text: bytes | str) -> Marker:
        data = json.loads(text)
        status = data.get("status")
        return cls(
            video_id=str(data["video_id"]),
            provenance=Provenance.from_dict(data["provenance"]),
            parts=tuple(PartInfo.from_dict(p) for p in data["parts"]),
            frames=int(data["frames"]),
            status_json=status if isinstance(status, str) else None,
        )


def read_marker(layout: OutputLayout, video_id: str) -> Marker | None:
    """The video's marker, or None when there is none or it cannot be parsed."""
    payload = layout.read_bytes(layout.marker_uri(video_id))
    if payload is None:
        return None
    try:
        return Marker.from_json(payload)
    except (ValueError, KeyError, TypeError):
        return None


def write_status(layout: OutputLayout, status: VideoStatus) -> None:
    layout.put_bytes(layout.status_uri(status.video_id), status.to_json().encode())


def finalize_video(layout: OutputLayout, status: VideoStatus) -> VideoStatus:
    """Write a video's status, then (if it succeeded) its marker, last.

    Parts of the video not listed by its segments (left by a failed attempt) are deleted
    first, so the marker describes exactly what is there.
    """
    write_status(layout, status)
    if status.state != "done":
        logger.info("%s: failed: %s", video_label(status.video_id), status.error)
        return status
    if status.provenance is None:
        raise ValueError(f"{video_label(status.video_id)}: a done video needs its provenance")
    listed = {p.name for p in status.parts}
    for name in layout.part_names(status.video_id):
        if name not in listed:
            layout.remove(layout.part_uri(status.video_id, name))
    marker = Marker(
        status.video_id, status.provenance, status.parts, status.frames, status.to_json()
    )
    layout.put_bytes(layout.marker_uri(status.video_id), marker.to_json().encode())
    logger.info(
        "%s: done, %d frames, %d objects, %.1f fps",
        video_label(status.video_id),
        status.frames,
        status.objects,
        status.fps,
    )
    return status


def write_summary(layout: OutputLayout, summary: JobSummary) -> None:
    layout.put_bytes(layout.summary_uri, json.dumps(summary.as_dict(), indent=1).encode())


def read_video_records(layout: OutputLayout, video_id: str) -> list[MaskRecord]:
    """A complete video's records, from the parts its marker lists (never a stray file)."""
    from surgray.io.exports import read_parquet

    marker = read_marker(layout, video_id)
    if marker is None:
        raise FileNotFoundError(f"{video_label(video_id)} has no completion marker")
    records: list[MaskRecord] = []
    for part in marker.parts:
        records.extend(read_parquet(layout.part_uri(video_id, part.name), storage=layout.storage))
    return records
