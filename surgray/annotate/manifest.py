"""Which videos to annotate with which prompts: a manifest file, or a listed prefix.

A manifest is CSV, JSONL or Parquet with the columns
  video_uri  (required) local path or object-store URI; relative paths are read next to the
             manifest
  video_id   (optional) a name for the outputs; hashed when privacy hashing is on
  text       (optional) text expressions: a list, a JSON list or a `;`-separated string;
             a list item `{"text": ..., "obj_id": N}` gives that object its id in the outputs
  prompts    (optional) object prompts in the JSON form of `surgray.annotate.prompts`
The job-wide `prompts` of the config are added to every video's text expressions.

Bad rows are reported (`ManifestError`: row number and reason) and the others go ahead; a
manifest without one good row raises `ManifestInvalid`. Row numbers count data rows from 1
(the CSV header is not a row; in JSONL the row is the line number).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from surgray.annotate.config import AnnotateConfig
from surgray.annotate.logsafe import SAFE_VIDEO_ID, log_uri, logger
from surgray.annotate.manifest_rows import ManifestError, ManifestInvalid, manifest_rows
from surgray.annotate.prompts import PromptError, VideoPrompts
from surgray.annotate.provenance import hash_video_id, load_salt
from surgray.errors import one_line
from surgray.io.storage import LOCAL, Storage

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
# A row's reason quotes at most this much of it: reports and logs stay small whatever the row.
MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class VideoTask:
    video_uri: str
    video_id: str
    prompts: VideoPrompts
    row: int | None = None  # manifest row, for reports


@dataclass(frozen=True)
class ManifestResult:
    tasks: tuple[VideoTask, ...]
    errors: tuple[ManifestError, ...]


class VideoIds:
    """Output names of videos: HMAC of the source name with a salt, or a cleaned-up name."""

    def __init__(self, salt: bytes | None = None, hex_chars: int = 16):
        self.salt = salt
        self.hex_chars = hex_chars

    def make(self, uri: str, given: str | None, readable: str) -> str:
        """`given` (a manifest's video_id) or else `uri` is hashed; unhashed, `given` must be
        a safe name and `readable` (a stem or relative path) is cleaned into one."""
        if self.salt is not None:
            return hash_video_id(given if given is not None else uri, self.salt, self.hex_chars)
        if given is not None:
            if not SAFE_VIDEO_ID.match(given):
                raise PromptError(
                    f"video_id {given!r} must be 1-200 of letters, digits, '.', '_', '-' "
                    "and start with a letter or digit"
                )
            return given
        cleaned = _UNSAFE_CHARS.sub("_", readable).lstrip("._-")[:200]
        return cleaned or "video"


def _resolve(video_uri: str, manifest_uri: str) -> str:
    if "://" in video_uri or video_uri.startswith("/"):
        return video_uri
    return posixpath.join(posixpath.dirname(manifest_uri), video_uri)


def _stem(uri: str) -> str:
    return posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]


def read_manifest(
    uri: str | os.PathLike[str],
    *,
    storage: Storage = LOCAL,
    global_texts: tuple[str, ...] = (),
    ids: VideoIds | None = None,
) -> ManifestResult:
    """Tasks from the good rows and errors for the bad ones; raises if no row is good."""
    text_uri = os.fspath(uri)
    ids = ids or VideoIds()
    tasks: list[VideoTask] = []
    errors: list[ManifestError] = []
    first_row_of: dict[str, int] = {}  # video URI or id -> first row that used it
    for number, row in manifest_rows(text_uri, storage=storage):
        if isinstance(row, str):
            errors.append(ManifestError(number, one_line(row, MAX_REASON_CHARS)))
            continue
        try:
            task = _task(number, row, text_uri, global_texts, ids)
            for key in (f"uri:{task.video_uri}", f"id:{task.video_id}"):
                if key in first_row_of:
                    what = "video" if key.startswith("uri:") else f"video_id {task.video_id}"
                    raise PromptError(f"duplicate {what} (first in row {first_row_of[key]})")
        except PromptError as exc:
            errors.append(ManifestError(number, one_line(exc, MAX_REASON_CHARS)))
            continue
        first_row_of.setdefault(f"uri:{task.video_uri}", number)
        first_row_of.setdefault(f"id:{task.video_id}", number)
        tasks.append(task)
    if not tasks:
        raise ManifestInvalid(f"{text_uri}: no valid rows", tuple(errors))
    return ManifestResult(tuple(tasks), tuple(errors))


def _task(
    number: int, row: dict[str, Any], manifest: str, global_texts: tuple[str, ...], ids: VideoIds
) -> VideoTask:
    raw_uri = row.get("video_uri")
    if not isinstance(raw_uri, str) or not raw_uri.strip():
        raise PromptError("missing video_uri")
    video_uri = _resolve(raw_uri.strip(), manifest)
    given = row.get("video_id")
    if isinstance(given, int) and not isinstance(given, bool):
        given = str(given)  # numeric case numbers in a Parquet column
    if given is not None and (not isinstance(given, str) or not given.strip()):
        raise PromptError(f"video_id must be a non-empty string, got {given!r}")
    prompts = VideoPrompts.from_cells(row.get("text"), row.get("prompts"))
    if prompts.texts and prompts.objects:
        raise PromptError(
            "text and prompts in one row: a video is tracked from text expressions or from "
            "point/box/mask prompts, not both; give the video two rows in two manifests"
        )
    if global_texts and prompts.objects:
        raise PromptError(
            "prompts in a row while the config's prompts (text expressions) apply to every "
            "video: a video is tracked from text or from point/box/mask prompts, not both"
        )
    prompts = prompts.with_texts(global_texts)
    if prompts.empty:
        raise PromptError("no prompts: give text or prompts here, or prompts in the config")
    video_id = ids.make(video_uri, given.strip() if given else None, _stem(video_uri))
    return VideoTask(video_uri, video_id, prompts, number)


def list_videos(
    prefix: str,
    extensions: tuple[str, ...],
    *,
    storage: Storage = LOCAL,
    recursive: bool = True,
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """Sorted URIs of the video files under `prefix` (hidden files and `exclude` left out)."""
    from surgray.io.storage import split_scheme

    fs, root = storage.filesystem(prefix)
    fs.invalidate_cache()
    scheme = split_scheme(prefix)[0]
    if recursive:
        names = fs.find(root)
    else:
        names = [e["name"] for e in fs.ls(root, detail=True) if e.get("type") == "file"]
    skip = tuple(storage.filesystem(p)[1].rstrip("/") + "/" for p in exclude)
    wanted = tuple(ext.lower() for ext in extensions)
    found = []
    for name in names:
        if not name.lower().endswith(wanted) or posixpath.basename(name).startswith("."):
            continue
        if name.startswith(skip):
            continue
        found.append(name if scheme == "file" else f"{scheme}://{name}")
    return sorted(found)


def load_tasks(
    config: AnnotateConfig, *, salt: bytes | None = None, environ: dict[str, str] | None = None
) -> ManifestResult:
    """The job's tasks from its manifest or prefix, with ids hashed when privacy asks for it."""
    storage = config.storage.build()
    privacy = config.privacy
    if privacy.hash_video_ids and salt is None:
        salt = load_salt(privacy, environ, storage=storage)
    ids = VideoIds(salt if privacy.hash_video_ids else None, privacy.id_hex_chars)
    if config.inputs.manifest is not None:
        result = read_manifest(
            config.inputs.manifest, storage=storage, global_texts=config.prompts, ids=ids
        )
    else:
        result = _list_tasks(config, storage, ids)
    for task in result.tasks:
        log_uri(task.video_id, task.video_uri)
    for error in result.errors:
        logger.warning("input rejected: %s", error)
    logger.info("%d videos to annotate, %d inputs rejected", len(result.tasks), len(result.errors))
    return result


def _list_tasks(config: AnnotateConfig, storage: Storage, ids: VideoIds) -> ManifestResult:
    prefix = config.inputs.prefix or ""
    uris = list_videos(
        prefix,
        config.inputs.extensions,
        storage=storage,
        recursive=config.inputs.recursive,
        exclude=(config.output.prefix,),
    )
    if not uris:
        raise ManifestInvalid(
            f"inputs.prefix: no files with {list(config.inputs.extensions)} found"
        )
    root = storage.filesystem(prefix)[1].rstrip("/") + "/"
    tasks, errors, seen = [], [], {}
    for uri in uris:
        relative = storage.filesystem(uri)[1].removeprefix(root)
        readable = posixpath.splitext(relative)[0].replace("/", "__")
        video_id = ids.make(uri, None, readable)
        if video_id in seen:
            # Only unhashed names can collide ("a/b.mp4" and "a__b.mkv").
            errors.append(
                ManifestError(
                    None, "another video's name cleans up to the same id; rename one", video_id
                )
            )
            continue
        seen[video_id] = uri
        tasks.append(VideoTask(uri, video_id, VideoPrompts(texts=config.prompts)))
    return ManifestResult(tuple(tasks), tuple(errors))
