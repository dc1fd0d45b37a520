"""Mask codecs: COCO RLE (through pycocotools), DAVIS palette PNGs and binary PNGs.

RLE dicts follow COCO: {"size": [height, width], "counts": str}, column-major runs starting
with background, compressed by pycocotools. Palette PNGs hold one object id per pixel.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from typing import Any, TypedDict

import numpy as np

from surgray.io.encode import write_png
from surgray.io.errors import MaskFormatError
from surgray.io.rle_check import MaskTooLarge, check_rle, rle_size
from surgray.io.storage import LOCAL, Storage, is_local, local_path

# A mask of more pixels is refused before decoding (16384 x 16384; 4K video is 8.3 M pixels).
MAX_DECODE_PIXELS = 1 << 28


class Rle(TypedDict):
    size: list[int]  # [height, width]
    counts: str


def _check_masks(masks: Any) -> np.ndarray:
    array = np.asarray(masks)
    if array.dtype != bool:
        raise MaskFormatError(
            f"masks must be bool (threshold first, e.g. logits > 0), got {array.dtype}"
        )
    if array.ndim != 3:
        raise MaskFormatError(f"masks must be [N, H, W], got shape {array.shape}")
    return array


def encode_rle(masks: np.ndarray) -> list[Rle]:
    """COCO RLEs of a [N, H, W] bool stack, encoded in one pycocotools call."""
    from pycocotools import mask as coco_mask

    array = _check_masks(masks)
    if array.shape[0] == 0:
        return []
    # pycocotools wants [H, W, N] uint8 in column-major order.
    fortran = np.asfortranarray(array.transpose(1, 2, 0).astype(np.uint8))
    return [
        Rle(size=[int(v) for v in rle["size"]], counts=rle["counts"].decode("ascii"))
        for rle in coco_mask.encode(fortran)
    ]


def _to_coco(rles: Sequence[Any]) -> list[dict[str, Any]]:
    """Validated pycocotools RLE objects (bytes counts); uncompressed counts are compressed."""
    from pycocotools import mask as coco_mask

    coco: list[dict[str, Any]] = []
    for position, rle in enumerate(rles):
        size = list(rle_size(rle, f"RLE {position}"))
        counts = rle["counts"]
        if isinstance(counts, (list, tuple)):
            check_rle(rle, where=f"RLE {position}")  # negative or short runs, before pycocotools
            coco.append(coco_mask.frPyObjects([{"size": size, "counts": list(counts)}], *size)[0])
        elif isinstance(counts, (str, bytes)):
            raw = counts.encode("ascii") if isinstance(counts, str) else counts
            coco.append({"size": size, "counts": raw})
        else:
            raise MaskFormatError(
                f"RLE {position} counts must be str, bytes or list, got {type(counts).__name__}"
            )
    return coco


# pycocotools' `area` (2.0.7-2.0.11) builds its result from a uint8 array holding the count,
# which numpy 2 refuses above 255 RLEs ("Python integer 360 out of bounds for uint8").
_AREA_CHUNK = 255


def _coco_area(coco: Sequence[dict[str, Any]]) -> np.ndarray:
    """pycocotools' `area` of any number of RLE objects, int64 [N]."""
    from pycocotools import mask as coco_mask

    if not coco:
        return np.zeros(0, np.int64)
    chunks = [
        coco_mask.area(list(coco[start : start + _AREA_CHUNK])).astype(np.int64)
        for start in range(0, len(coco), _AREA_CHUNK)
    ]
    return np.concatenate(chunks)


def decode_rle(
    rles: Sequence[Any],
    size: tuple[int, int] | None = None,
    *,
    max_side: int | None = None,
    max_pixels: int = MAX_DECODE_PIXELS,
) -> np.ndarray:
    """[N, H, W] bool masks; all RLEs must share one size (`size` is needed when N = 0).

    Every RLE is checked before anything is allocated (`rle_check`): each side at most
    `max_side`, height x width at most `max_pixels` per mask, runs covering exactly that area.
    """
    from pycocotools import mask as coco_mask

    for position, rle in enumerate(rles):
        (height, width), _ = check_rle(rle, max_side=max_side, where=f"RLE {position}")
        if height * width > max_pixels:
            raise MaskTooLarge(
                f"RLE {position} declares {width}x{height} = {height * width} pixels; at most "
                f"{max_pixels} per mask"
            )
    coco = _to_coco(rles)
    if not coco:
        if size is None:
            raise MaskFormatError("decode_rle of no RLEs needs size=(height, width)")
        return np.zeros((0, *size), dtype=bool)
    sizes = {tuple(rle["size"]) for rle in coco}
    if len(sizes) != 1:
        raise MaskFormatError(f"RLEs of one stack must share a size, got {sorted(sizes)}")
    if size is not None and tuple(size) not in sizes:
        raise MaskFormatError(f"RLE size {sizes.pop()} differs from the requested {tuple(size)}")
    try:
        with warnings.catch_warnings():
            # pycocotools 2.0.x trips numpy 2's copy= deprecation inside its own decode
            warnings.simplefilter("ignore", DeprecationWarning)
            decoded = coco_mask.decode(coco)
    except Exception as exc:  # pycocotools rejects runs that overflow the mask
        raise MaskFormatError(f"corrupt RLE counts: {exc}") from exc
    # Runs that stop short leave the rest of pycocotools' buffer uninitialised; any such byte
    # that is not background shows up as a value above 1 or as area the runs do not declare.
    declared = _coco_area(coco)
    if decoded.max(initial=0) > 1 or not np.array_equal(decoded.sum(axis=(0, 1)), declared):
        raise MaskFormatError("corrupt RLE counts: runs do not cover height x width pixels")
    return np.ascontiguousarray(decoded.transpose(2, 0, 1).astype(bool))


