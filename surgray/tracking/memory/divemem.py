"""SAM2S DiveMem long-term memory (the inference-time filter, paper §3 / methods.md §4.2).

On top of SAM2's selection (whose recent frames are kept in full):

- Stability: a tracked frame is a candidate only when it ends a run of `stability_window`
  (Delta = 5) consecutive tracked frames, each with predicted IoU above `iou_gate` (0.95) and,
  with `require_object_present`, a positive object-score logit ("stably present"). A gap in
  frame numbers, or a conditioning frame in between, restarts the run.
- Diversity: when the candidate buffer holds `candidate_pool` frames (the paper does not give
  its size; we use DLM's N_p = 5), the candidate whose image-encoder features are least
  similar to those of the newest long-term frame (the initial conditioning frame while the
  bank is empty) joins the bank, first in first out (N_l = 4), and the buffer is emptied.
- The initial conditioning frame is permanent: it is always attended (added if the
  conditioning-frame limit left it out), like the paper's l_0.
- Long-term frames that are not among the recent slots are attended with `long_term_slot = i`
  (i = 0 for the oldest in the bank) for the learned long-term embeddings of SAM2S checkpoints,
  and `temporal_index` = the conditioning row, which the model uses when the checkpoint has no
  such embeddings.

Similarity: `"channel"` (default) is the per-token cosine over channels, averaged; it sees an
instrument move even when the frame's overall appearance stays the same, which is the
diversity the bank is for. `"pooled"` (global-average-pooled cosine) is the cheaper reading
of the paper's cos(E(b), E(l)) and is offered as an option.

Entries must carry `image_features`. The policy keeps them only where a later comparison can
use them: candidates, the newest long-term frame and the initial conditioning frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from surgray.model.sam2.memory_types import (
    MemoryEntry,
    MemorySelection,
    SpatialMemory,
    temporal_index_for,
)
from surgray.tracking.memory.base import register_policy
from surgray.tracking.memory.config import DiveMemPolicyConfig
from surgray.tracking.memory.recent import RecentPolicy
from surgray.tracking.memory.similarity import least_similar


def _without_image_features(entry: MemoryEntry) -> MemoryEntry:
    if entry.image_features is None:
        return entry
    return dataclasses.replace(entry, image_features=None)


@register_policy("divemem")
class DiveMemPolicy(RecentPolicy):
    """SAM2's selection plus a FIFO bank of diverse frames from stable stretches."""

    def __init__(
        self, cfg: DiveMemPolicyConfig | None = None, num_frames: int | None = None
    ) -> None:
        super().__init__(cfg if cfg is not None else DiveMemPolicyConfig(), num_frames=num_frames)

    @property
    def candidate_frames(self) -> list[int]:
        return [e.frame_idx for e in self._pool]

    @property
    def long_term_frames(self) -> list[int]:
        return [e.frame_idx for e in self._bank]

    @property
    def stable_run(self) -> int:
        return self._run

    def add(self, entry: MemoryEntry) -> None:
        if isinstance(entry, MemoryEntry) and entry.image_features is None:
            raise ValueError(
                f"divemem compares frames by image-encoder features: MemoryEntry.image_features "
                f"of frame {entry.frame_idx} is required"
            )
        super().add(entry)

    def select(self, frame_idx: int, reverse: bool = False) -> MemorySelection:
        selection = super().select(frame_idx, reverse)
        row = temporal_index_for(0, self.cfg.num_maskmem)
        initial = self._initial
        if initial is not None and all(
            m.entry.frame_idx != initial.frame_idx for m in selection.spatial
        ):
            selection.spatial.append(SpatialMemory(_without_image_features(initial), row))
        recent = {t for t, _ in self.recent_frames(frame_idx, reverse)}
        for slot, entry in enumerate(self._bank):
            if entry.frame_idx not in recent:
                selection.spatial.append(SpatialMemory(entry, row, long_term_slot=slot))
        return selection

    # ------------------------------------------------------------------ run, buffer, bank

    def _on_conditioning(self, entry: MemoryEntry) -> None:
        if self._initial is None or self._initial.frame_idx == entry.frame_idx:
            self._initial = entry
        self._run, self._run_end = 0, None

    def _on_tracked(self, entry: MemoryEntry) -> None:
        # A re-tracked frame (re-propagation) supersedes its older memory everywhere.
        self._pool = [e for e in self._pool if e.frame_idx != entry.frame_idx]
        self._bank = [
            (entry if i == len(self._bank) - 1 else _without_image_features(entry))
            if e.frame_idx == entry.frame_idx
            else e
            for i, e in enumerate(self._bank)
        ]
        stable = entry.predicted_iou > self.cfg.iou_gate and (
            entry.object_score > 0 or not self.cfg.require_object_present
        )
        adjacent = self._run_end is not None and abs(entry.frame_idx - self._run_end) == 1
        self._run = (self._run + 1 if adjacent else 1) if stable else 0
        self._run_end = entry.frame_idx
        if self._run < self.cfg.stability_window:
            return
        self._pool.append(entry)
        if len(self._pool) > self.cfg.candidate_pool:
            self._pool.pop(0)
        if len(self._pool) == self.cfg.candidate_pool:
            self._promote()

    def _promote(self) -> None:
        reference = self._bank[-1] if self._bank else self._initial
        if reference is None:
            return
        pick = least_similar(
            [e.image_features for e in self._pool], reference.image_features, self.cfg.similarity
        )
        # Only the newest long-term frame is ever a reference again.
        self._bank = [_without_image_features(e) for e in self._bank]
        self._bank.append(self._pool[pick])
        if len(self._bank) > self.cfg.bank_size:
            self._bank.pop(0)
        self._pool.clear()

    # ------------------------------------------------------------------ hooks

    def _reset_extra(self) -> None:
        self._pool: list[MemoryEntry] = []
        self._bank: list[MemoryEntry] = []
        self._initial: MemoryEntry | None = None
        self._run = 0
        self._run_end: int | None = None

    def _forget_after(self, frame_idx: int, reverse: bool) -> None:
        self._pool = [e for e in self._pool if _kept(e.frame_idx, frame_idx, reverse)]
        self._bank = [e for e in self._bank if _kept(e.frame_idx, frame_idx, reverse)]
        if self._run_end is not None and not _kept(self._run_end, frame_idx, reverse):
            self._run, self._run_end = 0, None

    def _extra_entries(self) -> Iterable[MemoryEntry]:
        if self._initial is not None:
            yield self._initial
        yield from self._pool
        yield from self._bank

    def _move_extra(self, move: Callable[[MemoryEntry], MemoryEntry]) -> None:
        self._initial = move(self._initial) if self._initial is not None else None
        self._pool = [move(e) for e in self._pool]
        self._bank = [move(e) for e in self._bank]


def _kept(t: int, frame_idx: int, reverse: bool) -> bool:
    """Is frame t at or before `frame_idx` in the tracking direction?"""
    return t >= frame_idx if reverse else t <= frame_idx
