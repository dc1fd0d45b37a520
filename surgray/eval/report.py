"""Typed evaluation results and their table / CSV / JSON forms.

Scores are fractions in [0, 1]; the terminal table shows them in percent, as the papers do.
NaN (nothing to average) becomes an empty CSV cell, ``null`` in JSON and "-" in the table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

CSV_COLUMNS = (
    "scope",
    "video",
    "object_id",
    "group",
    "objects",
    "frames",
    "J",
    "F",
    "J&F",
    "Dice",
    "challenge_iou",
    "challenge_frames",
)


@dataclass(frozen=True)
class ObjectResult:
    """One object of one video: means over the frames it was scored on."""

    video: str
    object_id: int
    group: str | None
    frames: int
    j: float
    f: float
    dice: float

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


@dataclass(frozen=True)
class ChallengeTally:
    """Sum of per-frame Challenge IoUs and how many frames had a ground-truth object."""

    total: float = 0.0
    frames: int = 0

    def __add__(self, other: ChallengeTally) -> ChallengeTally:
        return ChallengeTally(self.total + other.total, self.frames + other.frames)

    @property
    def mean(self) -> float:
        return self.total / self.frames if self.frames else math.nan


@dataclass(frozen=True)
class Summary:
    """Means over objects (J, F, J&F, Dice) and over frames (Challenge IoU)."""

    name: str
    objects: int
    frames: int  # evaluated frames
    j: float
    f: float
    dice: float
    challenge_iou: float
    challenge_frames: int

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2

    @classmethod
    def of(
        cls, name: str, objects: list[ObjectResult], frames: int, challenge: ChallengeTally
    ) -> Summary:
        def mean(values: list[float]) -> float:
            return math.fsum(values) / len(values) if values else math.nan

        return cls(
            name=name,
            objects=len(objects),
            frames=frames,
            j=mean([o.j for o in objects]),
            f=mean([o.f for o in objects]),
            dice=mean([o.dice for o in objects]),
            challenge_iou=challenge.mean,
            challenge_frames=challenge.frames,
        )


@dataclass(frozen=True)
class VideoResult:
    video: str
    frames: int  # evaluated frames (after skipping the first and last, when asked)
    objects: tuple[ObjectResult, ...]
    summary: Summary
    # Challenge IoU tallies: "all" plus one per id group, pooled over videos for the dataset.
    challenge: dict[str, ChallengeTally] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationReport:
    options: dict  # the EvalOptions used, as plain data
    videos: tuple[VideoResult, ...]
    overall: Summary
    groups: tuple[Summary, ...]

    @property
    def objects(self) -> tuple[ObjectResult, ...]:
        return tuple(o for v in self.videos for o in v.objects)

    def rows(self) -> list[dict]:
        """One row per object, per video, for the dataset and for each id group."""
        rows = [
            _row("object", o.video, o.object_id, o.group, 1, o.frames, o.j, o.f, o.dice)
            for o in self.objects
        ]
        rows += [_summary_row("video", v.summary, video=v.video) for v in self.videos]
        rows.append(_summary_row("dataset", self.overall))
        rows += [_summary_row(f"group:{g.name}", g, group=g.name) for g in self.groups]
        return rows

    def to_csv(self, path: str | Path | None = None) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows():
            writer.writerow({k: "" if v is None or _is_nan(v) else v for k, v in row.items()})
        text = buffer.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_dict(self) -> dict:
        return {
            "options": self.options,
            "overall": _summary_dict(self.overall),
            "groups": [_summary_dict(g) for g in self.groups],
            "videos": [
                {
                    "video": v.video,
                    "frames": v.frames,
                    "summary": _summary_dict(v.summary),
                    "objects": [_clean({**asdict(o), "jf": o.jf}) for o in v.objects],
                }
                for v in self.videos
            ],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_table(self) -> str:
        """Aligned text: objects, then video means, then the global scores (in percent)."""
        header = ("video", "obj", "group", "frames", "J&F", "J", "F", "Dice", "CIoU")
        blocks: list[list[tuple[str, ...]]] = [
            [
                (
                    o.video,
                    f"{o.object_id:03d}",
                    o.group or "",
                    str(o.frames),
                    *_pct(o.jf, o.j, o.f, o.dice),
                    "",
                )
                for o in self.objects
            ],  # fmt: skip
            [_summary_cells(v.video, "all", v.summary) for v in self.videos],
            [_summary_cells("Global score", "", self.overall)]
            + [_summary_cells(f"Global ({g.name})", "", g) for g in self.groups],
        ]
        lines = [line for block in blocks for line in block]
        widths = [max(len(r[i]) for r in (header, *lines)) for i in range(len(header))]

        def fmt(r: tuple[str, ...]) -> str:
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
            return "  ".join(cells).rstrip()

        rule = "-" * len(fmt(header))
        out = [fmt(header)]
        for block in blocks:
            if block:
                out.append(rule)
                out += [fmt(r) for r in block]
        return "\n".join(out)


def _row(scope, video, object_id, group, objects, frames, j, f, dice, ciou=None, cframes=None):
    values = (
        scope,
        video,
        object_id,
        group,
        objects,
        frames,
        j,
        f,
        (j + f) / 2,
        dice,
        ciou,
        cframes,
    )
    return dict(zip(CSV_COLUMNS, values))


def _summary_row(scope: str, s: Summary, video: str | None = None, group: str | None = None):
    return _row(scope, video, None, group, s.objects, s.frames, s.j, s.f, s.dice,
                s.challenge_iou, s.challenge_frames)  # fmt: skip


def _summary_cells(label: str, obj: str, s: Summary) -> tuple[str, ...]:
    return (label, obj, "", str(s.frames), *_pct(s.jf, s.j, s.f, s.dice, s.challenge_iou))


def _summary_dict(s: Summary) -> dict:
    return _clean({**asdict(s), "jf": s.jf})


def _pct(*values: float) -> list[str]:
    return ["-" if _is_nan(v) else f"{100 * v:.2f}" for v in values]


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _clean(d: dict) -> dict:
    return {k: (None if _is_nan(v) else v) for k, v in d.items()}
