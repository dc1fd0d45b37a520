"""The per-run index of completed videos: what lets a rerun skip a complete video without
reading anything of it.

    <prefix>/_index/<run-id>-<seq>.parquet    one row per video completed by that run

A row holds the video's id, its provenance (as the marker records it) and the fingerprint of
its marker and of each part as the store listed them right after the video was finalized:
size plus ETag on object storage (the store's own content tag), or size plus mtime on a local
disk. The job appends a file every `flush_every` completed videos (and at its end), so a
driver that dies loses at most that many rows; those videos fall back to the per-video check.

A rerun lists `_index/`, reads those few files, lists `masks/` once (flat, one LIST per
thousand keys) and `_done/` once, and calls a video complete when an index row has the
provenance the job would record now and every fingerprint still matches the listing: a part
rewritten, added or removed since, or a marker replaced, changes a size or tag, and the video
is checked the slow way (`surgray.annotate.completion.check_complete`, which reads the parts and
compares their sha256) and redone if it is not intact. Videos no index row covers (outputs of
older runs) take that slow path too.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from surgray.annotate.logsafe import logger
from surgray.annotate.output_scan import Fingerprint, fingerprint
from surgray.annotate.outputs import OutputLayout
from surgray.annotate.provenance import Provenance

INDEX_FOLDER = "_index"
FLUSH_EVERY = 256  # videos per index file: a crash loses at most this many index rows
FLUSH_SECONDS = 60.0  # and a slow job still writes its index as it goes


def provenance_key(provenance: Provenance) -> str:
    return json.dumps(provenance.as_dict(), sort_keys=True)


@dataclass(frozen=True)
class IndexEntry:
    video_id: str
    provenance: str  # `provenance_key` of the video's provenance
    marker: Fingerprint
    parts: tuple[tuple[str, Fingerprint], ...]  # (part name, fingerprint), by name

    def matches(
        self, provenance: str, marker: Fingerprint | None, parts: Mapping[str, Fingerprint]
    ) -> bool:
        """Whether the store's listing still shows exactly what this entry recorded."""
        return (
            provenance == self.provenance
            and marker == self.marker
            and dict(self.parts) == dict(parts)
            and all(fp[1] for _, fp in self.parts)  # no tag: size alone proves too little
            and bool(self.marker[1])
        )


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("video_id", pa.string()),
            ("provenance", pa.string()),
            ("marker_size", pa.int64()),
            ("marker_tag", pa.string()),
            ("part_names", pa.list_(pa.string())),
            ("part_sizes", pa.list_(pa.int64())),
            ("part_tags", pa.list_(pa.string())),
        ]
    )


def entry_now(layout: OutputLayout, video_id: str, provenance: Provenance) -> IndexEntry | None:
    """The index entry of a video just finalized: one LIST of its parts, one HEAD of its
    marker. None when the marker is missing (nothing to index)."""
    marker = layout.entry(layout.marker_uri(video_id))
    if marker is None:
        return None
    folder = layout.masks_dir(video_id).removeprefix(layout.prefix + "/")
    parts = {
        name: fingerprint(info)
        for name, info in layout.entries_in(folder).items()
        if name.endswith(".parquet")
    }
    return IndexEntry(
        video_id, provenance_key(provenance), fingerprint(marker), tuple(sorted(parts.items()))
    )


class IndexWriter:
    """Collects the entries of videos this run completes and writes them in files of
    `flush_every` (see the module docstring). Failures to write are logged, never raised:
    a missing index only makes the next rerun slower."""

    def __init__(
        self,
        layout: OutputLayout,
        run_id: str | None = None,
        *,
        flush_every: int = FLUSH_EVERY,
        flush_seconds: float = FLUSH_SECONDS,
    ):
        self.layout = layout
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._entries: list[IndexEntry] = []
        self._files = 0
        self._last = time.monotonic()

    def add(self, video_id: str, provenance: Provenance) -> None:
        try:
            entry = entry_now(self.layout, video_id, provenance)
        except Exception as exc:  # the index is an optimisation; the marker is the truth
            logger.warning("index entry of a video not written: %s", type(exc).__name__)
            return
        if entry is not None:
            self.add_entry(entry)

    def add_entry(self, entry: IndexEntry) -> None:
        self._entries.append(entry)
        due = time.monotonic() - self._last >= self.flush_seconds
        if len(self._entries) >= self.flush_every or due:
            self.flush()

    def flush(self) -> str | None:
        """Write the entries collected so far as one file; returns its URI."""
        self._last = time.monotonic()
        if not self._entries:
            return None
        entries, self._entries = self._entries, []
        uri = f"{self.layout.prefix}/{INDEX_FOLDER}/{self.run_id}-{self._files:05d}.parquet"
        try:
            self.layout.put_bytes(uri, encode_entries(entries))
        except Exception as exc:
            logger.warning("index file %s not written: %s", uri, type(exc).__name__)
            return None
        self._files += 1
        return uri


def encode_entries(entries: Iterable[IndexEntry]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    entries = list(entries)
    table = pa.table(
        {
            "video_id": [e.video_id for e in entries],
            "provenance": [e.provenance for e in entries],
            "marker_size": [e.marker[0] for e in entries],
            "marker_tag": [e.marker[1] for e in entries],
            "part_names": [[n for n, _ in e.parts] for e in entries],
            "part_sizes": [[fp[0] for _, fp in e.parts] for e in entries],
            "part_tags": [[fp[1] for _, fp in e.parts] for e in entries],
        },
        schema=_schema(),
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def decode_entries(payload: bytes) -> list[IndexEntry]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(payload)).cast(_schema())
    columns = table.to_pydict()
    return [
        IndexEntry(
            video_id,
            provenance,
            (int(msize), str(mtag)),
            tuple((n, (int(s), str(t))) for n, s, t in zip(names, sizes, tags)),
        )
        for video_id, provenance, msize, mtag, names, sizes, tags in zip(
            columns["video_id"],
            columns["provenance"],
            columns["marker_size"],
            columns["marker_tag"],
            columns["part_names"],
            columns["part_sizes"],
            columns["part_tags"],
        )
    ]


def read_index(layout: OutputLayout, wanted: Iterable[str]) -> dict[str, list[IndexEntry]]:
    """Video id -> its entries in every index file under the prefix (oldest file first),
    for the videos in `wanted` only. A file that cannot be read is skipped, with a warning."""
    wanted = set(wanted)
    entries: dict[str, list[IndexEntry]] = {}
    for name in sorted(layout.entries_in(INDEX_FOLDER)):
        if not name.endswith(".parquet"):
            continue
        uri = f"{layout.prefix}/{INDEX_FOLDER}/{name}"
        try:
            payload = layout.read_bytes(uri)
            found = decode_entries(payload) if payload is not None else []
        except Exception as exc:
            logger.warning("index file %s ignored: %s", name, type(exc).__name__)
            continue
        for entry in found:
            if entry.video_id in wanted:
                entries.setdefault(entry.video_id, []).append(entry)
    return entries
