"""Reviewed corrections of an annotation store, kept beside the batch output, never over it.

    <prefix>/revisions/video_id=<id>/r-<NNNNN>.json            revision record, written last
    <prefix>/revisions/video_id=<id>/r-<NNNNN>-<nonce>/part-*.parquet   its own mask rows

Revision 0 is the batch job's output (the parts its completion marker lists); revision N is a
full copy of the video's rows with the corrections applied, so a reader reads one revision's
parts and nothing else. A record names its parent, the frames and objects changed, the prompts
used, the time and the reviewer's token *name* (a digest-derived label, never the token).

Exactly-once, like the job's marker: parts go to a folder no other save uses (a random nonce),
then the record is created only if no record of that number exists (an exclusive create on
local paths, a conditional put on object stores that support it, and a per-process lock in
any case). A crash leaves parts no record lists, which readers never see. A save names the
revision it started from; when another save got there first, it is refused (`RevisionConflict`,
HTTP 409) instead of silently overwriting. A revision also records which batch output it
corrected (a digest of the marker), so a rerun that rewrote the batch output makes older
revisions stale: readers then fall back to the batch output.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from surgray.annotate.logsafe import check_video_id
from surgray.annotate.outputs import OutputLayout, read_video_records
from surgray.annotate.status import PartInfo
from surgray.errors import UserError
from surgray.io.records import MaskRecord
from surgray.io.storage import LOCAL, Storage

REVISION_FORMAT = 1
ROWS_PER_PART = 50_000
_RECORD = re.compile(r"^r-(\d{5})\.json$")
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class RevisionError(UserError):
    """A revision that does not exist or cannot be read."""


class RevisionConflict(RevisionError):
    """Another save created the revision this one meant to create."""


@dataclass(frozen=True)
class Revision:
    """One revision record (`revision` 0: the batch output, which has no record file)."""

    video_id: str
    revision: int
    parent: int | None
    parts_dir: str = ""
    parts: tuple[PartInfo, ...] = ()
    frames: int = 0
    frames_changed: tuple[int, ...] = ()
    objects_changed: tuple[int, ...] = ()
    prompts: tuple[dict[str, Any], ...] = ()
    created_at: str = ""
    author: str = ""
    base: str | None = None  # digest of the batch marker this corrects (None: no batch output)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": REVISION_FORMAT,
            "video_id": self.video_id,
            "revision": self.revision,
            "parent": self.parent,
            "parts_dir": self.parts_dir,
            "parts": [{"name": p.name, "rows": p.rows} for p in self.parts],
            "frames": self.frames,
            "frames_changed": list(self.frames_changed),
            "objects_changed": list(self.objects_changed),
            "prompts": list(self.prompts),
            "created_at": self.created_at,
            "author": self.author,
            "base": self.base,
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Revision:
        return cls(
            video_id=str(data["video_id"]),
            revision=int(data["revision"]),
            parent=None if data.get("parent") is None else int(data["parent"]),
            parts_dir=str(data["parts_dir"]),
            parts=tuple(PartInfo(str(p["name"]), int(p["rows"])) for p in data["parts"]),
            frames=int(data.get("frames", 0)),
            frames_changed=tuple(int(v) for v in data.get("frames_changed", ())),
            objects_changed=tuple(int(v) for v in data.get("objects_changed", ())),
            prompts=tuple(data.get("prompts", ())),
            created_at=str(data.get("created_at", "")),
            author=str(data.get("author", "")),
            base=data.get("base"),
            extra=dict(data.get("extra", {})),
        )


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def marker_digest(layout: OutputLayout, video_id: str) -> str | None:
    """sha256 of the video's completion marker, or None when the batch output has none."""
    payload = layout.read_bytes(layout.marker_uri(video_id))
    return None if payload is None else hashlib.sha256(payload).hexdigest()


