"""Exporters of tracking results: Parquet rows, DAVIS PNG folders, SA-V masklet JSON,
COCO-video (YouTube-VIS style) JSON, and (re-exported from overlay.py) overlay MP4 and
contact sheets.

Exports are built only from `MaskRecord`s and explicit arguments, so nothing from a source
container's metadata can leak into them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from surgray.io.errors import MaskFormatError
from surgray.io.masks import encode_rle, masks_to_ids, rle_area, rle_bbox, write_index_png
from surgray.io.overlay import write_contact_sheet, write_overlay_video
from surgray.io.records import MaskRecord, by_frame, by_video, frame_size
from surgray.io.storage import LOCAL, Storage

__all__ = [
    "MaskRecord",
    "mask_table",
    "read_parquet",
    "sav_masklets",
    "coco_video",
    "write_contact_sheet",
    "write_coco_video_json",
    "write_davis",
    "write_overlay_video",
    "write_parquet",
    "write_sav_json",
]


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("video_id", pa.string()),
            ("frame_idx", pa.int64()),
            ("obj_id", pa.int64()),
            ("label", pa.string()),
            ("score", pa.float32()),
            ("rle_counts", pa.string()),
            ("rle_size", pa.list_(pa.int32(), 2)),  # (height, width)
            ("bbox", pa.list_(pa.float32(), 4)),  # (x, y, width, height)
            ("area", pa.int64()),
        ]
    )


def mask_table(records: Sequence[MaskRecord]) -> Any:
    """A pyarrow Table of `records` (one row per object per frame), schema-checked."""
    import pyarrow as pa

    rles = [record.rle for record in records]
    areas = rle_area(rles)
    boxes = rle_bbox(rles)
    columns = {
        "video_id": [r.video_id for r in records],
        "frame_idx": [r.frame_idx for r in records],
        "obj_id": [r.obj_id for r in records],
        "label": [r.label for r in records],
        "score": [r.score for r in records],
        "rle_counts": [_counts_text(r) for r in records],
        "rle_size": [list(r.size) for r in records],
        "bbox": boxes.tolist(),
        "area": areas.tolist(),
    }
    return pa.Table.from_pydict(columns, schema=_schema())


def _counts_text(record: MaskRecord) -> str:
    counts = record.rle["counts"]
    if isinstance(counts, bytes):
        return counts.decode("ascii")
    if isinstance(counts, str):
        return counts
    # Uncompressed runs: store the compressed form so every row has the same encoding.
    return encode_rle(record.mask()[None])[0]["counts"]


def write_parquet(
    uri: str | os.PathLike[str],
    records: Sequence[MaskRecord],
    *,
    storage: Storage = LOCAL,
) -> int:
    """Write `records` as one Parquet file; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = mask_table(records)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes(os.fspath(uri), sink.getvalue().to_pybytes())
    return table.num_rows


def read_parquet(uri: str | os.PathLike[str], *, storage: Storage = LOCAL) -> list[MaskRecord]:
    """Records back from a file written by `write_parquet`."""
    import pyarrow.parquet as pq

    text = os.fspath(uri)
    fs, path = storage.filesystem(text)
    with fs.open(path, "rb") as handle:
        table = pq.read_table(handle)
    missing = set(_schema().names) - set(table.column_names)
    if missing:
        raise MaskFormatError(f"{text}: not a mask table, missing columns {sorted(missing)}")
    return [
        MaskRecord(
            video_id=row["video_id"],
            frame_idx=row["frame_idx"],
            obj_id=row["obj_id"],
            label=row["label"],
            score=row["score"],
            rle={"size": list(row["rle_size"]), "counts": row["rle_counts"]},
        )
        for row in table.to_pylist()
    ]


def write_davis(
    out_dir: str | os.PathLike[str],
    records: Iterable[MaskRecord],
    *,
    frame_counts: dict[str, int] | None = None,
    storage: Storage = LOCAL,
) -> dict[str, int]:
    """DAVIS layout: `out_dir/<video_id>/<frame:05d>.png`, palette PNGs of object ids.

    Object ids must be 1..255. Where masks overlap, the higher score wins. With
    `frame_counts`, frames without records are written as background, as DAVIS evaluation
    expects a PNG for every frame. Returns the number of PNGs written per video.
    """
    root = os.fspath(out_dir).rstrip("/")
    written: dict[str, int] = {}
    for video_id, group in by_video(records).items():
        height, width = frame_size(group, video_id)
        frames = by_frame(group)
        total = (frame_counts or {}).get(video_id)
        indexes = range(total) if total is not None else sorted(frames)
        for frame_idx in indexes:
            present = sorted(frames.get(frame_idx, []), key=lambda r: r.score)
            if present:
                masks = np.stack([r.mask() for r in present])
                ids = masks_to_ids(masks, [r.obj_id for r in present])
            else:
                ids = np.zeros((height, width), np.uint8)
            write_index_png(f"{root}/{video_id}/{frame_idx:05d}.png", ids, storage=storage)
        written[video_id] = len(indexes)
    return written


def _size_bucket(area: float) -> str:
    # SA-V's buckets on the mean visible area in pixels.
    if area < 32**2:
        return "small"
    return "medium" if area < 96**2 else "large"


