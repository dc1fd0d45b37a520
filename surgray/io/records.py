"""`MaskRecord`: one object's mask on one frame, the unit every exporter consumes."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from surgray.io.errors import MaskFormatError
from surgray.io.masks import Rle, decode_rle, encode_rle, rle_area, rle_bbox


@dataclass(frozen=True)
class MaskRecord:
    """A tracked object's mask on one frame, stored as COCO RLE."""

    video_id: str
    frame_idx: int
    obj_id: int
    label: str
    score: float
    rle: Rle

    def __post_init__(self) -> None:
        if self.frame_idx < 0:
            raise MaskFormatError(f"frame_idx must be >= 0, got {self.frame_idx}")
        if not isinstance(self.rle, dict) or "size" not in self.rle or "counts" not in self.rle:
            raise MaskFormatError(
                f"rle must be a dict with 'size' and 'counts', got {self.rle!r:.80}"
            )

    @classmethod
    def from_masks(
        cls,
        video_id: str,
        frame_idx: int,
        obj_ids: Sequence[int],
        labels: Sequence[str],
        scores: Sequence[float],
        masks: np.ndarray,
    ) -> list[MaskRecord]:
        """Records of all objects of one frame; `masks` is [N, H, W] bool, RLE-encoded at once."""
        rles = encode_rle(masks)
        if not len(obj_ids) == len(labels) == len(scores) == len(rles):
            raise MaskFormatError(
                f"{len(rles)} masks but {len(obj_ids)} ids, {len(labels)} labels, {len(scores)} scores"
            )
        return [
            cls(video_id, int(frame_idx), int(obj_id), str(label), float(score), rle)
            for obj_id, label, score, rle in zip(obj_ids, labels, scores, rles)
        ]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        height, width = self.rle["size"]
        return int(height), int(width)

    def mask(self) -> np.ndarray:
        return decode_rle([self.rle])[0]

    @property
    def area(self) -> int:
        return int(rle_area([self.rle])[0])

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(x, y, width, height) in pixels"""
        x, y, w, h = rle_bbox([self.rle])[0].tolist()
        return x, y, w, h


def by_video(records: Iterable[MaskRecord]) -> dict[str, list[MaskRecord]]:
    """Records grouped by video, each group sorted by (frame_idx, obj_id)."""
    groups: dict[str, list[MaskRecord]] = defaultdict(list)
    for record in records:
        groups[record.video_id].append(record)
    return {
        video_id: sorted(group, key=lambda r: (r.frame_idx, r.obj_id))
        for video_id, group in groups.items()
    }


def by_frame(records: Iterable[MaskRecord]) -> dict[int, list[MaskRecord]]:
    """Records of one video grouped by frame index."""
    groups: dict[int, list[MaskRecord]] = defaultdict(list)
    for record in records:
        groups[record.frame_idx].append(record)
    return dict(groups)


def frame_size(records: Sequence[MaskRecord], what: str) -> tuple[int, int]:
    """The one (height, width) shared by `records`, or an error naming `what` is inconsistent."""
    sizes = {record.size for record in records}
    if len(sizes) != 1:
        raise MaskFormatError(f"{what}: masks of one video must share a size, got {sorted(sizes)}")
    return sizes.pop()
