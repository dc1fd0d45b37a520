"""DAVIS / SA-V style folders: JPEGImages/<video>/<frame>.jpg|png plus Annotations/<video>/.

Annotations come in two shapes, told apart by what the video's annotation folder holds:

* palette (or greyscale) PNGs, one per frame, pixel value = object id (DAVIS, Ref-EndoVis,
  VOS-EndoVis, our synthetic writer);
* one sub-folder per object id holding binary PNGs (SA-V val/test `Annotations_6fps/<video>/
  000/00000.png`); object ids are the folder numbers (SA-V counts from 0, so ids there are
  shifted by +1 to keep 0 for background).

An optional `Meta/<video>.json` next to JPEGImages (Ref-EndoVis format, also written by our
synthetic writer) supplies object categories. Without it, object ids come from the sub-folder
names, or from the first annotated frame (DAVIS semi-supervised convention).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from surgray.data.categories import category_kind, try_canonical_category
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
from surgray.data.sources import IdMaskFiles, ImageFrames, PerObjectMaskFiles
from surgray.io.storage import LOCAL, Storage


def objects_from_meta(meta: Any, uri: str) -> tuple[ObjectMeta, ...]:
    """ObjectMeta per entry of a Ref-EndoVis Meta file's info.category."""
    try:
        categories = meta["info"]["category"]
        items = sorted((int(k), str(v)) for k, v in categories.items())
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"{uri}: expected info.category {{object id: name}}: {exc!r}") from exc
    objects = []
    for obj_id, name in items:
        canonical = try_canonical_category(name)
        kind = category_kind(canonical) if canonical else None
        objects.append(ObjectMeta(obj_id, canonical, kind, name))
    return tuple(objects)


class DavisDataset(VideoDataset):
    """Reader for <root>[/<split>]/{JPEGImages,Annotations}/<video>/; see the module docstring.

    Every frame must have an annotation unless `allow_sparse_annotations` (SA-V annotates every
    4th frame); an annotation without a frame is always an error.
    """

    def __init__(
        self,
        root: str,
        split: str | None = None,
        *,
        images_dir: str = "JPEGImages",
        annotations_dir: str = "Annotations",
        allow_sparse_annotations: bool = False,
        dataset_name: str = "davis",
        storage: Storage = LOCAL,
    ) -> None:
        self.dataset_name = dataset_name
        self.split = split or ""
        self.storage = storage
        self.allow_sparse_annotations = allow_sparse_annotations
        self.base = join_uri(str(root), split) if split else str(root)
        if not exists(self.base, "directory", storage=storage):
            raise DatasetError(f"{self.base}: {'split ' if split else ''}folder not found")
        self.images_root = join_uri(self.base, images_dir)
        self.annotations_root = join_uri(self.base, annotations_dir)
        folders = list_dir(self.images_root, "directory", what="frames folder", storage=storage)
        if not folders:
            raise DatasetError(f"{self.images_root}: no video folders (empty split)")
        if not exists(self.annotations_root, "directory", storage=storage):
            raise DatasetError(f"{self.annotations_root}: annotations folder not found")
        super().__init__([basename(f) for f in folders])

    def meta_path(self, video_id: str) -> str:
        return join_uri(self.base, "Meta", f"{video_id}.json")

    def sample(self, video_id: str) -> VideoSample:
        frame_dir = join_uri(self.images_root, video_id)
        frame_uris = image_files(frame_dir, storage=self.storage)
        if not frame_uris:
            raise DatasetError(f"{frame_dir}: no JPEG/PNG frames")
        names = tuple(stem(u) for u in frame_uris)
        masks, folder_ids = self._masks(video_id, names, frame_uris)
        meta_uri = self.meta_path(video_id)
        if exists(meta_uri, "file", storage=self.storage):
            objects = objects_from_meta(
                read_json(meta_uri, "Meta file", storage=self.storage), meta_uri
            )
        else:
            meta_uri = None
            objects = (
                tuple(ObjectMeta(i, None) for i in folder_ids)
                if folder_ids is not None
                else self._first_frame_objects(masks)
            )
        return VideoSample(
            dataset=self.dataset_name,
            split=self.split,
            video_id=video_id,
            frame_names=names,
            frames=ImageFrames(tuple(frame_uris), storage=self.storage),
            masks=masks,
            objects=objects,
            meta_uri=meta_uri,
            storage=self.storage,
        )

    def _masks(
        self, video_id: str, names: tuple[str, ...], frame_uris: list[str]
    ) -> tuple[IdMaskFiles | PerObjectMaskFiles, list[int] | None]:
        folder = join_uri(self.annotations_root, video_id)
        what = f"annotation folder of video {video_id!r}"
        files = list_dir(folder, "file", what=what, storage=self.storage)
        pngs = [e for e in files if e.lower().endswith(".png")]
        subfolders = [] if pngs else list_dir(folder, "directory", what=what, storage=self.storage)
        index = {name: i for i, name in enumerate(names)}
        if pngs or not subfolders:
            by_frame: list[str | None] = [None] * len(names)
            for uri in pngs:
                by_frame[self._frame_of(uri, index, folder)] = uri
            self._check_coverage(by_frame, folder, names, frame_uris)
            return IdMaskFiles(tuple(by_frame), storage=self.storage), None
        # One folder per object (SA-V): ids are the folder numbers, shifted if they count from 0.
        try:
            numbers = [int(basename(f)) for f in subfolders]
        except ValueError:
            raise DatasetError(
                f"{folder}: object sub-folders must be named by number, got {[basename(f) for f in subfolders]}"
            ) from None
        shift = 1 if 0 in numbers else 0
        per_frame: list[list[tuple[int, str]]] = [[] for _ in names]
        for number, sub in zip(numbers, subfolders):
            for uri in list_dir(sub, "file", storage=self.storage):
                if uri.lower().endswith(".png"):
                    per_frame[self._frame_of(uri, index, sub)].append((number + shift, uri))
        by_object = tuple(tuple(f) if f else None for f in per_frame)
        self._check_coverage(by_object, folder, names, frame_uris)
        return PerObjectMaskFiles(by_object, storage=self.storage), [n + shift for n in numbers]

    @staticmethod
    def _frame_of(uri: str, index: dict[str, int], folder: str) -> int:
        name = stem(uri)
        if name not in index:
            raise DatasetError(
                f"{uri}: annotation has no matching frame {name!r} in the video's frames folder"
            )
        return index[name]

    def _check_coverage(
        self, per_frame: Any, folder: str, names: tuple[str, ...], frame_uris: list[str]
    ) -> None:
        missing = [i for i, item in enumerate(per_frame) if item is None]
        if len(missing) == len(names):
            raise DatasetError(f"{folder}: no annotation PNGs for any of the {len(names)} frames")
        if missing and not self.allow_sparse_annotations:
            first = missing[0]
            raise DatasetError(
                f"{join_uri(folder, names[first] + '.png')}: missing annotation for frame "
                f"{frame_uris[first]} ({len(missing)} of {len(names)} frames have none; pass "
                "allow_sparse_annotations=True for sparsely annotated sets such as SA-V)"
            )

    @staticmethod
    def _first_frame_objects(masks: IdMaskFiles | PerObjectMaskFiles) -> tuple[ObjectMeta, ...]:
        count = len(masks.uris) if isinstance(masks, IdMaskFiles) else len(masks.files)
        first = next(i for i in range(count) if masks.annotated(i))
        ids = np.unique(masks.load(first))
        return tuple(ObjectMeta(int(i), None) for i in ids if i != 0)
