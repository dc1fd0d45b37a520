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

Every run adds files, so a rerun that reads more than `COMPACT_OVER` of them writes their
entries as one file (the newest entry per video and provenance) and then removes the files it
read (`compact_index`, which says why that is safe with other jobs at work on the prefix).
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
COMPACT_OVER = 4  # a rerun that reads more index files than this writes them as one


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


def read_index_files(layout: OutputLayout) -> tuple[list[str], list[IndexEntry]]:
    """(the names of the index files read, their entries, oldest file first). A file that
    cannot be read (missing by now, half written, foreign) is skipped with a warning and is
    not among the names, so compaction never removes it."""
    names: list[str] = []
    entries: list[IndexEntry] = []
    for name in sorted(layout.entries_in(INDEX_FOLDER)):
        if not name.endswith(".parquet"):
            continue
        try:
            payload = layout.read_bytes(_index_uri(layout, name))
            if payload is None:
                continue
            found = decode_entries(payload)
        except Exception as exc:
            logger.warning("index file %s ignored: %s", name, type(exc).__name__)
            continue
        names.append(name)
        entries.extend(found)
    return names, entries


def read_index(
    layout: OutputLayout, wanted: Iterable[str], *, compact_over: int | None = None
) -> dict[str, list[IndexEntry]]:
    """Video id -> its entries in every index file under the prefix (oldest file first),
    for the videos in `wanted` only. A file that cannot be read is skipped, with a warning.

    More than `compact_over` files read (`COMPACT_OVER` by default) are compacted into one
    (`compact_index`). An entry may appear twice (a compaction interrupted before its
    removals, or two at once): callers accept a video when any of its entries matches."""
    wanted = set(wanted)
    names, found = read_index_files(layout)
    if len(names) > (COMPACT_OVER if compact_over is None else compact_over):
        compact_index(layout, names, found)
    entries: dict[str, list[IndexEntry]] = {}
    for entry in found:
        if entry.video_id in wanted:
            entries.setdefault(entry.video_id, []).append(entry)
    return entries


def _index_uri(layout: OutputLayout, name: str) -> str:
    return f"{layout.prefix}/{INDEX_FOLDER}/{name}"


def latest_entries(entries: Iterable[IndexEntry]) -> list[IndexEntry]:
    """One entry per (video, provenance), the last one (entries oldest first): an earlier
    entry of the same video made with the same provenance was superseded by its rerun."""
    latest: dict[tuple[str, str], IndexEntry] = {}
    for entry in entries:
        latest.pop((entry.video_id, entry.provenance), None)  # keep the newest's position
        latest[(entry.video_id, entry.provenance)] = entry
    return list(latest.values())


def compact_index(layout: OutputLayout, names: list[str], entries: list[IndexEntry]) -> str | None:
    """Write `entries` (read from the files `names`, oldest first) as one file, then remove
    those files, and only those. Returns the new file's URI, None when nothing changed.

    Safe without a lock: the new file is complete before anything is removed, so a reader
    at any moment finds every entry at least once (twice until the removals are done, or
    for good if the job dies between); a file another job writes meanwhile is not among
    `names` and stays; two compactions at once each write every entry they read and
    remove only files whose entries they wrote. The new file is named after the newest file
    it replaces (sorting just before it), so entries keep their order against files of
    runs that compaction did not read."""
    if len(names) < 2:
        return None
    last = names[-1].removesuffix(".parquet")
    uri = _index_uri(layout, f"{last}.c{uuid.uuid4().hex[:8]}.parquet")
    kept = latest_entries(entries)
    try:
        layout.put_bytes(uri, encode_entries(kept))
    except Exception as exc:  # nothing removed: the index reads as before
        logger.warning("index not compacted (%s not written): %s", uri, type(exc).__name__)
        return None
    removed = 0
    for name in names:
        try:
            removed += layout.remove(_index_uri(layout, name))
        except Exception as exc:  # a file left behind only repeats entries
            logger.warning("index file %s not removed: %s", name, type(exc).__name__)
    logger.info(
        "run index compacted: %d files (%d entries) -> 1 file of %d entries, %d removed",
        len(names),
        len(entries),
        len(kept),
        removed,
    )
    return uri
