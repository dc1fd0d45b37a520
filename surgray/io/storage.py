"""Local paths and object-store URIs through fsspec, with errors that name the URI."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from surgray.io.errors import VideoError

# Reads from object storage come in blocks of this size; small enough that decoding the first
# frames of a faststart MP4 touches only a fraction of a large object.
DEFAULT_BLOCK_SIZE = 256 * 1024


def split_scheme(uri: str | os.PathLike[str]) -> tuple[str, str]:
    """Return (scheme, rest); plain paths and file:// URIs have scheme "file"."""
    text = os.fspath(uri)
    if "://" not in text:
        return "file", text
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme in ("file", "local"):
        return "file", rest
    return scheme, rest


def is_local(uri: str | os.PathLike[str]) -> bool:
    return split_scheme(uri)[0] == "file"


def local_path(uri: str | os.PathLike[str]) -> Path:
    scheme, rest = split_scheme(uri)
    if scheme != "file":
        raise VideoError(f"{os.fspath(uri)}: not a local path")
    return Path(rest)


def _filesystem(uri: str | os.PathLike[str], options: Mapping[str, Any]) -> tuple[Any, str]:
    import fsspec
    from fsspec.registry import known_implementations, registry

    text = os.fspath(uri)
    scheme, _ = split_scheme(text)
    if scheme != "file" and scheme not in known_implementations and scheme not in registry:
        raise VideoError(f"{text}: unknown URI scheme {scheme!r} (no fsspec implementation)")
    try:
        fs, path = fsspec.core.url_to_fs(text, **dict(options))
    except ImportError as exc:
        raise VideoError(
            f"{text}: the {scheme!r} filesystem needs a missing package: {exc}"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise VideoError(f"{text}: cannot open filesystem for {scheme!r}: {exc}") from exc
    return fs, path


@dataclass(frozen=True)
class Storage:
    """How to reach files: the fsspec options of the object store, built once at the edge.

    A job builds one from its config's storage section (`StorageConfig.build()`) and passes it
    down with the URIs it opens; plain paths and `file://` URIs ignore the options. It pickles
    with its options, so Ray actors and tasks open the same store as the driver.
    """

    options: Mapping[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        # Options hold dicts (s3fs's client_kwargs), which do not hash; their JSON does, so a
        # Storage can sit in frozen settings objects and cache keys.
        return hash(json.dumps(dict(self.options), sort_keys=True, default=repr))

    def filesystem(self, uri: str | os.PathLike[str]) -> tuple[Any, str]:
        """(fsspec filesystem, path inside it); a VideoError for an unknown scheme."""
        return _filesystem(uri, self.options)

    @contextmanager
    def open_for_read(
        self, uri: str | os.PathLike[str], block_size: int = DEFAULT_BLOCK_SIZE
    ) -> Iterator[IO[bytes]]:
        """A seekable binary file; remote objects are read lazily in `block_size` blocks."""
        text = os.fspath(uri)
        if is_local(text):
            path = local_path(text)
            if not path.exists():
                raise VideoError(f"{text}: file not found")
            with open(path, "rb") as handle:
                yield handle
            return
        fs, path = self.filesystem(text)
        try:
            handle = fs.open(path, "rb", block_size=block_size, cache_type="readahead")
        except FileNotFoundError as exc:
            raise VideoError(f"{text}: file not found") from exc
        except OSError as exc:
            raise VideoError(f"{text}: cannot open: {exc}") from exc
        try:
            yield handle
        finally:
            handle.close()

    @contextmanager
    def local_target(self, uri: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
        """A local path to write to, moved into place (or uploaded) only when the block succeeds.

        Writers such as the MP4 muxer with faststart must seek back and rewrite their output,
        which object stores cannot do, hence the local staging file. A failed write leaves
        nothing behind.
        """
        text = os.fspath(uri)
        if is_local(text):
            path = local_path(text)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.partial{suffix}")
            try:
                yield partial
                os.replace(partial, path)
            finally:
                partial.unlink(missing_ok=True)
            return
        fs, remote = self.filesystem(text)
        staging = Path(tempfile.mkdtemp(prefix="surgray-io-"))
        try:
            tmp = staging / f"out{suffix}"
            yield tmp
            fs.put_file(str(tmp), remote)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def open(self, uri: str | os.PathLike[str], mode: str = "rb") -> Any:
        """An fsspec `OpenFile` (a context manager) for `uri`; writing creates parent folders
        of local paths, which object stores do not need."""
        import fsspec

        text = os.fspath(uri)
        if is_local(text):
            if "r" not in mode:
                local_path(text).parent.mkdir(parents=True, exist_ok=True)
            return fsspec.open(str(local_path(text)), mode)
        return fsspec.open(text, mode, **dict(self.options))

    def exists(self, uri: str | os.PathLike[str]) -> bool:
        """Whether a file or folder is at `uri` (object-store prefixes count as folders)."""
        text = os.fspath(uri)
        if is_local(text):
            return local_path(text).exists()
        fs, path = self.filesystem(text)
        return bool(fs.exists(path))

    def read_bytes(self, uri: str | os.PathLike[str]) -> bytes:
        """The whole object; FileNotFoundError when there is none."""
        text = os.fspath(uri)
        if is_local(text):
            return local_path(text).read_bytes()
        fs, path = self.filesystem(text)
        return bytes(fs.cat_file(path))

    def write_bytes(self, uri: str | os.PathLike[str], payload: bytes) -> None:
        """Write `payload` to `uri`, creating parent folders of local paths."""
        text = os.fspath(uri)
        if is_local(text):
            path = local_path(text)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(payload)
            return
        fs, path = self.filesystem(text)
        fs.pipe_file(path, payload)


LOCAL = Storage()
"""Local files only (and object stores reachable with the environment's defaults)."""
