"""Credible initial frame selection (CIFS) and the life cycle of a text-referred object.

ReSurgSAM2 (MICCAI 2025, its credible initial frame selection) first *searches* for the object a text refers to: every
frame is segmented from the text alone (stage 1). A stage-1 prediction is a candidate when
sigmoid(object score) > `score_threshold` (0.9) and its predicted IoU > `iou_threshold` (0.7).
Candidates go into a window of `window` (5) entries, newest first:

- a candidate is pushed; when the window is full the oldest entry is dropped;
- a frame whose score is not credible (sigmoid(score) <= threshold) drops the oldest candidate;
- a frame with a credible score but an IoU at or below its threshold changes nothing;
- once the window is full and its frame indices are consecutive, the candidate with the highest
  predicted IoU is selected (on a tie the newest), the window is emptied, and the object is
  *tracking* from the next frame on, with the selected frame as its conditioning memory.

With CIFS disabled, the first frame meeting both thresholds is selected at once.

Tracking, the object is *lost* on frames where sigmoid(score) < `lost_score_threshold` and
*tracking* again when it is seen; after `lost_patience` consecutive lost frames it goes back to
*searching* and CIFS runs again (the released code never gives up on an object: None).

`CredibleFrameSelector` is one object's state machine. It holds no tensors of its own and runs
no model: the caller feeds it scores and attaches whatever it needs to a candidate (`payload`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from surgray.model.referring.cifs_config import CIFSConfig

ObjectPhase = Literal["searching", "tracking", "lost"]

__all__ = ["CIFSConfig", "Candidate", "CredibleFrameSelector", "ObjectPhase", "sigmoid"]


def sigmoid(logit: float) -> float:
    """Logistic function without overflow for large negative logits."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    e = math.exp(logit)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Candidate:
    """A credible stage-1 prediction of one object on one frame."""

    frame_idx: int
    object_score: float  # logit
    iou: float  # predicted IoU of the kept mask
    payload: Any = None  # what the caller needs to turn the frame into a memory


class CredibleFrameSelector:
    """One text-referred object: searching -> tracking <-> lost -> searching (see module doc)."""

    def __init__(self, cfg: CIFSConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else CIFSConfig()
        self.phase: ObjectPhase = "searching"
        self._window: deque[Candidate] = deque()  # newest first
        self._unseen = 0  # consecutive lost frames while tracking
        self.selected: Candidate | None = None  # the latest conditioning candidate

    @property
    def window_frames(self) -> list[int]:
        """Frame indices of the candidates held, newest first."""
        return [c.frame_idx for c in self._window]

    @property
    def unseen_frames(self) -> int:
        return self._unseen

    # ------------------------------------------------------------------ searching
    def observe_search(
        self, frame_idx: int, object_score: float, iou: float, payload: Any = None
    ) -> Candidate | None:
        """Feed one stage-1 prediction; returns the selected candidate when the object switches
        to tracking on this frame, else None."""
        if self.phase != "searching":
            raise RuntimeError(f"observe_search while {self.phase}: the object is not searching")
        cfg = self.cfg
        score_ok = sigmoid(object_score) > cfg.score_threshold
        iou_ok = iou > cfg.iou_threshold
        candidate = Candidate(frame_idx, object_score, iou, payload)
        if not cfg.enabled:
            return self._select(candidate) if score_ok and iou_ok else None
        if score_ok:
            if iou_ok:
                self._window.appendleft(candidate)
                if len(self._window) > cfg.window:
                    self._window.pop()
        elif self._window:
            self._window.pop()  # an absent-looking frame costs the oldest candidate
        if len(self._window) == cfg.window and self._consecutive():
            # max() keeps the first of equal IoUs, and the window runs newest first.
            return self._select(max(self._window, key=lambda c: c.iou))
        return None

    def _consecutive(self) -> bool:
        frames = self.window_frames
        steps = {a - b for a, b in zip(frames[:-1], frames[1:])}
        # Newest first: +1 steps in a forward pass, -1 in a reverse one.
        return len(frames) < 2 or steps in ({1}, {-1})

    def _select(self, candidate: Candidate) -> Candidate:
        self._window.clear()  # releases the other candidates' payloads
        self.selected = candidate
        self.phase = "tracking"
        self._unseen = 0
        return candidate

    # ------------------------------------------------------------------ tracking
    def observe_tracking(self, frame_idx: int, object_score: float) -> ObjectPhase:
        """Feed one tracked prediction; returns the phase after it ("searching" means the
        object was lost for `lost_patience` frames: its memories should be dropped)."""
        if self.phase == "searching":
            raise RuntimeError("observe_tracking while searching: no frame was selected yet")
        if sigmoid(object_score) >= self.cfg.lost_score_threshold:
            self._unseen = 0
            self.phase = "tracking"
            return self.phase
        self._unseen += 1
        self.phase = "lost"
        patience = self.cfg.lost_patience
        if patience is not None and self._unseen >= patience:
            self.restart()
        return self.phase

    def start_tracking(self) -> None:
        """The object got memories another way (a user prompt): stop searching."""
        self._window.clear()
        self.phase = "tracking"
        self._unseen = 0

    def restart(self) -> None:
        """Back to searching with an empty window (after a loss, a seek, a reset)."""
        self._window.clear()
        self.phase = "searching"
        self._unseen = 0
        self.selected = None

    def clear_window(self) -> None:
        """Forget the candidates (they are no longer consecutive with what comes next)."""
        self._window.clear()
