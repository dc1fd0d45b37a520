"""SA-SV masklets (SAM2S benchmark) and SA-V JSON annotations.

The SA-SV release format is not published (SAM2S, arXiv 2511.16618, describes the data only). We assume it
follows the SAM2 tooling it was built with, and accept either:

1. the DAVIS/SA-V folder layout, <root>[/<split>]/JPEGImages/<video>/ with Annotations/<video>/
   holding palette PNGs or per-object binary PNG folders (read by `DavisDataset`, sparse
   annotation allowed since SA-V-style sets annotate every 4th frame);
2. SA-V training JSON: <video>.mp4 next to <video>_manual.json, whose `masklet[k][j]` is the COCO
   RLE of masklet `masklet_id[j]` at video frame k * annotation_stride (SA-V: 24 fps video,
   6 fps annotation, stride 4). Frames may instead come from a folder of extracted JPEGs
   (`frames_dir`, e.g. JPEGImages_24fps/<video>/00000.jpg).

SA-V counts masklet ids from 0; since 0 is background in an id map, ids are shifted by +1 when
any id is 0. SA-V has no categories; a `masklet_category` list (written by our synthetic
writer, and what we expect SA-SV to add with its standardised class names) is mapped to
canonical categories when present. Where masklets overlap, the later one wins the pixel.
"""

from __future__ import annotations

from typing import Any

from surgray.data.categories import category_kind, try_canonical_category
from surgray.data.davis import DavisDataset
from surgray.data.files import (
    DatasetError,
    basename,
    exists,
    image_files,
    join_uri,
    list_dir,
    read_json,
    stem,
)
from surgray.data.sample import ObjectMeta, VideoDataset, VideoSample
from surgray.data.sources import ImageFrames, RleMasklets, VideoFileFrames
from surgray.io.storage import LOCAL, Storage

MANUAL_SUFFIX = "_manual.json"
SAV_ANNOTATION_STRIDE = 4


def masklet_objects(data: Any, uri: str) -> tuple[ObjectMeta, ...]:
    try:
        raw_ids = [int(i) for i in data["masklet_id"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{uri}: expected a 'masklet_id' list of integers: {exc!r}") from exc
    shift = 1 if 0 in raw_ids else 0
    names = data.get("masklet_category") or [None] * len(raw_ids)
    if len(names) != len(raw_ids):
        raise DatasetError(f"{uri}: {len(names)} masklet categories for {len(raw_ids)} masklet ids")
    objects = []
    for raw, name in zip(raw_ids, names):
        category = try_canonical_category(name) if name else None
        objects.append(
            ObjectMeta(raw + shift, category, category_kind(category) if category else None, name)
        )
    return tuple(objects)


class SavJsonDataset(VideoDataset):
    """Videos with SA-V `<video>_manual.json` masklets under <root>[/<split>]; see the module
    docstring. Only annotated frames (every `annotation_stride`-th) have masks."""

    def __init__(
        self,
        root: str,
        split: str | None = None,
        *,
        frames_dir: str | None = None,
        annotation_stride: int = SAV_ANNOTATION_STRIDE,
        dataset_name: str = "sa-v",
        storage: Storage = LOCAL,
    ) -> None:
        if annotation_stride < 1:
            raise ValueError(f"annotation_stride must be >= 1, got {annotation_stride}")
        self.dataset_name, self.split = dataset_name, split or ""
        self.storage = storage
        self.annotation_stride = annotation_stride
        self.base = join_uri(str(root), split) if split else str(root)
        self.frames_dir = join_uri(self.base, frames_dir) if frames_dir else None
        jsons = [
            u
            for u in list_dir(self.base, "file", what="split folder", storage=storage)
            if u.endswith(MANUAL_SUFFIX)
        ]
        if not jsons:
            raise DatasetError(f"{self.base}: no *{MANUAL_SUFFIX} annotation files (empty split)")
        super().__init__([basename(u)[: -len(MANUAL_SUFFIX)] for u in jsons])

    def sample(self, video_id: str) -> VideoSample:
        json_uri = join_uri(self.base, video_id + MANUAL_SUFFIX)
        data = read_json(json_uri, "masklet JSON", storage=self.storage)
        objects = masklet_objects(data, json_uri)
        masklets = data.get("masklet")
        if not isinstance(masklets, list):
            raise DatasetError(
                f"{json_uri}: expected a 'masklet' list (one entry per annotated frame)"
            )
        if self.frames_dir is not None:
            frame_uris = image_files(join_uri(self.frames_dir, video_id), storage=self.storage)
            if not frame_uris:
                raise DatasetError(f"{join_uri(self.frames_dir, video_id)}: no JPEG/PNG frames")
            frames: Any = ImageFrames(tuple(frame_uris), storage=self.storage)
            names = tuple(stem(u) for u in frame_uris)
        else:
            video_uri = join_uri(self.base, f"{video_id}.mp4")
            if not exists(video_uri, "file", storage=self.storage):
                raise DatasetError(
                    f"{video_uri}: video not found for {json_uri} (or pass frames_dir)"
                )
            count = self._frame_count(data, json_uri, video_uri)
            frames = VideoFileFrames(video_uri, tuple(range(count)), storage=self.storage)
            names = tuple(f"{i:05d}" for i in range(count))
        last = (len(masklets) - 1) * self.annotation_stride
        if last >= len(names):
            raise DatasetError(
                f"{json_uri}: {len(masklets)} annotated frames at stride {self.annotation_stride} "
                f"reach frame {last}, but the video has {len(names)} frames"
            )
        index = [None] * len(names)
        for k in range(len(masklets)):
            index[k * self.annotation_stride] = k
        return VideoSample(
            dataset=self.dataset_name,
            split=self.split,
            video_id=video_id,
            frame_names=names,
            frames=frames,
            masks=RleMasklets(
                json_uri, tuple(index), tuple(o.obj_id for o in objects), storage=self.storage
            ),
            objects=objects,
            storage=self.storage,
        )

    def _frame_count(self, data: Any, json_uri: str, video_uri: str) -> int:
        count = data.get("video_frame_count")
        if count is None:
            from surgray.io.video import probe

            return probe(video_uri, storage=self.storage, count_exact=True).frame_count
        return int(float(count))


def open_sasv(
    root: str, split: str | None = None, *, storage: Storage = LOCAL, **kwargs: Any
) -> VideoDataset:
    """SA-SV split in whichever assumed layout it is stored (see the module docstring)."""
    base = join_uri(str(root), split) if split else str(root)
    if not exists(base, "directory", storage=storage):
        raise DatasetError(f"{base}: {'split ' if split else ''}folder not found")
    if exists(join_uri(base, "JPEGImages"), "directory", storage=storage):
        return DavisDataset(
            root,
            split,
            allow_sparse_annotations=True,
            dataset_name="sa-sv",
            storage=storage,
            **kwargs,
        )
    if any(u.endswith(MANUAL_SUFFIX) for u in list_dir(base, "file", storage=storage)):
        return SavJsonDataset(root, split, dataset_name="sa-sv", storage=storage, **kwargs)
    raise DatasetError(
        f"{base}: neither JPEGImages/ (DAVIS layout) nor *{MANUAL_SUFFIX} files (SA-V JSON) found"
    )
