"""Per-video prompts: text expressions, and points / boxes / masks per object at given frames.

The JSON form of object prompts (a manifest's `prompts` cell):

    {"objects": [
        {"obj_id": 1, "label": "grasper", "frame": 0, "points": [[x, y]], "labels": [1]},
        {"obj_id": 2, "frame": 5, "box": [x0, y0, x1, y1]},
        {"obj_id": 3, "frame": 0, "mask_rle": {"size": [h, w], "counts": "..."}}]}

Text expressions (a manifest's `text` cell) are strings, or `{"text": ..., "obj_id": N}` to give
the object its id: that id is the object's id in the Parquet rows, the PNG exports and the
evaluation (so ground truth written with the same ids scores directly). Expressions without an
id get the smallest ids from 1 up that no expression of the video names.

`labels` are 1 (foreground click) or 0 (background click) and default to all 1. Points and a
box may be combined in one entry (as SAM2 allows); a mask stands alone. Coordinates are pixels
of the source frame. Parsing raises `PromptError` with a reason fit for a row report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from surgray.errors import UserError

_OBJECT_KEYS = ("obj_id", "label", "frame", "points", "labels", "box", "mask_rle")
MAX_MASK_SIDE = 16384  # a mask prompt larger than this on a side is refused (no video is)


class PromptError(UserError, ValueError):
    """A prompt cannot be used; the message says which one and why."""


@dataclass(frozen=True)
class MaskRle:
    size: tuple[int, int]  # (height, width)
    counts: str | tuple[int, ...]  # compressed COCO string, or uncompressed runs

    def as_dict(self) -> dict[str, Any]:
        counts = self.counts if isinstance(self.counts, str) else list(self.counts)
        return {"size": list(self.size), "counts": counts}


@dataclass(frozen=True)
class ObjectPrompt:
    """One object's prompt on one frame."""

    obj_id: int
    frame: int
    label: str | None = None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    mask_rle: MaskRle | None = None

    @property
    def kind(self) -> str:
        if self.mask_rle is not None:
            return "mask"
        if self.box is not None:
            return "box+points" if self.points else "box"
        return "points"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"obj_id": self.obj_id, "frame": self.frame}
        if self.label is not None:
            out["label"] = self.label
        if self.points:
            out["points"] = [list(p) for p in self.points]
            out["labels"] = list(self.point_labels)
        if self.box is not None:
            out["box"] = list(self.box)
        if self.mask_rle is not None:
            out["mask_rle"] = self.mask_rle.as_dict()
        return out


@dataclass(frozen=True)
class VideoPrompts:
    texts: tuple[str, ...] = ()
    objects: tuple[ObjectPrompt, ...] = ()
    # The obj_id each text asked for (None: assigned), one per text; () when none asked.
    text_ids: tuple[int | None, ...] = ()

    def __post_init__(self) -> None:
        if self.text_ids and len(self.text_ids) != len(self.texts):
            raise PromptError(f"{len(self.text_ids)} text obj_ids for {len(self.texts)} texts")
        given = [i for i in self.text_ids if i is not None]
        if len(given) != len(set(given)):
            raise PromptError(f"text: obj_id values must be unique, got {given}")

    @classmethod
    def from_cells(cls, text: Any, objects: Any = None) -> VideoPrompts:
        """A manifest row's `text` and `prompts` cells, parsed."""
        texts, ids = parse_text_prompts(text)
        return cls(texts, parse_objects(objects), ids if any(i is not None for i in ids) else ())

    def text_objects(self) -> list[tuple[int, str]]:
        """(obj_id, expression) of every text: the id it names, else the next free id >= 1."""
        given = {i for i in self.text_ids if i is not None}
        ids = self.text_ids or (None,) * len(self.texts)
        out, free = [], 1
        for obj_id, text in zip(ids, self.texts):
            if obj_id is None:
                while free in given:
                    free += 1
                obj_id, free = free, free + 1
            out.append((obj_id, text))
        return out

    @property
    def empty(self) -> bool:
        return not self.texts and not self.objects

    @property
    def text_only(self) -> bool:
        return bool(self.texts) and not self.objects

    def with_texts(self, first: tuple[str, ...]) -> VideoPrompts:
        """These prompts with `first` (the job-wide expressions) ahead of their own, deduplicated
        (a text keeps the obj_id the video's own prompts give it)."""
        own = dict(zip(self.texts, self.text_ids or (None,) * len(self.texts)))
        texts = tuple(dict.fromkeys((*first, *self.texts)))
        ids = tuple(own.get(text) for text in texts) if self.text_ids else ()
        return VideoPrompts(texts, self.objects, ids)

    def as_dict(self) -> dict[str, Any]:
        ordered = sorted(self.objects, key=lambda o: (o.obj_id, o.frame))
        out = {"texts": list(self.texts), "objects": [o.as_dict() for o in ordered]}
        if self.text_ids:  # only when asked for, so earlier runs' prompt hashes stay the same
            out["text_ids"] = list(self.text_ids)
        return out

    def to_json(self) -> str:
        """Canonical JSON: the same prompts always give the same text (it is hashed)."""
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    @classmethod
    def from_json(cls, text: str) -> VideoPrompts:
        data = json.loads(text)
        return cls(
            parse_texts(data.get("texts")),
            parse_objects({"objects": data["objects"]}),
            tuple(data.get("text_ids") or ()),
        )


