"""The review side of the page: allow-listed annotation stores, their videos, and saves.

A request names a store by its configured `name` (or its exact configured URI); nothing a
browser sends becomes a path: video ids must be safe ids (`check_video_id`), revisions are
numbers, and every location is built from the configured prefix. So `../`, absolute paths and
unlisted `s3://` prefixes are refused (403), whatever their encoding.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from surgray.annotate.logsafe import check_video_id
from surgray.annotate.outputs import OutputLayout
from surgray.annotate.revisions import RevisionError, RevisionStore
from surgray.io.records import MaskRecord
from surgray.serving.config import ReviewConfig, ReviewSource
from surgray.serving.errors import ApiError, NotFound, Unprocessable
from surgray.serving.ui.media import frames_from_zip, frames_zip, read_frames

EXPORT_FORMATS = ("davis", "sav_json", "coco_video")


class NotAllowed(ApiError):
    status, code = 403, "not_on_allow_list"


class NoFrames(NotFound):
    code = "no_frames"


def token_name(authorization: str | None, insecure: bool) -> str:
    """The reviewer's name for a revision record: a label derived from the token's digest.

    Never the token itself; the same token always gives the same name.
    """
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return "anonymous (no authentication)" if insecure else "unknown"
    digest = hashlib.sha256(credentials.strip().encode()).hexdigest()
    return f"token-{digest[:10]}"


class ReviewStores:
    """The allow-listed stores of a `ReviewConfig`."""

    def __init__(self, config: ReviewConfig):
        self.config = config
        self._by_key: dict[str, ReviewSource] = {}
        for source in config.sources:
            self._by_key[source.name] = source
            self._by_key[source.uri.rstrip("/")] = source

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "description": s.description, "writable": s.writable}
            for s in self.config.sources
        ]

    def source(self, key: str) -> ReviewSource:
        found = self._by_key.get(key.rstrip("/")) if isinstance(key, str) else None
        if found is None:
            raise NotAllowed(
                f"{key!r:.120} is not an annotation store on this server's review allow-list; "
                f"configured: {sorted(s.name for s in self.config.sources) or 'none'}"
            )
        return found

    def live_source(self) -> ReviewSource:
        if self.config.live_source is None:
            raise NotFound(
                "this server has no review.live_source configured, so live results cannot be "
                "saved; ask the operator to name one of the review sources",
                code="no_live_source",
            )
        return self.source(self.config.live_source)

    @staticmethod
    def layout(source: ReviewSource) -> OutputLayout:
        return OutputLayout(source.uri, storage=source.storage.build())


def safe_video_id(video_id: str) -> str:
    try:
        return check_video_id(video_id)
    except ValueError as exc:
        raise NotAllowed(str(exc)) from None


def _read_json(layout: OutputLayout, uri: str) -> dict[str, Any] | None:
    payload = layout.read_bytes(uri)
    if payload is None:
        return None
    try:
        return json.loads(payload)
    except ValueError:
        return None


def _ids_under(layout: OutputLayout, folder: str, prefix: str, suffix: str) -> list[str]:
    fs, path = layout._fs(f"{layout.prefix}/{folder}")
    try:
        names = [n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []
    return [
        n[len(prefix) : len(n) - len(suffix)]
        for n in names
        if n.startswith(prefix) and n.endswith(suffix)
    ]


def list_videos(layout: OutputLayout) -> list[dict[str, Any]]:
    """Every video of the store: status, frames, objects, scores, latest revision."""
    statuses = {vid: None for vid in _ids_under(layout, "status", "video_id=", ".json")}
    ids = sorted(set(statuses) | set(_ids_under(layout, "revisions", "video_id=", "")))
    store = RevisionStore(layout)
    out = []
    for video_id in ids:
        try:
            check_video_id(video_id)
        except ValueError:
            continue
        status = _read_json(layout, layout.status_uri(video_id)) or {}
        latest = store.latest(video_id)
        row: dict[str, Any] = {
            "video_id": video_id,
            "status": status.get("state", "reviewed" if latest else "unknown"),
            "frames": int(status.get("frames") or (latest.frames if latest else 0)),
            "objects": int(status.get("objects") or 0),
            "revision": latest.revision if latest else 0,
            "mean_score": None,
            "worst_object_score": None,
            "error": status.get("error"),
        }
        try:
            records = store.records(video_id)
        except (RevisionError, FileNotFoundError, OSError):
            records = []
        if records:
            per_object: dict[int, list[float]] = defaultdict(list)
            for record in records:
                per_object[record.obj_id].append(float(record.score))
            means = [sum(v) / len(v) for v in per_object.values()]
            row["objects"] = len(per_object)
            row["mean_score"] = round(sum(r.score for r in records) / len(records), 4)
            row["worst_object_score"] = round(min(means), 4)
            row["frames"] = row["frames"] or max(r.frame_idx for r in records) + 1
        out.append(row)
    # Worst first: reviewers start where the model was least sure.
    out.sort(key=lambda r: (r["worst_object_score"] is None, r["worst_object_score"] or 0.0))
    return out


def _records_or_404(store: RevisionStore, video_id: str, revision: int | None) -> list[MaskRecord]:
    """A revision's rows (the latest when `revision` is None), or 404 naming what is missing."""
    try:
        return store.records(video_id, revision)
    except RevisionError as exc:
        raise NotFound(str(exc), code="unknown_revision") from None
    except FileNotFoundError:
        raise NotFound(f"video {video_id} has no results in this store") from None


