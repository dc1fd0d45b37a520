"""What an output prefix already holds, learnt from listings instead of one request per video.

A rerun over an archive of 100,000 videos must not ask the store about each video in turn:
on object storage every question is a round trip, and a fresh prefix would answer "nothing
here" 100,000 times. One listing of each of the layout's folders (one LIST request per
thousand keys on S3) tells which videos have a completion marker, a status record or anything
at all: `_done/`, `status/` and `exports/*` non-recursive (a video's many PNGs are not
walked), `masks/` flat, with each part's size and ETag (mtime on a local disk), which the
rerun's index is checked against (`surgray.annotate.rerun`). Only the videos found are looked
at further. An empty local folder under `masks/` counts as nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # outputs imports this module: the layout is named for types only
    from surgray.annotate.outputs import OutputLayout

# export format -> suffix of a video's entry in exports/<format>/ (as OutputLayout.export_uri)
EXPORT_SUFFIXES = {"davis": "", "sav_json": ".json", "overlay_mp4": ".mp4"}

Fingerprint = tuple[int, str]  # (size, ETag or mtime); "" when the store gives neither


def fingerprint(info: Mapping[str, Any]) -> Fingerprint:
    """A file's listing details reduced to what changes when it is rewritten: its size and
    the store's content tag (S3's ETag, GCS's md5) or else its modification time."""
    size = int(info.get("size") or 0)
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "updated"):
        value = info.get(key)
        if value not in (None, ""):
            return size, str(value)
    return size, ""


@dataclass(frozen=True)
class OutputScan:
    """Video ids found under an output prefix, by what was found."""

    markers: frozenset[str]  # a completion marker exists (complete, unless it proves stale)
    present: frozenset[str]  # anything of the video exists: marker, status, parts or exports
    statuses: frozenset[str] = frozenset()  # a status record exists
    marker_prints: Mapping[str, Fingerprint] = field(default_factory=dict)  # from the listing
    # video id -> part name -> fingerprint, from one flat listing of masks/
    part_prints: Mapping[str, Mapping[str, Fingerprint]] = field(default_factory=dict)

    def untouched(self, video_ids: Iterable[str]) -> list[str]:
        """The ids of `video_ids` with nothing under the prefix: pending, nothing to reset."""
        return [v for v in video_ids if v not in self.present]


def _strip(name: str, prefix: str = "", suffix: str = "") -> str | None:
    """`name` without `prefix` and `suffix`, or None when it lacks either (a foreign entry)."""
    if not (name.startswith(prefix) and name.endswith(suffix)):
        return None
    return name.removeprefix(prefix).removesuffix(suffix) or None


def flat_entries(layout: OutputLayout, folder: str) -> dict[str, dict[str, Any]]:
    """`layout.entries_in(folder, recursive=True)`: path under `<prefix>/<folder>` -> the
    store's details of every file below it, from one flat listing.

    On S3 the pages are taken as s3fs lists them (`_lsdir` without a delimiter), not through
    `find`: find also files every entry into a directory tree, and checks each new folder
    against a list of its parent's folders (`d not in list`), which is quadratic in the
    number of folders: 1.8 s of CPU for 10,000 videos' folders under masks/, 7.4 s for
    20,000, minutes at 100,000. Other stores use `entries_in`."""
    uri = f"{layout.prefix}/{folder}"
    fs, path = layout.storage.filesystem(uri)
    lsdir = getattr(fs, "_lsdir", None)
    if type(fs).__module__.split(".")[0] != "s3fs" or lsdir is None:
        return layout.entries_in(folder, recursive=True)
    from fsspec.asyn import sync

    base = path.rstrip("/") + "/"
    try:
        found = sync(fs.loop, lsdir, path, refresh=True, delimiter="")
    except FileNotFoundError:
        return {}
    return {
        str(info["name"]).removeprefix(base): info
        for info in found
        if info.get("type") != "directory" and str(info["name"]).startswith(base)
    }