def parse_texts(value: Any) -> tuple[str, ...]:
    """Text expressions from a list, a JSON list, or a `;`-separated string; None gives ()."""
    return parse_text_prompts(value)[0]


def _text_item(index: int, item: Any) -> tuple[str, int | None]:
    obj_id = None
    if isinstance(item, dict):
        unknown = sorted(set(item) - {"text", "obj_id"})
        if unknown or "text" not in item:
            raise PromptError(
                f'text: expression {index} must be a string or {{"text": ..., "obj_id": N}}, '
                f"got keys {sorted(item)}"
            )
        obj_id, item = item.get("obj_id"), item["text"]
        if obj_id is not None and (not _whole(obj_id) or obj_id < 1):
            raise PromptError(
                f"text: expression {index}: obj_id must be an integer >= 1, got {obj_id!r}"
            )
        obj_id = None if obj_id is None else int(obj_id)
    if not isinstance(item, str):
        raise PromptError(f"text: expression {index} is not a string: {item!r:.40}")
    if not item.strip():
        raise PromptError(f"text: expression {index} is empty")
    return item.strip(), obj_id


def parse_text_prompts(value: Any) -> tuple[tuple[str, ...], tuple[int | None, ...]]:
    """(expressions, the obj_id each asks for or None) from a list (of strings or
    `{"text", "obj_id"}` objects), a JSON list, or a `;`-separated string; None gives ()."""
    if value is None:
        return (), ()
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            try:
                value = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise PromptError(f"text: bad JSON list: {exc.msg}") from None
        else:
            value = stripped.split(";") if stripped else []
    if not isinstance(value, (list, tuple)):
        raise PromptError(
            f"text: expected a list or a ';'-separated string, got {type(value).__name__}"
        )
    chosen: dict[str, int | None] = {}  # first occurrence of an expression wins
    for index, item in enumerate(value):
        text, obj_id = _text_item(index, item)
        chosen.setdefault(text, obj_id)
    given = [i for i in chosen.values() if i is not None]
    if len(given) != len(set(given)):
        raise PromptError(f"text: obj_id values must be unique, got {given}")
    return tuple(chosen), tuple(chosen.values())


