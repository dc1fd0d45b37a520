"""Encode frames to MP4 (or other containers) and arrays to PNG, carrying no source metadata.

Outputs of this project are derived from patient videos, so nothing from a source container
(title, comment, creation_time, encoder strings) is ever copied into them, and the muxer is
run in bit-exact mode so it adds no library version tag either.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from surgray.io.errors import VideoError
from surgray.io.storage import LOCAL, Storage, is_local, local_path

# Per-codec pixel format and how the quality knob maps onto encoder options.
_CRF_CODECS = {"libx264", "libx265", "libvpx-vp9", "libsvtav1"}
_QSCALE_CODECS = {"mpeg4", "mjpeg", "mpeg2video"}
_PIX_FMT = {"mjpeg": "yuvj420p", "ffv1": "yuv444p", "png": "rgb24"}
_FORMAT_BY_SUFFIX = {
    ".mp4": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".avi": "avi",
    ".webm": "webm",
}


@dataclass(frozen=True)
class WrittenVideo:
    """What `write_video` produced; width/height may be padded up to even sizes."""

    uri: str
    frame_count: int
    width: int
    height: int
    fps: float
    codec: str


def _container_format(uri: str) -> str:
    suffix = os.path.splitext(uri.split("?", 1)[0])[1].lower()
    if suffix not in _FORMAT_BY_SUFFIX:
        raise VideoError(
            f"{uri}: unsupported output extension {suffix!r}; use one of {sorted(_FORMAT_BY_SUFFIX)}"
        )
    return _FORMAT_BY_SUFFIX[suffix]


def _as_rgb(frame: Any, index: int, uri: str) -> np.ndarray:
    array = np.asarray(frame)
    if array.dtype != np.uint8:
        raise VideoError(f"{uri}: frame {index} has dtype {array.dtype}, expected uint8")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise VideoError(f"{uri}: frame {index} has shape {array.shape}, expected HxWx3 RGB or HxW")
    return np.ascontiguousarray(array)


def _pad_to_even(array: np.ndarray) -> np.ndarray:
    # 4:2:0 chroma needs even sizes; replicate the last row/column rather than refuse.
    pad_h = array.shape[0] % 2
    pad_w = array.shape[1] % 2
    if pad_h or pad_w:
        array = np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return array


def _encoder_options(codec: str, crf: int | None) -> dict[str, str]:
    options: dict[str, str] = {}
    if codec in _CRF_CODECS and crf is not None:
        options["crf"] = str(crf)
        if codec == "libvpx-vp9":
            options["b"] = "0"  # constant-quality mode for VP9
    if codec in ("libx264", "libx265"):
        options["preset"] = "veryfast"
    if codec == "libx265":
        options["x265-params"] = "log-level=error"
    return options


def write_video(
    path_or_uri: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: float,
    *,
    codec: str = "libx264",
    crf: int | None = 23,
    quality: int | None = None,
    pix_fmt: str | None = None,
    gop_size: int | None = None,
    storage: Storage = LOCAL,
) -> WrittenVideo:
    """Encode an iterable of HxWx3 uint8 RGB frames (streamed, never held in memory).

    `crf` applies to libx264/libx265/libvpx-vp9/libsvtav1; `quality` is the qscale (1 best to
    31 worst) of mpeg4/mjpeg. MP4/MOV outputs get the moov atom at the front (faststart) so
    readers can stream them from object storage. Remote URIs are staged locally, then uploaded.
    """
    from fractions import Fraction

    import av

    uri = os.fspath(path_or_uri)
    container_format = _container_format(uri)
    if fps <= 0:
        raise VideoError(f"{uri}: fps must be positive, got {fps}")
    if quality is not None and not 1 <= quality <= 31:
        raise VideoError(f"{uri}: quality (qscale) must be in 1..31, got {quality}")
    try:
        av.codec.Codec(codec, "w")
    except Exception as exc:
        raise VideoError(f"{uri}: encoder {codec!r} is not available in this FFmpeg build") from exc

    rate = Fraction(fps).limit_denominator(1001)
    container_options = {"fflags": "+bitexact"}
    if container_format in ("mp4", "mov"):
        container_options["movflags"] = "+faststart"
    count = 0
    size: tuple[int, int] | None = None
    with storage.local_target(uri, suffix=os.path.splitext(uri)[1]) as target:
        output = av.open(str(target), "w", format=container_format, options=container_options)
        try:
            stream = output.add_stream(codec, rate=rate, options=_encoder_options(codec, crf))
            stream.codec_context.flags |= av.codec.context.Flags.bitexact
            chosen_pix_fmt = pix_fmt or _PIX_FMT.get(codec, "yuv420p")
            for index, raw in enumerate(frames):
                rgb = _as_rgb(raw, index, uri)
                if chosen_pix_fmt.startswith(("yuv420", "yuvj420", "nv12")):
                    rgb = _pad_to_even(rgb)
                if size is None:
                    size = (rgb.shape[0], rgb.shape[1])
                    if codec == "libx265" and min(size) < 64:
                        # x265 as bundled with PyAV corrupts the heap on tiny frames (48x32).
                        raise VideoError(f"{uri}: libx265 needs frames of at least 64x64")
                    stream.width, stream.height = size[1], size[0]
                    stream.pix_fmt = chosen_pix_fmt
                    if gop_size is not None:
                        stream.codec_context.gop_size = gop_size
                    if codec in _QSCALE_CODECS and quality is not None:
                        # Pin rate control to one quantiser; PyAV frames carry no per-frame
                        # quality, so the qscale flag alone would always pick the best.
                        stream.codec_context.qmin = quality
                        stream.codec_context.qmax = quality
                elif (rgb.shape[0], rgb.shape[1]) != size:
                    raise VideoError(
                        f"{uri}: frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, "
                        f"earlier frames are {size[1]}x{size[0]}"
                    )
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                for packet in stream.encode(frame):
                    output.mux(packet)
                count += 1
            if count == 0:
                raise VideoError(f"{uri}: no frames to write")
            for packet in stream.encode(None):
                output.mux(packet)
        finally:
            output.close()
    assert size is not None
    return WrittenVideo(
        uri=uri, frame_count=count, width=size[1], height=size[0], fps=float(rate), codec=codec
    )


def png_bytes(array: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """PNG bytes of a HxW (grey or palette indexes), HxWx3 or HxWx4 uint8 array, no metadata chunks."""
    from PIL import Image

    data = np.asarray(array)
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype != np.uint8:
        raise VideoError(f"PNG array must be uint8 or bool, got {data.dtype}")
    if palette is not None:
        if data.ndim != 2:
            raise VideoError(f"a palette PNG needs a HxW index array, got shape {data.shape}")
        colours = np.asarray(palette, dtype=np.uint8)
        if colours.ndim != 2 or colours.shape[1] != 3 or not 1 <= colours.shape[0] <= 256:
            raise VideoError(f"palette must be Kx3 with 1 <= K <= 256, got shape {colours.shape}")
        image = Image.frombytes("P", (data.shape[1], data.shape[0]), data.tobytes())
        image.putpalette(colours.reshape(-1).tolist())
    elif data.ndim == 2 or (data.ndim == 3 and data.shape[2] in (3, 4)):
        image = Image.fromarray(np.ascontiguousarray(data))
    else:
        raise VideoError(f"PNG array must be HxW, HxWx3 or HxWx4, got shape {data.shape}")
    buffer = io.BytesIO()
    # Pillow writes only the chunks asked for; no pnginfo, dpi or icc profile is passed.
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def write_png(
    path_or_uri: str | os.PathLike[str],
    array: np.ndarray,
    palette: np.ndarray | None = None,
    *,
    storage: Storage = LOCAL,
) -> None:
    """Write `array` as a PNG (palette PNG when `palette` is given) with no metadata chunks."""
    uri = os.fspath(path_or_uri)
    payload = png_bytes(array, palette)
    if is_local(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        return
    fs, remote = storage.filesystem(uri)
    with fs.open(remote, "wb") as handle:
        handle.write(payload)
