"""Ref-EndoVis17/18 (referring video object segmentation on EndoVis, from ReSurgSAM2).

    <root>/{train,valid}/JPEGImages/<video>/00000.png
                        /Annotations/<video>/00000.png   palette PNG, value = object id
                        /Meta/<video>.json               info.category[obj_id];
                                                         frames[frame][obj_id] = {action, location, unique}
    <root>/valid/meta_expressions.json                   videos -> {expressions: {exp_id: {exp, obj_id}},
                                                                   frames, first_frame: {exp_id: frame}}

Expressions come from meta_expressions.json when the split has one. Otherwise (the train split)
one expression per object is made from the templates, as ReSurgSAM2 does on the fly, at the
first frame whose Meta entry lists the object; the text keeps the dataset's own category
spelling (e.g. "kidney-parenchyma") so it matches what such models were trained on, while
`ObjectMeta.category` carries the canonical name.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from surgray.data.categories import NO_ACTION
from surgray.data.davis import DavisDataset
from surgray.data.expressions import ReferringExpression, object_expression
from surgray.data.files import DatasetError, exists, join_uri, read_json
from surgray.data.sample import VideoSample
from surgray.io.storage import LOCAL, Storage


def expressions_from_file(entry: Any, uri: str, video_id: str) -> tuple[ReferringExpression, ...]:
    try:
        first_frames = entry.get("first_frame", {})
        return tuple(
            ReferringExpression(
                exp_id=str(exp_id),
                text=str(item["exp"]),
                obj_id=int(item["obj_id"]),
                first_frame=int(first_frames[exp_id]) if exp_id in first_frames else None,
            )
            for exp_id, item in entry["expressions"].items()
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"{uri}: malformed expressions of video {video_id!r}: {exc!r}") from exc


def expressions_from_meta(
    sample: VideoSample, meta: Any, location_when_ambiguous: bool
) -> tuple[ReferringExpression, ...]:
    """Template expressions at each object's first listed frame (Ref-EndoVis train split)."""
    frames = meta.get("frames", {})
    expressions = []
    for obj in sample.objects:
        for frame_index, name in enumerate(sample.frame_names):
            entry = frames.get(name, {}).get(str(obj.obj_id))
            if entry is None:
                continue
            category = obj.source_name or obj.category or str(obj.obj_id)
            action = int(entry.get("action", NO_ACTION))
            unique = bool(entry.get("unique", True)) or not location_when_ambiguous
            kind = obj.kind or ("instrument" if action != NO_ACTION else "tissue")
            text = object_expression(
                category, kind, action, int(entry.get("location", 0)) or None, unique
            )
            expressions.append(
                ReferringExpression(str(len(expressions)), text, obj.obj_id, frame_index)
            )
            break
    return tuple(expressions)


class RefEndoVisDataset(DavisDataset):
    """One split of Ref-EndoVis17/18. `location_when_ambiguous` adds " on the <location>" to
    template expressions of non-unique instruments (EndoVis17 style; EndoVis18 omits it)."""

    def __init__(
        self,
        root: str,
        split: str = "valid",
        *,
        location_when_ambiguous: bool = True,
        dataset_name: str = "ref-endovis",
        storage: Storage = LOCAL,
    ) -> None:
        super().__init__(root, split, dataset_name=dataset_name, storage=storage)
        self.location_when_ambiguous = location_when_ambiguous
        self.expressions_uri = join_uri(self.base, "meta_expressions.json")
        self._expression_videos: dict[str, Any] | None = None
        if exists(self.expressions_uri, "file", storage=storage):
            data = read_json(self.expressions_uri, "expressions file", storage=storage)
            if not isinstance(data, dict) or not isinstance(data.get("videos"), dict):
                raise DatasetError(
                    f"{self.expressions_uri}: expected {{'videos': {{video id: ...}}}}"
                )
            self._expression_videos = data["videos"]

    def sample(self, video_id: str) -> VideoSample:
        sample = super().sample(video_id)
        if sample.meta_uri is None:
            raise DatasetError(
                f"{self.meta_path(video_id)}: Meta file not found (Ref-EndoVis needs one per video)"
            )
        if self._expression_videos is not None:
            if video_id not in self._expression_videos:
                raise DatasetError(f"{self.expressions_uri}: no expressions for video {video_id!r}")
            expressions = expressions_from_file(
                self._expression_videos[video_id], self.expressions_uri, video_id
            )
        else:
            meta = read_json(sample.meta_uri, "Meta file", storage=self.storage)
            expressions = expressions_from_meta(sample, meta, self.location_when_ambiguous)
        known = {o.obj_id for o in sample.objects}
        for expression in expressions:
            if expression.obj_id not in known:
                raise DatasetError(
                    f"{self.expressions_uri}: expression {expression.exp_id!r} of {video_id!r} refers to object {expression.obj_id}, which Meta does not list"
                )
        return replace(sample, expressions=expressions)
