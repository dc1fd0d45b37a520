"""One work item being tracked: its frames read in order, its prompts applied on their frames,
its masks written as rows. Ray-free; `surgray.annotate.actor` drives one or several at once.

Frame indices. Rows use the source video's frame index. The tracker numbers the frames it is
given 0, 1, 2, ... (`state.next_frame_idx`), so with a stride, a target fps or a skip hook the
two differ; a prompt for source frame f is handed to the tracker just before f is stepped,
under the tracker's index for f. A prompted frame is tracked even if the skip hook would drop
it: the prompt says the object is visible there.

Rows. Every tracked frame gets one row per prompted object, also before the object's first
prompt (an empty mask, score 0), so a video's keys are exactly frames x objects. Tracking is
forward only (streaming): an object has no mask before the frame it was prompted on.
`score` is the decoder's predicted IoU of the mask.

Text prompts (ReSurgSAM2 checkpoints). Each expression is its own object, ids 1..N in
expression order, labelled with its text, added before the segment's first frame: it searches
from there (credible initial frame selection) and then tracks. Every work item starts a fresh
tracker state, so each segment of a split video runs that selection on its own. Rows carry the
object's `state`.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from surgray.annotate.logsafe import logger, redact, video_label
from surgray.annotate.outputs import OutputLayout, SegmentResult
from surgray.annotate.plan import WorkItem
from surgray.annotate.prompts import ObjectPrompt
from surgray.annotate.provenance import Provenance
from surgray.annotate.row_provenance import row_provenance
from surgray.annotate.rows import DEFAULT_STATE, ProvenanceSegmentWriter
from surgray.errors import UserError
from surgray.io.records import MaskRecord
from surgray.io.storage import Storage

TEXT_PROMPTS_UNSUPPORTED = (
    "text prompts need a referring (ReSurgSAM2) checkpoint; model.checkpoint is a plain SAM2 one"
)
CLICKS_COLUMN = "eval_clicks_json"  # optional work-row column: simulated clicks (evaluation)
FRAME_COUNT_COLUMN = "frame_count"  # optional work-row column: exact frame count, -1 unknown


class TextPromptsUnsupported(UserError, NotImplementedError):
    pass


@dataclass(frozen=True)
class ClickTarget:
    """Evaluation clicks: `num_clicks` clicks simulated against a ground-truth mask on a frame
    (SAM2S's protocol, `surgray.train.clicks.evaluation_clicks`)."""

    obj_id: int
    frame: int
    num_clicks: int
    mask_rle: dict[str, Any]
    label: str | None = None

    @classmethod
    def parse_all(cls, text: str | None) -> tuple[ClickTarget, ...]:
        if not text:
            return ()
        return tuple(cls(**entry) for entry in json.loads(text))


@dataclass
class RunContext:
    """What every work item of an actor shares."""

    tracker: Any  # surgray.tracking.Tracker
    layout: OutputLayout
    storage: Storage
    stride: int = 1
    target_fps: float | None = None
    skip_hook: Callable[[Any], bool] | None = None
    rows_per_part: int = 50_000
    # Makes the model ready for text (loads the text encoder once); None: the model has no
    # referring head, so text prompts are refused.
    text_ready: Callable[[], None] | None = None


@dataclass
class VideoRun:
    """A work item from `open()` to `finish()`; see the module docstring."""

    item: WorkItem
    provenance: Provenance
    ctx: RunContext
    clicks: tuple[ClickTarget, ...] = ()
    frame_count: int | None = None
    frames: int = 0
    skipped: int = 0
    started: float = field(default_factory=time.monotonic)
    _prompts: dict[int, list[ObjectPrompt]] = field(default_factory=dict)
    _clicks_at: dict[int, list[ClickTarget]] = field(default_factory=dict)
    _objects: dict[int, str] = field(default_factory=dict)  # obj_id -> label
    _texts: dict[int, str] = field(default_factory=dict)  # obj_id -> expression
    _reader: Any = None
    _iter: Iterator[Any] | None = None
    _writer: ProvenanceSegmentWriter | None = None
    state: Any = None

    @classmethod
    def from_row(cls, row: dict[str, Any], ctx: RunContext) -> VideoRun:
        provenance = row_provenance(row)  # the row carries the prompts once
        count = int(row.get(FRAME_COUNT_COLUMN) or -1)
        return cls(
            WorkItem.from_row(row),
            provenance,
            ctx,
            clicks=ClickTarget.parse_all(row.get(CLICKS_COLUMN)),
            frame_count=count if count > 0 else None,
        )

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> VideoRun:
        from surgray.io.video import VideoReader

        prompts = self.item.prompts
        if prompts.texts:
            if self.ctx.text_ready is None:
                raise TextPromptsUnsupported(TEXT_PROMPTS_UNSUPPORTED)
            if prompts.objects:
                raise ValueError("text prompts cannot be mixed with point, box or mask prompts")
            self.ctx.text_ready()
            for obj_id, text in prompts.text_objects():  # the ids the user gave, else 1, 2, ...
                self._texts[obj_id] = text
                self._objects[obj_id] = text
        for obj in prompts.objects:
            self._prompts.setdefault(obj.frame, []).append(obj)
            self._objects.setdefault(obj.obj_id, obj.label or "")
            if obj.label:
                self._objects[obj.obj_id] = obj.label
        for target in self.clicks:
            self._clicks_at.setdefault(target.frame, []).append(target)
            self._objects.setdefault(target.obj_id, target.label or "")
        if not self._objects:
            raise ValueError("no object prompts to track")
        self._reader = VideoReader(
            self.item.video_uri,
            storage=self.ctx.storage,
            stride=self.ctx.stride,
            target_fps=self.ctx.target_fps,
            start_frame=self.item.start_frame,
            end_frame=self.item.end_frame,
        )
        self._iter = iter(self._reader)
        self._writer = ProvenanceSegmentWriter(
            self.ctx.layout,
            self.item.video_id,
            self.item.segment_index,
            self.provenance,
            self.ctx.rows_per_part,
        ).start()
        return self

    def next_frame(self) -> Any | None:
        """The next frame to track (skip hook applied), or None at the end of the segment."""
        assert self._iter is not None, "open() first"
        for frame in self._iter:
            prompted = frame.index in self._prompts or frame.index in self._clicks_at
            if self.ctx.skip_hook is not None and not prompted and self.ctx.skip_hook(frame):
                self.skipped += 1
                continue
            return frame
        return None

    def prepare(self, frame: Any) -> Any:
        """Start the tracker state on the first frame and queue the frame's prompts; returns
        the state to step."""
        tracker = self.ctx.tracker
        if self.state is None:
            whole = self.ctx.stride == 1 and self.ctx.target_fps is None
            known = self.frame_count if whole and self.ctx.skip_hook is None else None
            if known is not None and self.item.start_frame == 0 and self.item.end_frame is None:
                num_frames = known
            else:
                num_frames = None
            self.state = tracker.start(
                self.item.video_id, frame.image.shape[:2], num_frames=num_frames
            )
            for obj_id, text in self._texts.items():
                tracker.add_text(self.state, obj_id, text, label=text)
        index = self.state.next_frame_idx
        for obj in self._prompts.pop(frame.index, []):
            label = obj.label
            if obj.mask_rle is not None:
                from surgray.io.masks import decode_rle

                mask = decode_rle([obj.mask_rle.as_dict()])[0]
                tracker.add_mask(self.state, obj.obj_id, index, mask, label)
            elif obj.box is not None:
                points = labels = None
                if obj.points:
                    points, labels = np.asarray(obj.points), np.asarray(obj.point_labels)
                tracker.add_box(
                    self.state, obj.obj_id, index, obj.box, label, points=points, labels=labels
                )
            else:
                tracker.add_points(
                    self.state, obj.obj_id, index, np.asarray(obj.points),
                    np.asarray(obj.point_labels), label,
                )  # fmt: skip
        return self.state

    def record(self, frame: Any, result: Any) -> None:
        """Apply evaluation clicks on this frame, then write the frame's rows."""
        targets = self._clicks_at.pop(frame.index, [])
        if targets:
            result = self._simulate_clicks(targets, result.frame_idx)
        by_id = {o.obj_id: o for o in result.objects}
        height, width = frame.image.shape[:2]
        ids = sorted(self._objects)
        masks = np.zeros((len(ids), height, width), bool)
        scores, states = [], []
        for n, obj_id in enumerate(ids):
            out = by_id.get(obj_id)
            if out is not None:
                masks[n] = out.mask
            scores.append(float(out.predicted_iou) if out is not None else 0.0)
            states.append(out.state if out is not None else DEFAULT_STATE)
        labels = [self._objects[i] for i in ids]
        assert self._writer is not None
        self._writer.add(
            MaskRecord.from_masks(self.item.video_id, frame.index, ids, labels, scores, masks),
            states,
        )
        self.frames += 1

    def _simulate_clicks(self, targets: list[ClickTarget], index: int) -> Any:
        import torch

        from surgray.io.masks import decode_rle
        from surgray.train.clicks import evaluation_clicks

        tracker = self.ctx.tracker
        for target in targets:
            gt = torch.from_numpy(decode_rle([target.mask_rle])[0])

            def predict(points, labels, obj_id=target.obj_id, label=target.label):
                out = tracker.add_points(
                    self.state, obj_id, index, points.numpy(), labels.numpy(), label
                )
                return torch.from_numpy(out.get(obj_id).mask)

            clicks = evaluation_clicks(gt, predict, target.num_clicks)
            tracker.add_points(
                self.state, target.obj_id, index, clicks.points.numpy(),
                clicks.labels.numpy(), target.label,
            )  # fmt: skip
        return tracker.result(self.state, index)

    def finish(self) -> SegmentResult:
        """Close the writer and report; prompts never reached are an error."""
        assert self._writer is not None
        missed = sorted(f for f in (*self._prompts, *self._clicks_at))
        if missed:
            raise ValueError(
                f"prompts at frames {missed} were never reached: the segment ended after "
                f"{self.frames + self.skipped} sampled frames (frames "
                f"{self.item.start_frame}..{'end' if self.item.end_frame is None else self.item.end_frame})"
            )
        parts = self._writer.close()
        self.close()
        return self._result(parts=parts)

    def fail(self, error: BaseException) -> SegmentResult:
        self.close()
        if self._writer is not None:  # a failed segment leaves no parts behind
            self._writer.discard()
        message = f"{type(error).__name__}: {error}"
        if isinstance(error, TextPromptsUnsupported):
            message = str(error)
        if not isinstance(error, UserError):
            # Not the input's fault: the status record keeps one line, the actor's log the
            # traceback (redacted like the record) for whoever has to fix it.
            trace = "".join(traceback.format_exception(error))
            logger.warning(
                "%s failed in segment %d:\n%s",
                video_label(self.item.video_id),
                self.item.segment_index,
                redact(trace, self.item.video_uri, self.item.video_id),
            )
        return self._result(error=redact(message, self.item.video_uri, self.item.video_id))

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self.state is not None and not self.state.closed:
            self.ctx.tracker.close(self.state)

    def _result(self, parts: tuple = (), error: str | None = None) -> SegmentResult:
        return SegmentResult(
            video_id=self.item.video_id,
            segment_index=self.item.segment_index,
            num_segments=self.item.num_segments,
            frames=self.frames,
            frames_skipped=self.skipped,
            object_ids=tuple(sorted(self._objects)),
            wall_s=time.monotonic() - self.started,
            error=error,
            parts=parts if error is None else (),
        )