def rle_area(rles: Sequence[Any]) -> np.ndarray:
    """Foreground pixel count per RLE, int64 [N]."""
    return _coco_area(_to_coco(rles))


def rle_bbox(rles: Sequence[Any]) -> np.ndarray:
    """Tight boxes [N, 4] as (x, y, width, height) in pixels; empty masks give zeros."""
    from pycocotools import mask as coco_mask

    coco = _to_coco(rles)
    return coco_mask.toBbox(coco).astype(np.float64) if coco else np.zeros((0, 4))


def mask_bbox(masks: np.ndarray) -> np.ndarray:
    """Same boxes as `rle_bbox`, straight from a [N, H, W] bool stack."""
    array = _check_masks(masks)
    boxes = np.zeros((array.shape[0], 4))
    for n, mask in enumerate(array):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        if rows.size:
            boxes[n] = (cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1)
    return boxes


def davis_palette() -> np.ndarray:
    """The 256-colour palette of DAVIS/PASCAL VOC annotation PNGs, [256, 3] uint8.

    Colour k spreads the bits of k over the channels, most significant first: bit 0 goes to
    red bit 7, bit 1 to green bit 7, bit 2 to blue bit 7, bit 3 to red bit 6, and so on.
    """
    ids = np.arange(256)
    palette = np.zeros((256, 3), dtype=np.int64)
    for level in range(8):
        for channel in range(3):
            bit = (ids >> (3 * level + channel)) & 1
            palette[:, channel] |= bit << (7 - level)
    return palette.astype(np.uint8)


def _read_bytes(uri: str | os.PathLike[str], storage: Storage) -> bytes:
    text = os.fspath(uri)
    if is_local(text):
        path = local_path(text)
        if not path.is_file():
            raise MaskFormatError(f"{text}: file not found")
        return path.read_bytes()
    fs, remote = storage.filesystem(text)
    try:
        return fs.cat_file(remote)
    except FileNotFoundError as exc:
        raise MaskFormatError(f"{text}: file not found") from exc


def _open_image(uri: str | os.PathLike[str], storage: Storage) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(_read_bytes(uri, storage)))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise MaskFormatError(f"{os.fspath(uri)}: not a readable image: {exc}") from exc
    return image


def write_index_png(
    uri: str | os.PathLike[str],
    ids: np.ndarray,
    palette: np.ndarray | None = None,
    *,
    storage: Storage = LOCAL,
) -> None:
    """Write a [H, W] map of object ids (0 = background, at most 255) as a palette PNG."""
    array = np.asarray(ids)
    if array.ndim != 2:
        raise MaskFormatError(f"an id map must be [H, W], got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise MaskFormatError(f"an id map must hold integers, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise MaskFormatError(
            f"palette PNG ids must be in 0..255, got {array.min()}..{array.max()}"
        )
    colours = davis_palette() if palette is None else palette
    write_png(uri, array.astype(np.uint8), palette=colours, storage=storage)


def read_index_png(uri: str | os.PathLike[str], *, storage: Storage = LOCAL) -> np.ndarray:
    """Object ids [H, W] uint8 of a palette (or greyscale) PNG; the palette itself is ignored."""
    image = _open_image(uri, storage)
    if image.mode not in ("P", "L"):
        raise MaskFormatError(
            f"{os.fspath(uri)}: expected a palette or greyscale id PNG, got mode {image.mode}"
        )
    return np.array(image, dtype=np.uint8)


def write_binary_png(
    uri: str | os.PathLike[str],
    mask: np.ndarray,
    *,
    storage: Storage = LOCAL,
) -> None:
    """Write a [H, W] bool mask as a greyscale PNG with 0 and 255."""
    array = np.asarray(mask)
    if array.dtype != bool or array.ndim != 2:
        raise MaskFormatError(f"a binary mask must be [H, W] bool, got {array.dtype} {array.shape}")
    write_png(uri, array.astype(np.uint8) * 255, storage=storage)


def read_binary_png(
    uri: str | os.PathLike[str],
    *,
    threshold: int = 128,
    storage: Storage = LOCAL,
) -> np.ndarray:
    """[H, W] bool: grey value >= threshold; for palette PNGs, any non-zero index."""
    image = _open_image(uri, storage)
    if image.mode == "P":
        return np.array(image) > 0
    return np.array(image.convert("L")) >= threshold


def masks_to_ids(masks: np.ndarray, obj_ids: Sequence[int]) -> np.ndarray:
    """Flatten [N, H, W] masks into one id map; where masks overlap, the later object wins."""
    array = _check_masks(masks)
    if len(obj_ids) != array.shape[0]:
        raise MaskFormatError(f"{array.shape[0]} masks but {len(obj_ids)} object ids")
    if any(not 1 <= int(i) <= 255 for i in obj_ids):
        raise MaskFormatError(f"object ids must be in 1..255 for an id map, got {list(obj_ids)}")
    ids = np.zeros(array.shape[1:], dtype=np.uint8)
    for obj_id, mask in zip(obj_ids, array):
        ids[mask] = int(obj_id)
    return ids


def ids_to_masks(
    ids: np.ndarray, obj_ids: Sequence[int] | None = None
) -> tuple[list[int], np.ndarray]:
    """([object ids], [N, H, W] bool) of an id map; ids default to the non-zero values present."""
    array = np.asarray(ids)
    if array.ndim != 2:
        raise MaskFormatError(f"an id map must be [H, W], got shape {array.shape}")
    wanted = (
        sorted(int(v) for v in np.unique(array) if v != 0) if obj_ids is None else list(obj_ids)
    )
    masks = np.stack([array == v for v in wanted]) if wanted else np.zeros((0, *array.shape), bool)
    return wanted, masks
