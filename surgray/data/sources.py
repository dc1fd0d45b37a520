"""Where a `VideoSample`'s pixels come from: small frozen objects that hold URIs and decode on
demand (image files, a video file, id PNGs, per-object PNGs, RGB class maps, RLE masklets).

Every mask source returns [H, W] uint8 object ids (0 = background). Errors name the file.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from surgray.data.files import DatasetError, image_size, read_grey, read_ids, read_json, read_rgb
from surgray.io.storage import Storage


@dataclass(frozen=True)
class CropBox:
    """Rows top:top+height, columns left:left+width (EndoVis17: 28, 320, 1024, 1280)."""

    top: int
    left: int
    height: int
    width: int

    def apply(self, array: np.ndarray, uri: str) -> np.ndarray:
        h, w = array.shape[:2]
        if self.top + self.height > h or self.left + self.width > w:
            raise DatasetError(
                f"{uri}: image is {w}x{h}, too small for the {self.width}x{self.height} crop at "
                f"row {self.top}, column {self.left} (raw EndoVis17 frames are 1920x1080)"
            )
        return array[self.top : self.top + self.height, self.left : self.left + self.width]


def _crop(array: np.ndarray, crop: CropBox | None, uri: str) -> np.ndarray:
    return array if crop is None else np.ascontiguousarray(crop.apply(array, uri))


def _cropped_size(size: tuple[int, int], crop: CropBox | None, uri: str) -> tuple[int, int]:
    if crop is None:
        return size
    crop.apply(np.empty((size[0], size[1], 0), np.uint8), uri)  # raises if it does not fit
    return crop.height, crop.width


class FrameSource(Protocol):
    uniform_size: bool  # True when every frame has one size (a video file)

    def load(self, index: int) -> np.ndarray: ...
    def iter_images(self) -> Iterator[np.ndarray]: ...
    def size(self, index: int) -> tuple[int, int]: ...
    def describe(self, index: int) -> str: ...


class MaskSource(Protocol):
    def annotated(self, index: int) -> bool: ...
    def load(self, index: int) -> np.ndarray: ...
    def size(self, index: int) -> tuple[int, int]: ...
    def describe(self, index: int) -> str: ...


@dataclass(frozen=True)
class ImageFrames:
    uris: tuple[str, ...]
    crop: CropBox | None = None
    storage: Storage = field(kw_only=True, repr=False)
    uniform_size: ClassVar[bool] = False

    def load(self, index: int) -> np.ndarray:
        return _crop(read_rgb(self.uris[index], storage=self.storage), self.crop, self.uris[index])

    def iter_images(self) -> Iterator[np.ndarray]:
        for index in range(len(self.uris)):
            yield self.load(index)

    def size(self, index: int) -> tuple[int, int]:
        return _cropped_size(
            image_size(self.uris[index], storage=self.storage), self.crop, self.uris[index]
        )

    def describe(self, index: int) -> str:
        return self.uris[index]


@dataclass(frozen=True)
class VideoFileFrames:
    """Frames `frame_indices[i]` of a video file, decoded on demand."""

    uri: str
    frame_indices: tuple[int, ...]
    storage: Storage = field(kw_only=True, repr=False)
    uniform_size: ClassVar[bool] = True

    def load(self, index: int) -> np.ndarray:
        from surgray.io.video import VideoReader

        wanted = self.frame_indices[index]
        with VideoReader(
            self.uri,
            storage=self.storage,
            start_frame=wanted,
            end_frame=wanted + 1,
            prefetch=1,
        ) as reader:
            for frame in reader:
                return frame.image
        raise DatasetError(f"{self.uri}: video has no frame {wanted}")

    def iter_images(self) -> Iterator[np.ndarray]:
        """One decode pass over the file instead of a seek per frame."""
        from surgray.io.video import VideoReader

        if not self.frame_indices:
            return
        wanted = iter(self.frame_indices)
        target = next(wanted)
        first, last = min(self.frame_indices), max(self.frame_indices)
        with VideoReader(
            self.uri, storage=self.storage, start_frame=first, end_frame=last + 1
        ) as reader:
            for frame in reader:
                while frame.index == target:
                    yield frame.image
                    target = next(wanted, None)
                    if target is None:
                        return
        raise DatasetError(f"{self.uri}: video ended before frame {target}")

    def size(self, index: int) -> tuple[int, int]:
        from surgray.io.video import probe

        info = probe(self.uri, storage=self.storage)
        return info.height, info.width

    def describe(self, index: int) -> str:
        return f"{self.uri} frame {self.frame_indices[index]}"


@dataclass(frozen=True)
class IdMaskFiles:
    """One palette/greyscale PNG per annotated frame, pixel value = object id."""

    uris: tuple[str | None, ...]
    crop: CropBox | None = None
    storage: Storage = field(kw_only=True, repr=False)

    def annotated(self, index: int) -> bool:
        return self.uris[index] is not None

    def load(self, index: int) -> np.ndarray:
        uri = self._uri(index)
        return _crop(read_ids(uri, storage=self.storage), self.crop, uri)

    def size(self, index: int) -> tuple[int, int]:
        uri = self._uri(index)
        return _cropped_size(image_size(uri, storage=self.storage), self.crop, uri)

    def describe(self, index: int) -> str:
        return self.uris[index] or f"(no annotation for frame {index})"

    def _uri(self, index: int) -> str:
        uri = self.uris[index]
        if uri is None:
            raise DatasetError(f"frame {index} has no annotation")
        return uri


@dataclass(frozen=True)
class PerObjectMaskFiles:
    """One binary (any non-zero value) PNG per object and annotated frame, e.g. the SA-V
    validation layout or the EndoVis17 ground-truth folders. Where masks overlap, the object
    listed later wins."""

    files: tuple[tuple[tuple[int, str], ...] | None, ...]  # per frame: ((obj_id, uri), ...)
    crop: CropBox | None = None
    storage: Storage = field(kw_only=True, repr=False)

    def annotated(self, index: int) -> bool:
        return self.files[index] is not None

    def load(self, index: int) -> np.ndarray:
        ids: np.ndarray | None = None
        for obj_id, uri in self._files(index):
            mask = _crop(read_grey(uri, storage=self.storage), self.crop, uri) > 0
            if ids is None:
                ids = np.zeros(mask.shape, np.uint8)
            elif mask.shape != ids.shape:
                first = self._files(index)[0][1]
                raise DatasetError(
                    f"{uri}: mask is {mask.shape[1]}x{mask.shape[0]} but {first} is {ids.shape[1]}x{ids.shape[0]}"
                )
            ids[mask] = obj_id
        assert ids is not None
        return ids

    def size(self, index: int) -> tuple[int, int]:
        uri = self._files(index)[0][1]
        return _cropped_size(image_size(uri, storage=self.storage), self.crop, uri)

    def describe(self, index: int) -> str:
        files = self.files[index]
        return ", ".join(uri for _, uri in files) if files else f"(no annotation for frame {index})"

    def _files(self, index: int) -> tuple[tuple[int, str], ...]:
        files = self.files[index]
        if not files:
            raise DatasetError(f"frame {index} has no annotation")
        return files


@dataclass(frozen=True)
class ColorClassMaskFiles:
    """RGB-coded class maps (EndoVis18 labels/): each colour maps to an object id (0 = none)."""

    uris: tuple[str | None, ...]
    colors: tuple[tuple[tuple[int, int, int], int], ...]  # ((r, g, b), obj_id)
    storage: Storage = field(kw_only=True, repr=False)

    def annotated(self, index: int) -> bool:
        return self.uris[index] is not None

    def load(self, index: int) -> np.ndarray:
        uri = self.uris[index]
        if uri is None:
            raise DatasetError(f"frame {index} has no annotation")
        rgb = read_rgb(uri, storage=self.storage).astype(np.uint32)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        found, inverse = np.unique(codes, return_inverse=True)
        table = {(r << 16) | (g << 8) | b: obj_id for (r, g, b), obj_id in self.colors}
        unknown = [int(c) for c in found if int(c) not in table]
        if unknown:
            shown = ", ".join(f"({c >> 16}, {(c >> 8) & 255}, {c & 255})" for c in unknown[:5])
            raise DatasetError(f"{uri}: label colours not in the class table: {shown}")
        return np.array([table[int(c)] for c in found], np.uint8)[inverse.reshape(codes.shape)]

    def size(self, index: int) -> tuple[int, int]:
        uri = self.uris[index]
        if uri is None:
            raise DatasetError(f"frame {index} has no annotation")
        return image_size(uri, storage=self.storage)

    def describe(self, index: int) -> str:
        return self.uris[index] or f"(no annotation for frame {index})"


_JSON_CACHE: OrderedDict[str, Any] = OrderedDict()
_JSON_CACHE_SIZE = 2
_JSON_LOCK = threading.Lock()


def _masklet_json(uri: str, storage: Storage) -> Any:
    """Parsed masklet JSON; only the last couple stay parsed, so memory does not grow."""
    with _JSON_LOCK:
        if uri in _JSON_CACHE:
            _JSON_CACHE.move_to_end(uri)
            return _JSON_CACHE[uri]
    data = read_json(uri, "masklet JSON", storage=storage)
    with _JSON_LOCK:
        _JSON_CACHE[uri] = data
        while len(_JSON_CACHE) > _JSON_CACHE_SIZE:
            _JSON_CACHE.popitem(last=False)
    return data


@dataclass(frozen=True)
class RleMasklets:
    """SA-V-style masklets: JSON `masklet[k][j]` is the COCO RLE of object `obj_ids[j]` at
    masklet index k; `masklet_index[frame]` is None for frames without annotation."""

    uri: str
    masklet_index: tuple[int | None, ...]
    obj_ids: tuple[int, ...]
    storage: Storage = field(kw_only=True, repr=False)

    def annotated(self, index: int) -> bool:
        return self.masklet_index[index] is not None

    def _rles(self, index: int) -> list[Any]:
        k = self.masklet_index[index]
        if k is None:
            raise DatasetError(f"frame {index} has no annotation")
        data = _masklet_json(self.uri, storage=self.storage)
        rles = data["masklet"][k]
        if len(rles) != len(self.obj_ids):
            raise DatasetError(
                f"{self.uri}: masklet[{k}] has {len(rles)} RLEs for {len(self.obj_ids)} masklet ids"
            )
        return rles

    def load(self, index: int) -> np.ndarray:
        from surgray.io.errors import MaskFormatError
        from surgray.io.masks import decode_rle

        try:
            masks = decode_rle(self._rles(index))
        except MaskFormatError as exc:
            raise DatasetError(f"{self.describe(index)}: {exc}") from exc
        ids = np.zeros(masks.shape[1:], np.uint8)
        for obj_id, mask in zip(self.obj_ids, masks):
            ids[mask] = obj_id
        return ids

    def size(self, index: int) -> tuple[int, int]:
        rles = self._rles(index)
        if not rles:
            raise DatasetError(f"{self.describe(index)}: no RLEs to take a size from")
        height, width = rles[0]["size"]
        return int(height), int(width)

    def describe(self, index: int) -> str:
        return f"{self.uri} masklet[{self.masklet_index[index]}] (frame {index})"
