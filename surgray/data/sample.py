"""The common shape every dataset reader yields: a `VideoSample` per video.

A sample holds names and URIs only; frames and masks are decoded when asked for (through the
small frozen source objects of `surgray.data.sources`), so a reader's memory does not grow with
the dataset and samples pickle cheaply (e.g. to Ray workers). Readers are `VideoDataset`s:
sequences of samples built on demand from a list of video ids.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np

from surgray.data.categories import ObjectKind
from surgray.data.expressions import ReferringExpression
from surgray.data.files import DatasetError, read_json
from surgray.data.sources import FrameSource, MaskSource
from surgray.io.storage import Storage


@dataclass(frozen=True)
class ObjectMeta:
    obj_id: int
    category: str | None  # canonical name (surgray.data.categories), None when not known
    kind: ObjectKind | None = None
    source_name: str | None = None  # the dataset's own spelling


@dataclass(frozen=True)
class FrameObjectAnnotation:
    """Ref-EndoVis per-frame, per-object meta."""

    action: int
    location: int
    unique: bool


@dataclass(frozen=True)
class LabeledFrame:
    index: int
    name: str
    image: np.ndarray  # [H, W, 3] uint8 RGB
    mask: np.ndarray | None  # [H, W] uint8 object ids, None for unannotated frames


@dataclass(frozen=True)
class VideoSample:
    dataset: str
    split: str
    video_id: str
    frame_names: tuple[str, ...]
    frames: FrameSource
    masks: MaskSource | None
    objects: tuple[ObjectMeta, ...]
    expressions: tuple[ReferringExpression, ...] = ()
    meta_uri: str | None = None  # Ref-EndoVis Meta/<video>.json with per-frame action/location
    storage: Storage = field(kw_only=True, repr=False)

    @property
    def num_frames(self) -> int:
        return len(self.frame_names)

    @property
    def annotated_frames(self) -> list[int]:
        if self.masks is None:
            return []
        return [i for i in range(self.num_frames) if self.masks.annotated(i)]

    def object(self, obj_id: int) -> ObjectMeta:
        for meta in self.objects:
            if meta.obj_id == obj_id:
                return meta
        raise KeyError(f"{self.video_id}: no object {obj_id}")

    def load_frame(self, index: int) -> np.ndarray:
        return self.frames.load(self._checked(index))

    def load_mask(self, index: int) -> np.ndarray:
        index = self._checked(index)
        if self.masks is None or not self.masks.annotated(index):
            raise DatasetError(
                f"{self.video_id}: frame {index} ({self.frame_names[index]}) has no annotation"
            )
        return self.masks.load(index)

    def load(self, index: int) -> LabeledFrame:
        """Frame and mask together; the mask must have the frame's size."""
        image = self.load_frame(index)
        return LabeledFrame(index, self.frame_names[index], image, self._checked_mask(index, image))

    def _checked_mask(self, index: int, image: np.ndarray) -> np.ndarray | None:
        if self.masks is None or not self.masks.annotated(index):
            return None
        mask = self.masks.load(index)
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"{self.masks.describe(index)}: mask is {mask.shape[1]}x{mask.shape[0]} but frame "
                f"{self.frames.describe(index)} is {image.shape[1]}x{image.shape[0]}"
            )
        return mask

    def iter_frames(self) -> Iterator[LabeledFrame]:
        """All frames in order, streamed (a video file is decoded once, not seeked per frame)."""
        for index, image in enumerate(self.frames.iter_images()):
            yield LabeledFrame(
                index, self.frame_names[index], image, self._checked_mask(index, image)
            )

    def validate(self) -> None:
        """Check from file headers that every annotated mask matches its frame's size."""
        known: tuple[int, int] | None = None
        for index in self.annotated_frames:
            assert self.masks is not None
            if known is None or not self.frames.uniform_size:
                known = self.frames.size(index)
            mask_size, frame_size = self.masks.size(index), known
            if mask_size != frame_size:
                raise DatasetError(
                    f"{self.masks.describe(index)}: mask is {mask_size[1]}x{mask_size[0]} but frame "
                    f"{self.frames.describe(index)} is {frame_size[1]}x{frame_size[0]}"
                )

    def load_frame_meta(self) -> dict[str, dict[int, FrameObjectAnnotation]]:
        """Ref-EndoVis per-frame meta: frame name -> object id -> (action, location, unique)."""
        if self.meta_uri is None:
            raise DatasetError(f"{self.video_id}: this dataset has no per-frame meta")
        data = read_json(self.meta_uri, "Meta file", storage=self.storage)
        try:
            return {
                name: {
                    int(obj): FrameObjectAnnotation(
                        int(v["action"]), int(v["location"]), bool(v["unique"])
                    )
                    for obj, v in entry.items()
                }
                for name, entry in data["frames"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DatasetError(f"{self.meta_uri}: malformed 'frames' entry: {exc!r}") from exc

    def _checked(self, index: int) -> int:
        if not 0 <= index < self.num_frames:
            raise IndexError(
                f"{self.video_id}: frame {index} out of range (0..{self.num_frames - 1})"
            )
        return index


class VideoDataset(ABC, Sequence[VideoSample]):
    """A split of a dataset: video ids listed up front, samples built when indexed."""

    dataset_name: str
    split: str

    def __init__(self, video_ids: list[str]) -> None:
        self._video_ids = list(video_ids)

    @property
    def video_ids(self) -> list[str]:
        return list(self._video_ids)

    def __len__(self) -> int:
        return len(self._video_ids)

    @overload
    def __getitem__(self, key: int | str) -> VideoSample: ...
    @overload
    def __getitem__(self, key: slice) -> list[VideoSample]: ...
    def __getitem__(self, key: int | str | slice) -> VideoSample | list[VideoSample]:
        if isinstance(key, slice):
            return [self.sample(v) for v in self._video_ids[key]]
        if isinstance(key, str):
            if key not in self._video_ids:
                raise KeyError(f"{self.dataset_name}/{self.split}: no video {key!r}")
            return self.sample(key)
        return self.sample(self._video_ids[key])

    def __iter__(self) -> Iterator[VideoSample]:
        for video_id in self._video_ids:
            yield self.sample(video_id)

    @abstractmethod
    def sample(self, video_id: str) -> VideoSample:
        """List one video's files and build its sample."""