class RevisionStore:
    """The revisions of one annotation output prefix."""

    def __init__(self, layout: OutputLayout):
        self.layout = layout

    def folder(self, video_id: str) -> str:
        return f"{self.layout.prefix}/revisions/video_id={check_video_id(video_id)}"

    def record_uri(self, video_id: str, revision: int) -> str:
        return f"{self.folder(video_id)}/r-{revision:05d}.json"

    # -- reading ----------------------------------------------------------------------------
    def revisions(self, video_id: str) -> list[Revision]:
        """Valid revisions (those that correct the current batch output), oldest first."""
        fs, path = self.layout._fs(self.folder(video_id))
        try:
            names = [n.rsplit("/", 1)[-1] for n in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
        base = marker_digest(self.layout, video_id)
        found = []
        for name in sorted(names):
            if not _RECORD.match(name):
                continue
            payload = self.layout.read_bytes(f"{self.folder(video_id)}/{name}")
            try:
                record = Revision.from_dict(json.loads(payload or b""))
            except (ValueError, KeyError, TypeError):
                continue
            if record.base == base:  # a rerun rewrote the batch output: stale otherwise
                found.append(record)
        return found

    def latest(self, video_id: str) -> Revision | None:
        revisions = self.revisions(video_id)
        return revisions[-1] if revisions else None

    def latest_number(self, video_id: str) -> int:
        latest = self.latest(video_id)
        return 0 if latest is None else latest.revision

    def get(self, video_id: str, revision: int) -> Revision:
        for record in self.revisions(video_id):
            if record.revision == revision:
                return record
        raise RevisionError(f"video {video_id} has no revision {revision}")

    def records(self, video_id: str, revision: int | None = None) -> list[MaskRecord]:
        """A revision's rows: the latest by default, 0 for the batch output."""
        from surgray.io.exports import read_parquet

        chosen = self.latest(video_id) if revision is None else None
        if revision is not None and revision != 0:
            chosen = self.get(video_id, revision)
        if chosen is None:
            if marker_digest(self.layout, video_id) is None:
                raise RevisionError(f"video {video_id} has no batch output and no revision")
            return read_video_records(self.layout, video_id)
        rows: list[MaskRecord] = []
        for part in chosen.parts:
            uri = f"{self.folder(video_id)}/{chosen.parts_dir}/{part.name}"
            rows.extend(read_parquet(uri, storage=self.layout.storage))
        return rows

    # -- writing ----------------------------------------------------------------------------
    def save(
        self,
        video_id: str,
        *,
        parent: int,
        records: Sequence[MaskRecord],
        frames: int,
        frames_changed: Iterable[int],
        objects_changed: Iterable[int],
        prompts: Sequence[dict[str, Any]] = (),
        author: str,
        extra: dict[str, Any] | None = None,
    ) -> Revision:
        """Write revision `parent + 1` holding `records` (all rows of the video).

        Raises RevisionConflict when `parent` is not the latest revision any more.
        """
        from surgray.io.exports import write_parquet

        check_video_id(video_id)
        for record in records:
            if record.video_id != video_id:
                raise RevisionError(f"a row of video {record.video_id} in a save of {video_id}")
        with _lock(self.folder(video_id)):
            latest = self.latest_number(video_id)
            if parent != latest:
                raise RevisionConflict(
                    f"video {video_id} was saved by someone else meanwhile: revision {latest} "
                    f"is the latest, this save started from revision {parent}; reload it and "
                    "apply the correction again"
                )
            number = parent + 1
            parts_dir = f"r-{number:05d}-{secrets.token_hex(4)}"
            ordered = sorted(records, key=lambda r: (r.frame_idx, r.obj_id))
            parts = []
            for index in range(0, max(len(ordered), 1), ROWS_PER_PART):
                chunk = ordered[index : index + ROWS_PER_PART]
                name = f"part-{index // ROWS_PER_PART:05d}.parquet"
                uri = f"{self.folder(video_id)}/{parts_dir}/{name}"
                rows = write_parquet(uri, chunk, storage=self.layout.storage)
                parts.append(PartInfo(name, rows))
            record = Revision(
                video_id=video_id,
                revision=number,
                parent=parent,
                parts_dir=parts_dir,
                parts=tuple(parts),
                frames=int(frames),
                frames_changed=tuple(sorted({int(f) for f in frames_changed})),
                objects_changed=tuple(sorted({int(o) for o in objects_changed})),
                prompts=tuple(prompts),
                created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                author=author,
                base=marker_digest(self.layout, video_id),
                extra=dict(extra or {}),
            )
            payload = json.dumps(record.as_dict(), sort_keys=True, indent=1).encode()
            if not self._create(self.record_uri(video_id, number), payload):
                self.layout.remove(f"{self.folder(video_id)}/{parts_dir}", recursive=True)
                raise RevisionConflict(
                    f"video {video_id}: revision {number} was created by another save at the "
                    "same moment; reload it and apply the correction again"
                )
            return record

    def _create(self, uri: str, payload: bytes) -> bool:
        """Create `uri` only if it does not exist; False when it does."""
        from surgray.io.storage import is_local, local_path

        if is_local(uri):
            import os

            path = local_path(uri)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                with open(path, "xb") as handle:
                    handle.write(payload)
            except FileExistsError:
                return False
            return True
        fs, path = self.layout._fs(uri)
        if fs.exists(path):
            return False
        try:  # s3fs: a conditional put (If-None-Match: *) where the store supports it
            fs.pipe_file(path, payload, mode="create")
        except FileExistsError:
            return False
        except (TypeError, NotImplementedError, ValueError):
            fs.pipe_file(path, payload)
        return True


def apply_correction(
    base: Sequence[MaskRecord], obj_id: int, from_frame: int, new: Sequence[MaskRecord]
) -> list[MaskRecord]:
    """`base` with object `obj_id`'s rows from `from_frame` on replaced by `new`."""
    kept = [r for r in base if not (r.obj_id == obj_id and r.frame_idx >= from_frame)]
    return kept + list(new)


def read_latest_records(
    layout: OutputLayout, video_id: str, revision: int | None = None
) -> list[MaskRecord]:
    """A video's rows from its latest reviewed revision (or `revision`; 0 = batch output).

    The reader the evaluation and exports use, in place of `outputs.read_video_records`.
    Raises FileNotFoundError when the video has neither a batch output nor a revision.
    """
    store = RevisionStore(layout)
    try:
        return store.records(video_id, revision)
    except RevisionError as exc:
        if revision is None:
            raise FileNotFoundError(str(exc)) from None
        raise


def store_mask_table(root: str | os.PathLike[str], *, storage: Storage = LOCAL) -> Any:
    """Every complete video of the annotation store at `root`, each from its latest reviewed
    revision, as one Arrow table of mask rows (what `surgray eval` scores)."""
    from surgray.io.exports import mask_table

    layout = OutputLayout(os.fspath(root), storage=storage)
    records: list[MaskRecord] = []
    for name in sorted(layout.names_in("_done")):
        if name.endswith(".json"):
            records += read_latest_records(layout, name.removesuffix(".json"))
    return mask_table(records)