def listed_prints(
    layout: OutputLayout, folder: str, *, recursive: bool = False, folders: bool = False
) -> dict[str, Fingerprint]:
    """Path under `<prefix>/<folder>` -> fingerprint of each file there (every file below it
    when `recursive`; with `folders`, subfolders too, as (0, "")): `entries_in` reduced as it
    is listed. On S3 each page's entries become fingerprints as they arrive, so the store's
    detail dicts of a 100,000-key listing (a few KB each) are never all held at once, and
    nothing goes into s3fs's listing cache. Other stores: `entries_in` / `names_in`."""
    fs, path = layout.storage.filesystem(f"{layout.prefix}/{folder}")
    iterdir = getattr(fs, "_iterdir", None)
    if type(fs).__module__.split(".")[0] != "s3fs" or iterdir is None:
        found = {
            n: fingerprint(i) for n, i in layout.entries_in(folder, recursive=recursive).items()
        }
        if folders and not recursive:
            found.update((n, (0, "")) for n in layout.names_in(folder) if n not in found)
        return found
    from botocore.exceptions import ClientError
    from fsspec.asyn import sync
    from s3fs.errors import translate_boto_error

    bucket, key, _ = fs.split_path(path)
    base = path.rstrip("/") + "/"

    async def collect() -> dict[str, Fingerprint]:
        out: dict[str, Fingerprint] = {}
        pages = iterdir(bucket, delimiter="" if recursive else "/", prefix=key.strip("/") + "/")
        async for info in pages:
            name = str(info["name"])
            if not name.startswith(base):
                continue
            if info.get("type") == "directory":
                if folders:
                    out[name.removeprefix(base).rstrip("/")] = (0, "")
            else:
                out[name.removeprefix(base)] = fingerprint(info)
        return out

    try:
        return sync(fs.loop, collect)
    except ClientError as exc:
        error = translate_boto_error(exc)
        if isinstance(error, FileNotFoundError):
            return {}
        raise error from exc
    except FileNotFoundError:
        return {}


def scan_outputs(layout: OutputLayout) -> OutputScan:
    """List the layout's folders once each (see the module docstring), all at once: on object
    storage a listing is a chain of round trips, and the folders' chains need not wait for
    each other."""
    from concurrent.futures import ThreadPoolExecutor

    listings: dict[str, dict[str, bool]] = {
        "_done": {},
        "status": {"folders": True},
        "masks": {"recursive": True},
        **{f"exports/{fmt}": {"folders": True} for fmt in EXPORT_SUFFIXES},
    }
    with ThreadPoolExecutor(max_workers=len(listings), thread_name_prefix="scan") as pool:
        pending = {
            folder: pool.submit(listed_prints, layout, folder, **options)
            for folder, options in listings.items()
        }
        listed = {folder: future.result() for folder, future in pending.items()}
    prints = {v: fp for n, fp in listed["_done"].items() if (v := _strip(n, suffix=".json"))}
    markers = set(prints)
    statuses = {v for n in listed["status"] if (v := _strip(n, "video_id=", ".json"))}
    present = markers | statuses
    parts: dict[str, dict[str, Fingerprint]] = {}
    for path, fp in listed["masks"].items():
        folder, _, name = path.partition("/")
        video_id = _strip(folder, "video_id=")
        if video_id and name and "/" not in name:
            parts.setdefault(video_id, {})[name] = fp
    present.update(parts)
    for fmt, suffix in EXPORT_SUFFIXES.items():
        present.update(v for n in listed[f"exports/{fmt}"] if (v := _strip(n, "", suffix)))
    return OutputScan(
        markers=frozenset(markers),
        present=frozenset(present),
        statuses=frozenset(statuses),
        marker_prints=prints,
        part_prints={
            v: {n: fp for n, fp in found.items() if n.endswith(".parquet")}
            for v, found in parts.items()
        },
    )
