"""ReSurgSAM2 diversity-driven long-term memory (DLM).

On top of SAM2's selection, a long-term bank of up to `bank_size` frames (N_l) chosen for
diversity:

- Each tracked frame whose predicted IoU is above `iou_gate` (0.95) joins a candidate pool
  (the release offers frame t-1 when tracking t; we offer a frame when it is added, which is
  the same moment in a forward pass).
- When the pool holds `candidate_pool` (N_p = 5) frames, the one least similar to the newest
  long-term frame (or, while the bank is empty, to the latest conditioning frame) moves to the
  bank (first in, first out) and the pool is emptied.
- Selection: SAM2's, then each long-term frame (oldest first) that is not one of the recent
  slots, with the conditioning frames' temporal encoding (`temporal_index_for(0)`).

Similarity is computed on the memory-encoder features [C, h, w]. Default `"channel"`: the
per-token cosine over channels, averaged over tokens, as SurgSAM2 compares memories; it asks
"does each position hold the same content". The release's `"width_axis"` (cosine along the
last axis of the map) compares, per channel and row, the profile of values across columns:
it mixes spatial positions with one channel's activation level and never relates channels,
so it is offered only to reproduce the release.

Other release behaviours: with no conditioning frame and an empty bank there is no reference,
so the pool keeps its newest N_p candidates until there is one; in reverse tracking the
release still looks at frame t-1 (not yet tracked), we offer each added frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from surgray.model.sam2.memory_types import (
    MemoryEntry,
    MemorySelection,
    SpatialMemory,
    temporal_index_for,
)
from surgray.tracking.memory.base import register_policy
from surgray.tracking.memory.config import DLMPolicyConfig
from surgray.tracking.memory.recent import RecentPolicy
from surgray.tracking.memory.similarity import least_similar


@register_policy("dlm")
class DLMPolicy(RecentPolicy):
    """SAM2's selection plus a FIFO bank of diverse, confidently segmented frames."""

    def __init__(self, cfg: DLMPolicyConfig | None = None, num_frames: int | None = None) -> None:
        super().__init__(cfg if cfg is not None else DLMPolicyConfig(), num_frames=num_frames)

    @property
    def candidate_frames(self) -> list[int]:
        return [e.frame_idx for e in self._pool]

    @property
    def long_term_frames(self) -> list[int]:
        return [e.frame_idx for e in self._bank]

    def select(self, frame_idx: int, reverse: bool = False) -> MemorySelection:
        selection = super().select(frame_idx, reverse)
        recent = {t for t, _ in self.recent_frames(frame_idx, reverse)}
        row = temporal_index_for(0, self.cfg.num_maskmem)
        for entry in self._bank:
            if entry.frame_idx not in recent:
                selection.spatial.append(SpatialMemory(entry, row))
        return selection

    # ------------------------------------------------------------------ pool and bank

    def _on_tracked(self, entry: MemoryEntry) -> None:
        stored = self._stored(entry)
        # A re-tracked frame (re-propagation) supersedes its older memory everywhere.
        self._pool = [e for e in self._pool if e.frame_idx != entry.frame_idx]
        self._bank = [stored if e.frame_idx == entry.frame_idx else e for e in self._bank]
        if entry.predicted_iou <= self.cfg.iou_gate:
            return
        self._pool.append(stored)
        if len(self._pool) > self.cfg.candidate_pool:
            self._pool.pop(0)
        if len(self._pool) == self.cfg.candidate_pool:
            self._promote()

    def _reference(self) -> MemoryEntry | None:
        if self._bank:
            return self._bank[-1]
        if self._cond:
            return self._cond[max(self._cond)]
        return None

    def _promote(self) -> None:
        reference = self._reference()
        if reference is None:
            return
        pick = least_similar(
            [e.features for e in self._pool], reference.features, self.cfg.similarity
        )
        self._bank.append(self._pool[pick])
        if len(self._bank) > self.cfg.bank_size:
            self._bank.pop(0)
        self._pool.clear()

    # ------------------------------------------------------------------ hooks

    def _reset_extra(self) -> None:
        self._pool: list[MemoryEntry] = []
        self._bank: list[MemoryEntry] = []

    def _forget_after(self, frame_idx: int, reverse: bool) -> None:
        def kept(e: MemoryEntry) -> bool:
            return e.frame_idx >= frame_idx if reverse else e.frame_idx <= frame_idx

        self._pool = [e for e in self._pool if kept(e)]
        self._bank = [e for e in self._bank if kept(e)]

    def _extra_entries(self) -> Iterable[MemoryEntry]:
        yield from self._pool
        yield from self._bank

    def _move_extra(self, move: Callable[[MemoryEntry], MemoryEntry]) -> None:
        self._pool = [move(e) for e in self._pool]
        self._bank = [move(e) for e in self._bank]
