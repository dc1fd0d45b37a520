"""Listing and reading dataset files on local disk or object storage (fsspec), with errors that
name the file and the problem."""

from __future__ import annotations

import io
import json
import re
from typing import Any, Literal

import numpy as np

from surgray.errors import UserError
from surgray.io.storage import Storage, is_local, local_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class DatasetError(UserError, ValueError):
    """A dataset file or folder is missing or malformed; the message names it."""


def join_uri(*parts: str) -> str:
    head = parts[0].rstrip("/")
    return "/".join([head, *(p.strip("/") for p in parts[1:] if p)])


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def stem(name: str) -> str:
    base = basename(name)
    return base.rsplit(".", 1)[0] if "." in base else base


def natural_key(name: str) -> list[Any]:
    """Sort key in which 'frame2' comes before 'frame10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _uri_of(uri: str, fs_path: str) -> str:
    # fsspec returns paths without the scheme; rebuild a URI the caller can pass back in.
    if is_local(uri):
        return fs_path
    return f"{uri.split('://', 1)[0]}://{fs_path}"


def exists(uri: str, kind: str = "any", *, storage: Storage) -> bool:
    if is_local(uri):
        path = local_path(uri)
        return (
            path.is_dir()
            if kind == "directory"
            else path.is_file()
            if kind == "file"
            else path.exists()
        )
    fs, path = storage.filesystem(uri)
    if kind == "directory":
        return fs.isdir(path)
    if kind == "file":
        return fs.isfile(path)
    return fs.exists(path)


def list_dir(
    uri: str,
    kind: Literal["any", "file", "directory"] = "any",
    what: str = "folder",
    *,
    storage: Storage,
) -> list[str]:
    """Entry URIs of a folder in natural order; DatasetError naming it when it does not exist."""
    if is_local(uri):
        path = local_path(uri)
        if not path.is_dir():
            raise DatasetError(f"{uri}: {what} not found")
        entries = [
            (str(child), "directory" if child.is_dir() else "file")
            for child in path.iterdir()
            if not child.name.startswith(".")
        ]
    else:
        fs, path = storage.filesystem(uri)
        if not fs.isdir(path):
            raise DatasetError(f"{uri}: {what} not found")
        entries = [
            (_uri_of(uri, e["name"]), e["type"])
            for e in fs.ls(path, detail=True)
            if not basename(e["name"]).startswith(".") and e["name"].rstrip("/") != path.rstrip("/")
        ]
    chosen = [name for name, entry_kind in entries if kind == "any" or entry_kind == kind]
    return sorted(chosen, key=lambda name: natural_key(basename(name)))


def image_files(uri: str, what: str = "frame folder", *, storage: Storage) -> list[str]:
    return [
        name
        for name in list_dir(uri, "file", what, storage=storage)
        if name.lower().endswith(IMAGE_SUFFIXES)
    ]


def read_bytes(uri: str, what: str = "file", *, storage: Storage) -> bytes:
    if is_local(uri):
        path = local_path(uri)
        if not path.is_file():
            raise DatasetError(f"{uri}: {what} not found")
        return path.read_bytes()
    fs, path = storage.filesystem(uri)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise DatasetError(f"{uri}: {what} not found") from exc


def read_json(uri: str, what: str = "JSON file", *, storage: Storage) -> Any:
    try:
        return json.loads(read_bytes(uri, what, storage=storage))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{uri}: {what} is not valid JSON: {exc}") from exc


def _open_image(uri: str, *, storage: Storage) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(read_bytes(uri, "image", storage=storage)))
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{uri}: not a readable image: {exc}") from exc


def read_rgb(uri: str, *, storage: Storage) -> np.ndarray:
    """[H, W, 3] uint8 RGB of an image file."""
    image = _open_image(uri, storage=storage)
    return np.asarray(image.convert("RGB"))


def read_ids(uri: str, *, storage: Storage) -> np.ndarray:
    """[H, W] uint8 object ids of a palette or greyscale PNG (the palette colours are ignored)."""
    image = _open_image(uri, storage=storage)
    if image.mode not in ("P", "L", "1"):
        raise DatasetError(
            f"{uri}: expected a palette or greyscale PNG of object ids, got mode {image.mode}"
        )
    return np.asarray(image, dtype=np.uint8)


def read_grey(uri: str, *, storage: Storage) -> np.ndarray:
    """[H, W] uint8 grey values (palette images give their indices)."""
    image = _open_image(uri, storage=storage)
    if image.mode == "P":
        return np.asarray(image, dtype=np.uint8)
    return np.asarray(image.convert("L"))


def image_size(uri: str, *, storage: Storage) -> tuple[int, int]:
    """(height, width) from the image header, without decoding the pixels."""
    width, height = _open_image(uri, storage=storage).size
    return height, width
