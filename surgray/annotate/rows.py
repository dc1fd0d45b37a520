"""The rows the annotation job writes and passes around: mask rows with provenance columns,
and the per-work-item result rows that travel from the actors to the driver.

Mask rows are `surgray.io.exports.mask_table` (one row per object per frame, COCO RLE) plus
the provenance of the video, repeated on every row so a Parquet file found on its own still
says what made it. Parquet dictionary-encodes repeated strings, so the columns cost a few
bytes per file, not per row.

`state` is the object's tracking phase on the frame (`ObjectResult.state`): "searching" /
"tracking" / "lost" for text objects, always "tracking" for prompted ones, so every part has
the same schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from surgray.annotate.logsafe import logger
from surgray.annotate.outputs import OutputLayout, PartInfo, SegmentWriter
from surgray.annotate.provenance import Provenance
from surgray.annotate.status import SegmentResult
from surgray.io.records import MaskRecord

PROVENANCE_COLUMNS = (
    "surgray_version",
    "config_hash",
    "checkpoint_sha256",
    "prompts_sha256",
    "prompts_json",
)
STATE_COLUMN = "state"
DEFAULT_STATE = "tracking"


def provenance_table(
    records: Sequence[MaskRecord], provenance: Provenance, states: Sequence[str] | None = None
) -> Any:
    """`mask_table(records)` with the `state` column (default "tracking") and one column per
    provenance field."""
    import pyarrow as pa

    from surgray.io.exports import mask_table

    table = mask_table(records)
    if states is None:
        states = [DEFAULT_STATE] * table.num_rows
    if len(states) != table.num_rows:
        raise ValueError(f"{len(states)} states for {table.num_rows} mask rows")
    table = table.append_column(
        STATE_COLUMN, pa.array(list(states), pa.string()).dictionary_encode()
    )
    values = provenance.as_dict()
    for name in PROVENANCE_COLUMNS:
        column = pa.DictionaryArray.from_arrays(
            pa.array([0] * table.num_rows, pa.int32()), pa.array([values[name]], pa.string())
        )
        table = table.append_column(name, column)
    return table


class ProvenanceSegmentWriter(SegmentWriter):
    """A `SegmentWriter` whose Parquet parts also carry the video's provenance columns."""

    def __init__(
        self,
        layout: OutputLayout,
        video_id: str,
        segment_index: int,
        provenance: Provenance,
        rows_per_part: int = 50_000,
    ):
        super().__init__(layout, video_id, segment_index, rows_per_part)
        self.provenance = provenance
        self.rows_written = 0
        self._states: list[str] = []  # parallel to the buffered records

    def add(self, records: Iterable[MaskRecord], states: Sequence[str] | None = None) -> None:
        records = list(records)
        if states is None:
            states = [DEFAULT_STATE] * len(records)
        if len(states) != len(records):
            raise ValueError(f"{len(states)} states for {len(records)} mask records")
        # Extend first: the base class may flush while adding.
        self._states.extend(states)
        super().add(records)

    def _flush(self, count: int) -> None:

        chunk, self._buffer = self._buffer[:count], self._buffer[count:]
        states, self._states = self._states[:count], self._states[count:]
        part = self._put_part(provenance_table(chunk, self.provenance, states))
        self._parts.append(part)
        self.rows_written += part.rows

    def discard(self) -> None:
        """Drop what is buffered and delete the parts written so far (a failed attempt)."""
        self._buffer.clear()
        self._states.clear()
        for part in self._parts:
            try:
                self.layout.remove(self.layout.part_uri(self.video_id, part.name))
            except Exception:  # best effort: the rerun's reset removes them anyway
                logger.debug("could not remove %s of %s", part.name, self.video_id)
        self._parts.clear()


def read_mask_rows(
    layout: OutputLayout, video_id: str, parts: Iterable[PartInfo], columns: list[str] | None = None
) -> list[dict[str, Any]]:
    """The rows of the given parts of one video, in part order (for exports and tests)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for part in parts:
        fs, path = layout.storage.filesystem(layout.part_uri(video_id, part.name))
        with fs.open(path, "rb") as handle:
            rows.extend(pq.read_table(handle, columns=columns).to_pylist())
    return rows


def records_of_parts(
    layout: OutputLayout, video_id: str, parts: Iterable[PartInfo]
) -> list[MaskRecord]:
    """MaskRecords of the given parts (the marker need not exist yet)."""
    return [
        MaskRecord(
            video_id=row["video_id"],
            frame_idx=row["frame_idx"],
            obj_id=row["obj_id"],
            label=row["label"],
            score=row["score"],
            rle={"size": list(row["rle_size"]), "counts": row["rle_counts"]},
        )
        for row in read_mask_rows(
            layout,
            video_id,
            parts,
            ["video_id", "frame_idx", "obj_id", "label", "score", "rle_counts", "rle_size"],
        )
    ]


def result_schema() -> Any:
    """Arrow schema of `SegmentResult.to_row()`, fixed so empty lists keep their type."""
    import pyarrow as pa

    return pa.schema(
        [
            ("video_id", pa.string()),
            ("segment_index", pa.int64()),
            ("num_segments", pa.int64()),
            ("frames", pa.int64()),
            ("frames_skipped", pa.int64()),
            ("object_ids", pa.list_(pa.int64())),
            ("wall_s", pa.float64()),
            ("error", pa.string()),
            ("part_names", pa.list_(pa.string())),
            ("part_rows", pa.list_(pa.int64())),
            ("part_sha256", pa.list_(pa.string())),
        ]
    )


def results_table(results: Iterable[SegmentResult]) -> Any:
    import pyarrow as pa

    return pa.Table.from_pylist([r.to_row() for r in results], schema=result_schema())