def parse_objects(value: Any) -> tuple[ObjectPrompt, ...]:
    """Object prompts from the JSON form (a string or an already-parsed dict); None gives ()."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise PromptError(f"prompts: bad JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(value, dict):
        raise PromptError(f'prompts: expected {{"objects": [...]}}, got {type(value).__name__}')
    unknown = sorted(set(value) - {"objects"})
    if unknown:
        raise PromptError(f"prompts: unknown key {unknown[0]!r} (expected only 'objects')")
    entries = value.get("objects")
    if not isinstance(entries, (list, tuple)):
        raise PromptError("prompts: 'objects' must be a list")
    objects = tuple(_parse_object(n, entry) for n, entry in enumerate(entries))
    _check_consistent(objects)
    return objects


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value: Any, count: int | None) -> tuple[float, ...] | None:
    if not isinstance(value, (list, tuple)) or (count is not None and len(value) != count):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    numbers = tuple(float(v) for v in value)
    return numbers if all(math.isfinite(v) and v >= 0 for v in numbers) else None


def _parse_object(index: int, entry: Any) -> ObjectPrompt:
    where = f"prompts: object {index}"
    if not isinstance(entry, dict):
        raise PromptError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    # Parquet structs give every field to every entry, null where it was not set.
    entry = {key: value for key, value in entry.items() if value is not None}
    for key in entry:
        if key not in _OBJECT_KEYS:
            raise PromptError(
                f"{where}: unknown prompt kind {key!r} (use points/labels, box or mask_rle)"
            )
    obj_id, frame, label = entry.get("obj_id"), entry.get("frame"), entry.get("label")
    if not _whole(obj_id) or obj_id < 0:
        raise PromptError(f"{where}: obj_id must be an integer >= 0, got {obj_id!r}")
    where = f"prompts: object {index} (obj_id {obj_id})"
    if not _whole(frame) or frame < 0:
        raise PromptError(f"{where}: frame must be an integer >= 0, got {frame!r}")
    if label is not None and (not isinstance(label, str) or not label.strip()):
        raise PromptError(f"{where}: label must be a non-empty string, got {label!r}")
    points, point_labels = _parse_points(where, entry)
    box = None
    if "box" in entry:
        box = _numbers(entry["box"], 4)
        if box is None:
            raise PromptError(f"{where}: box must be 4 numbers >= 0, got {entry['box']!r:.60}")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise PromptError(f"{where}: box needs x0 < x1 and y0 < y1, got {list(box)}")
    mask = _parse_mask(where, entry["mask_rle"]) if "mask_rle" in entry else None
    if mask is not None and (points or box is not None):
        raise PromptError(f"{where}: mask_rle cannot be combined with points or box")
    if mask is None and not points and box is None:
        raise PromptError(f"{where}: no prompt; give points, box or mask_rle")
    return ObjectPrompt(
        obj_id=obj_id,
        frame=frame,
        label=label.strip() if label else None,
        points=points,
        point_labels=point_labels,
        box=box,  # type: ignore[arg-type]
        mask_rle=mask,
    )


def _parse_points(where: str, entry: dict[str, Any]) -> tuple[tuple, tuple[int, ...]]:
    if "points" not in entry:
        if "labels" in entry:
            raise PromptError(f"{where}: labels given without points")
        return (), ()
    raw = entry["points"]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise PromptError(f"{where}: points must be a non-empty list of [x, y]")
    points = tuple(_numbers(p, 2) for p in raw)
    if any(p is None for p in points):
        raise PromptError(f"{where}: every point must be [x, y] with numbers >= 0")
    labels = entry.get("labels", [1] * len(points))
    if not isinstance(labels, (list, tuple)) or len(labels) != len(points):
        raise PromptError(f"{where}: labels must be a list with one 0/1 per point")
    if any(not _whole(v) or v not in (0, 1) for v in labels):
        raise PromptError(f"{where}: labels must be 1 (foreground) or 0 (background), got {labels}")
    return points, tuple(labels)


def _parse_mask(where: str, raw: Any) -> MaskRle:
    from surgray.io.errors import MaskFormatError
    from surgray.io.rle_check import check_rle

    if not isinstance(raw, dict) or set(raw) != {"size", "counts"}:
        raise PromptError(f"{where}: mask_rle must be {{'size': [h, w], 'counts': ...}}")
    size = raw["size"]
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(_whole(v) and v > 0 for v in size)
    ):
        raise PromptError(f"{where}: mask_rle size must be [height, width] > 0, got {size!r}")
    counts = raw["counts"]
    if isinstance(counts, (list, tuple)):
        counts = tuple(counts)
    elif not isinstance(counts, str):
        raise PromptError(f"{where}: mask_rle counts must be a string or a list of runs")
    rle = MaskRle((size[0], size[1]), counts)
    try:  # checked from its runs: a row declaring a huge mask allocates nothing
        _, area = check_rle(rle.as_dict(), max_side=MAX_MASK_SIDE, where="mask_rle")
    except MaskFormatError as exc:
        raise PromptError(f"{where}: mask_rle does not decode: {exc}") from None
    if area == 0:
        raise PromptError(f"{where}: mask_rle has no foreground pixels")
    return rle


def _check_consistent(objects: tuple[ObjectPrompt, ...]) -> None:
    seen: set[tuple[int, int]] = set()
    labels: dict[int, str] = {}
    for obj in objects:
        if (obj.obj_id, obj.frame) in seen:
            raise PromptError(
                f"prompts: obj_id {obj.obj_id} has two prompts at frame {obj.frame}; "
                "put its points and box in one entry"
            )
        seen.add((obj.obj_id, obj.frame))
        if obj.label is not None:
            if labels.setdefault(obj.obj_id, obj.label) != obj.label:
                raise PromptError(
                    f"prompts: obj_id {obj.obj_id} has two labels "
                    f"{labels[obj.obj_id]!r} and {obj.label!r}"
                )