def sav_masklets(
    records: Sequence[MaskRecord],
    *,
    fps: float,
    frame_count: int,
    masklet_type: str = "auto",
) -> dict[str, Any]:
    """One video's records as an SA-V `*_manual.json`-style dict.

    `masklet` is frame-major like SA-V's: one list per exported frame, each holding one RLE
    per masklet in `masklet_id` order (an empty mask where the object is absent).
    `masklet_frame_idx` (our addition) gives the source frame of each outer entry, since
    exports need not be at SA-V's fixed 4-frame step.
    """
    groups = by_video(records)
    if len(groups) != 1:
        raise MaskFormatError(f"SA-V JSON holds one video, got {sorted(groups)}")
    ((video_id, group),) = groups.items()
    height, width = frame_size(group, video_id)
    obj_ids = sorted({r.obj_id for r in group})
    column = {obj_id: n for n, obj_id in enumerate(obj_ids)}
    frames = by_frame(group)
    frame_indexes = sorted(frames)
    empty = encode_rle(np.zeros((1, height, width), bool))[0]
    masklet: list[list[dict[str, Any]]] = []
    for frame_idx in frame_indexes:
        row = [dict(empty) for _ in obj_ids]
        for record in frames[frame_idx]:
            row[column[record.obj_id]] = {"size": [height, width], "counts": _counts_text(record)}
        masklet.append(row)
    areas = {obj_id: [r.area for r in group if r.obj_id == obj_id] for obj_id in obj_ids}
    visible = {obj_id: [a for a in areas[obj_id] if a > 0] for obj_id in obj_ids}
    mean_area = [float(np.mean(visible[o])) if visible[o] else 0.0 for o in obj_ids]
    labels = {r.obj_id: r.label for r in group}
    return {
        "video_id": video_id,
        "video_duration": frame_count / fps,
        "video_frame_count": float(frame_count),
        "video_height": float(height),
        "video_width": float(width),
        "video_resolution": float(height * width),
        "masklet": masklet,
        "masklet_id": obj_ids,
        "masklet_frame_idx": frame_indexes,
        "masklet_label": [labels[o] for o in obj_ids],
        "masklet_size_rel": [a / (height * width) for a in mean_area],
        "masklet_size_abs": mean_area,
        "masklet_size_bucket": [_size_bucket(a) for a in mean_area],
        "masklet_first_appeared_frame": [
            min(r.frame_idx for r in group if r.obj_id == o and r.area > 0) if visible[o] else -1
            for o in obj_ids
        ],
        "masklet_frame_count": [len(areas[o]) for o in obj_ids],
        "masklet_type": [masklet_type] * len(obj_ids),
        "masklet_num": len(obj_ids),
    }


def write_sav_json(
    uri: str | os.PathLike[str],
    records: Sequence[MaskRecord],
    *,
    fps: float,
    frame_count: int,
    storage: Storage = LOCAL,
) -> None:
    payload = sav_masklets(records, fps=fps, frame_count=frame_count)
    storage.write_bytes(os.fspath(uri), json.dumps(payload).encode())


def coco_video(records: Iterable[MaskRecord], frame_counts: dict[str, int]) -> dict[str, Any]:
    """A YouTube-VIS-style COCO-video dict: videos, categories (from labels) and one
    annotation per (video, object) with a segmentation, area and bbox per frame (None where
    the object has no record)."""
    groups = by_video(records)
    unknown = set(groups) - set(frame_counts)
    if unknown:
        raise MaskFormatError(f"frame_counts lacks videos {sorted(unknown)}")
    labels = sorted({r.label for group in groups.values() for r in group})
    category = {label: n + 1 for n, label in enumerate(labels)}
    videos, annotations = [], []
    for video_number, video_id in enumerate(sorted(groups), start=1):
        group = groups[video_id]
        height, width = frame_size(group, video_id)
        length = frame_counts[video_id]
        videos.append(
            {
                "id": video_number,
                "name": video_id,
                "height": height,
                "width": width,
                "length": length,
            }
        )
        for obj_id in sorted({r.obj_id for r in group}):
            track = [r for r in group if r.obj_id == obj_id]
            if track[-1].frame_idx >= length:
                raise MaskFormatError(f"{video_id}: frame {track[-1].frame_idx} >= length {length}")
            segmentations: list[Any] = [None] * length
            areas: list[Any] = [None] * length
            boxes: list[Any] = [None] * length
            for record in track:
                segmentations[record.frame_idx] = {
                    "size": [height, width],
                    "counts": _counts_text(record),
                }
                areas[record.frame_idx] = record.area
                boxes[record.frame_idx] = list(record.bbox)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "video_id": video_number,
                    "obj_id": obj_id,
                    "category_id": category[track[0].label],
                    "score": float(np.mean([r.score for r in track])),
                    "iscrowd": 0,
                    "segmentations": segmentations,
                    "areas": areas,
                    "bboxes": boxes,
                }
            )
    categories = [{"id": n, "name": label} for label, n in category.items()]
    return {"videos": videos, "annotations": annotations, "categories": categories}


def write_coco_video_json(
    uri: str | os.PathLike[str],
    records: Iterable[MaskRecord],
    frame_counts: dict[str, int],
    *,
    storage: Storage = LOCAL,
) -> None:
    payload = coco_video(records, frame_counts)
    storage.write_bytes(os.fspath(uri), json.dumps(payload).encode())