def video_detail(layout: OutputLayout, video_id: str, revision: int | None) -> dict[str, Any]:
    store = RevisionStore(layout)
    records = _records_or_404(store, video_id, revision)
    revisions = store.revisions(video_id)
    shown = revision if revision is not None else (revisions[-1].revision if revisions else 0)
    status = _read_json(layout, layout.status_uri(video_id)) or {}
    masks: dict[int, list[dict[str, Any]]] = defaultdict(list)
    labels: dict[int, str] = {}
    for record in records:
        counts = record.rle["counts"]
        masks[record.frame_idx].append(
            {
                "obj_id": record.obj_id,
                "score": round(float(record.score), 4),
                "rle": {
                    "size": [int(v) for v in record.rle["size"]],
                    "counts": counts.decode() if isinstance(counts, bytes) else counts,
                },
            }
        )
        labels.setdefault(record.obj_id, record.label)
    height, width = records[0].size if records else (0, 0)
    frames = int(status.get("frames") or 0) or (max(masks) + 1 if masks else 0)
    return {
        "video_id": video_id,
        "status": status.get("state", "reviewed"),
        "frames": frames,
        "height": height,
        "width": width,
        "revision": shown,
        "latest_revision": revisions[-1].revision if revisions else 0,
        "revisions": [r.as_dict() for r in revisions],
        "objects": [{"obj_id": k, "label": v} for k, v in sorted(labels.items())],
        "masks": {str(k): v for k, v in sorted(masks.items())},
        "has_frames": _frames_source(layout, video_id, status) is not None,
    }


def live_frames_uri(layout: OutputLayout, video_id: str) -> str:
    return f"{RevisionStore(layout).folder(video_id)}/frames.zip"


def _frames_source(layout: OutputLayout, video_id: str, status: dict[str, Any]) -> str | None:
    if status.get("source_uri"):
        return str(status["source_uri"])
    uri = live_frames_uri(layout, video_id)
    fs, path = layout._fs(uri)
    return uri if fs.exists(path) else None


def video_frames(
    layout: OutputLayout, video_id: str, *, max_frames: int, max_side: int
) -> list[bytes]:
    """The video's frames as JPEGs, from the source the store recorded (never the browser)."""
    status = _read_json(layout, layout.status_uri(video_id)) or {}
    source = _frames_source(layout, video_id, status)
    if source is None:
        raise NoFrames(
            f"video {video_id}: the store does not record where its frames are (video ids were "
            "hashed for privacy), so masks are shown on a blank frame and cannot be re-tracked"
        )
    if source.endswith("frames.zip") and source == live_frames_uri(layout, video_id):
        return frames_from_zip(layout.read_bytes(source) or b"")[:max_frames]
    frames, _, _, _ = read_frames(
        source, storage=layout.storage, max_frames=max_frames, max_side=max_side, what="the video"
    )
    return frames


def save_live_frames(layout: OutputLayout, video_id: str, frames: list[bytes]) -> None:
    layout.put_bytes(live_frames_uri(layout, video_id), frames_zip(frames))


def export(
    layout: OutputLayout, video_id: str, fmt: str, revision: int | None
) -> tuple[bytes, str, str]:
    """(payload, media type, file name) of one export of a revision's masks."""
    from surgray.io.exports import write_coco_video_json, write_davis, write_sav_json

    if fmt not in EXPORT_FORMATS:
        raise Unprocessable(f"unknown export format {fmt!r}; use one of {list(EXPORT_FORMATS)}")
    store = RevisionStore(layout)
    records = _records_or_404(store, video_id, revision)
    if not records:
        raise NotFound(f"video {video_id} has no masks to export")
    status = _read_json(layout, layout.status_uri(video_id)) or {}
    frames = int(status.get("frames") or 0) or max(r.frame_idx for r in records) + 1
    shown = revision if revision is not None else store.latest_number(video_id)
    stem = f"{video_id}-r{shown}"
    with tempfile.TemporaryDirectory(prefix="surgray-export-") as temp:
        if fmt == "davis":
            folder = Path(temp) / "davis"
            write_davis(folder, records, frame_counts={video_id: frames})
            buffer = Path(temp) / "davis.zip"
            with zipfile.ZipFile(buffer, "w") as archive:
                for path in sorted(folder.rglob("*.png")):
                    archive.write(path, path.relative_to(folder).as_posix())
            return buffer.read_bytes(), "application/zip", f"{stem}-davis.zip"
        out = Path(temp) / "out.json"
        if fmt == "sav_json":
            write_sav_json(
                out, records, fps=float(status.get("fps") or 24.0) or 24.0, frame_count=frames
            )
        else:
            write_coco_video_json(out, records, frame_counts={video_id: frames})
        return out.read_bytes(), "application/json", f"{stem}-{fmt}.json"
