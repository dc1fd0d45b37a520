"""Decode one uploaded frame (JPEG or PNG) into RGB uint8, refusing anything doubtful.

Checks, in order, each with its own error (and HTTP status):
1. empty body -> `empty_body` (422);
2. declared Content-Type not image/jpeg or image/png -> `unsupported_media_type` (415);
3. the magic bytes are the other supported format -> `content_type_mismatch` (415), or no
   image at all -> `invalid_image` (422);
4. the size in the header (JPEG SOFn / PNG IHDR, parsed here without decoding) is zero or over
   the limit -> `invalid_image` (422) / `image_too_large` (413). This runs before Pillow sees the
   bytes, so a tiny file declaring a 100000 x 100000 image costs nothing;
5. a missing end marker (JPEG EOI / PNG IEND) or a failed full decode -> `invalid_image` (422):
   truncated uploads are refused, never half-decoded.
EXIF orientation is ignored on purpose: masks index the pixel grid exactly as sent.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Literal

import numpy as np

from surgray.serving.errors import PayloadTooLarge, Unprocessable, UnsupportedMediaType

ImageFormat = Literal["jpeg", "png"]
MEDIA_TYPES: dict[str, ImageFormat] = {"image/jpeg": "jpeg", "image/png": "png"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOI = b"\xff\xd8\xff"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Markers with no length field after them.
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}


class ImageError(Unprocessable):
    code = "invalid_image"


class EmptyBody(Unprocessable):
    code = "empty_body"


class UnsupportedImageType(UnsupportedMediaType):
    code = "unsupported_media_type"


class ContentTypeMismatch(UnsupportedMediaType):
    code = "content_type_mismatch"


class ImageTooLarge(PayloadTooLarge):
    code = "image_too_large"


@dataclass(frozen=True)
class ImageHeader:
    format: ImageFormat
    width: int
    height: int


def media_format(content_type: str | None) -> ImageFormat:
    """The image format a Content-Type header names; parameters (`; q=...`) are ignored."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in MEDIA_TYPES:
        shown = media or "(none)"
        raise UnsupportedImageType(f"Content-Type must be image/jpeg or image/png, got {shown}")
    return MEDIA_TYPES[media]


def sniff_format(data: bytes) -> ImageFormat | None:
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(_JPEG_SOI):
        return "jpeg"
    return None


def _png_size(data: bytes) -> tuple[int, int]:
    # Signature, then the IHDR chunk: length (13), type, width, height (big-endian).
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError("PNG is truncated or its first chunk is not IHDR")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ImageError(f"JPEG is corrupt: expected a marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill bytes before a marker
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            break
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if length < 2:
            raise ImageError(f"JPEG is corrupt: segment length {length} at byte {position}")
        if marker in _JPEG_SOF:
            if position + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        position += 2 + length
    raise ImageError("JPEG has no frame header (truncated or not a baseline/progressive JPEG)")


def read_header(data: bytes, content_type: str | None) -> ImageHeader:
    """Format and size from the first bytes, with the content-type checks (steps 1-3)."""
    if not data:
        raise EmptyBody("the request body is empty; send one JPEG or PNG frame")
    declared = media_format(content_type)
    actual = sniff_format(data)
    if actual is None:
        raise ImageError(f"the body is not a {declared.upper()} image (unrecognised leading bytes)")
    if actual != declared:
        raise ContentTypeMismatch(
            f"Content-Type says image/{declared} but the body is a {actual.upper()} image"
        )
    width, height = _png_size(data) if actual == "png" else _jpeg_size(data)
    return ImageHeader(format=actual, width=width, height=height)


def check_size(header: ImageHeader, max_side: int) -> None:
    if header.width == 0 or header.height == 0:
        raise ImageError(f"image declares an empty size {header.width}x{header.height}")
    if max(header.width, header.height) > max_side:
        raise ImageTooLarge(
            f"image is {header.width}x{header.height}; the largest side allowed is {max_side}"
        )


def _check_end_marker(data: bytes, image_format: ImageFormat) -> None:
    if image_format == "png":
        if _PNG_IEND not in data[-64:]:
            raise ImageError("PNG is truncated: no IEND chunk at the end")
    elif data.rfind(b"\xff\xd9") < 4:
        raise ImageError("JPEG is truncated: no end-of-image marker")


def decode_frame(data: bytes, content_type: str | None, *, max_side: int) -> np.ndarray:
    """RGB uint8 [H, W, 3] of one uploaded frame, or an ApiError naming what is wrong."""
    header = read_header(data, content_type)
    check_size(header, max_side)
    _check_end_marker(data, header.format)

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=[header.format.upper()]) as image:
            if image.size != (header.width, header.height):
                raise ImageError(
                    f"image header says {header.width}x{header.height}, decoder says "
                    f"{image.size[0]}x{image.size[1]}"
                )
            # load() decodes every byte: a truncated or corrupt stream raises here.
            image.load()
            rgb = image.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image refused by the decoder's pixel limit: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{header.format.upper()} cannot be decoded: {exc}") from None
    array = np.asarray(rgb, dtype=np.uint8)
    return np.ascontiguousarray(array)
