"""Checks of a COCO RLE that run before anything of its declared size is allocated.

A compressed RLE of a few bytes can declare a 65535 x 65535 mask; decoding it allocates 4 GiB.
So a mask from outside (an HTTP prompt, a manifest row) is checked here first: the declared
size against a limit, and the runs themselves, parsed from the counts string without
building the mask, must be non-negative and cover exactly height x width pixels. Only then
is it worth decoding. The foreground area falls out of the runs for free (the odd runs).

The counts string is pycocotools' format: each run is a little-endian sequence of 5-bit
groups stored as characters from '0' (48) up, 0x20 marking "more groups follow" and 0x10 in
the last group the sign; runs after the third are stored as the difference to the run two
before. The parse is vectorised, so a 4 MB string costs tens of milliseconds, not seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from surgray.io.errors import MaskFormatError

# 7 groups of 5 bits hold 35 bits: more than any run of a mask up to 2^17 x 2^17 pixels.
_MAX_GROUPS = 7


def rle_size(rle: Any, where: str = "RLE") -> tuple[int, int]:
    """(height, width) of an RLE dict, or MaskFormatError naming what is wrong."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise MaskFormatError(f"{where} must be a dict with 'size' and 'counts', got {rle!r:.80}")
    size = rle["size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
        or min(size) < 0
    ):
        raise MaskFormatError(
            f"{where} size must be [height, width] of integers >= 0, got {size!r:.60}"
        )
    return int(size[0]), int(size[1])


def compressed_runs(counts: str | bytes) -> np.ndarray:
    """The runs (int64) of a compressed counts string, or MaskFormatError if it is malformed."""
    raw = counts.encode("ascii", errors="replace") if isinstance(counts, str) else bytes(counts)
    codes = np.frombuffer(raw, dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    if codes.min() < 0 or codes.max() > 63:
        raise MaskFormatError("corrupt RLE counts: characters outside the RLE alphabet ('0'..'o')")
    more = (codes & 0x20) != 0
    if more[-1]:
        raise MaskFormatError("corrupt RLE counts: the string ends in the middle of a run")
    ends = np.flatnonzero(~more)
    starts = np.concatenate(([0], ends[:-1] + 1))
    groups = ends - starts + 1
    if groups.max() > _MAX_GROUPS:
        raise MaskFormatError("corrupt RLE counts: a run is longer than any mask could hold")
    owner = np.repeat(np.arange(ends.size), groups)
    shift = 5 * (np.arange(codes.size) - starts[owner])
    # Values stay below 2^35, exact in float64 weights.
    values = np.bincount(owner, weights=((codes & 0x1F) << shift).astype(np.float64))
    values = values.astype(np.int64)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * groups[negative])
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # run m (m > 2) is stored as run m - run (m - 2)
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def rle_runs(rle: Any, where: str = "RLE") -> np.ndarray:
    """The runs of an RLE dict (compressed string or bytes, or an uncompressed list)."""
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        return compressed_runs(counts)
    if isinstance(counts, (list, tuple)):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in counts):
            raise MaskFormatError(f"{where} counts must be integers")
        try:
            return np.asarray(counts, dtype=np.int64).reshape(-1)
        except OverflowError:
            raise MaskFormatError(f"{where} counts hold a run too large for any mask") from None
    raise MaskFormatError(f"{where} counts must be str, bytes or list, got {type(counts).__name__}")


def check_rle(
    rle: Any,
    *,
    max_side: int | None = None,
    size: tuple[int, int] | None = None,
    where: str = "RLE",
) -> tuple[tuple[int, int], int]:
    """((height, width), foreground area) of a valid RLE, checked without decoding it.

    `max_side` bounds both sides (413-worthy: too large); `size` is the size the mask must
    have (a session's frame size); the runs must be >= 0 and sum to height x width.
    """
    height, width = rle_size(rle, where)
    if max_side is not None and max(height, width) > max_side:
        raise MaskTooLarge(
            f"{where} declares {width}x{height} (width x height); the largest side allowed "
            f"is {max_side}"
        )
    if size is not None and (height, width) != tuple(size):
        raise MaskFormatError(
            f"{where} is {width}x{height} (width x height) but the frames are {size[1]}x{size[0]}"
        )
    runs = rle_runs(rle, where)
    if runs.size and runs.min() < 0:
        raise MaskFormatError(f"corrupt RLE counts in {where}: a negative run")
    total = int(runs.sum()) if runs.size else 0
    if total != height * width:
        raise MaskFormatError(
            f"corrupt RLE counts in {where}: runs sum to {total}, size [{height}, {width}] "
            f"needs {height * width}"
        )
    return (height, width), int(runs[1::2].sum())


def check_rles(rles: Sequence[Any], *, max_side: int | None = None) -> None:
    """`check_rle` on each of a sequence (named by position)."""
    for position, rle in enumerate(rles):
        check_rle(rle, max_side=max_side, where=f"RLE {position}")


class MaskTooLarge(MaskFormatError):
    """An RLE declares a size over the allowed limit (the server answers 413)."""
