"""SAM2's default memory: conditioning frames, the most recent frames, and object pointers.

The selection reproduces `SAM2Base._prepare_memory_conditioned_features` (with
`select_closest_cond_frames`) of Meta's reference, frame for frame:

- Conditioning frames, all of them or the `max_cond_frames_in_attn` temporally closest ones
  (the closest before, the closest at-or-after, then the nearest others), all on the last
  temporal row (`temporal_index_for(0)`), in the order they were added.
- `num_maskmem - 1` previous frames, oldest first: the frame just before (1 step back),
  then with stride r the r-aligned frames from `((t - 2) // r) * r` backwards (reverse:
  from `ceil((t + 2) / r) * r` forwards). A conditioning frame left out of attention by the
  limit above is used there as an ordinary frame. Missing frames are skipped.
- Object pointers: the selected conditioning frames (only those not ahead in the tracking
  direction, when `only_past_pointers`), offset `(t - f) * direction`; then frames 1 ..
  max_obj_ptrs - 1 steps back, stopping at frame 0 (and at the last frame when the video
  length is known, where the window is also `min(num_frames, max_obj_ptrs)`).

Storage is bounded. After each tracked (non-conditioning) frame F, non-conditioning entries
keep their memory features only while they can still be a spatial memory of some frame at or
beyond F in the tracking direction (F itself is included so a correction on F can be re-run),
keep their pointer alone while they can still be one of its pointers, and are dropped after
that. Entries ahead of F in the tracking direction belong to an earlier pass and are dropped
when F is tracked. Conditioning entries are all kept: there are few (the prompted frames).
Consequence: a re-propagation that starts further back than the retained window (about
`(num_maskmem - 2) * r + 1` frames for features, `max_obj_ptrs - 1` for pointers) sees fewer
memories than the reference would, and so does a reverse pass after a forward one (the
reference reuses the forward pass's frames near the prompt; those are gone).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch

from surgray.model.sam2.memory_types import (
    MemoryEntry,
    MemorySelection,
    PointerMemory,
    SpatialMemory,
    temporal_index_for,
)
from surgray.tracking.memory.base import MemoryPolicy, register_policy
from surgray.tracking.memory.config import RecentPolicyConfig


def has_features(entry: MemoryEntry) -> bool:
    """False for an entry kept only for its object pointer."""
    return entry.features.numel() > 0


def closest_conditioning_frames(
    frame_idx: int, cond: dict[int, MemoryEntry], max_frames: int
) -> tuple[dict[int, MemoryEntry], dict[int, MemoryEntry]]:
    """(selected, unselected) conditioning entries for `frame_idx`, as SAM2 picks them."""
    if max_frames == -1 or len(cond) <= max_frames:
        return dict(cond), {}
    chosen: list[int] = []
    before = [t for t in cond if t < frame_idx]
    if before:
        chosen.append(max(before))
    at_or_after = [t for t in cond if t >= frame_idx]
    if at_or_after:
        chosen.append(min(at_or_after))
    # Nearest of the rest; `sorted` is stable, so equal distances keep insertion order.
    rest = sorted((t for t in cond if t not in chosen), key=lambda t: abs(t - frame_idx))
    chosen.extend(rest[: max_frames - len(chosen)])
    selected = {t: cond[t] for t in chosen}
    unselected = {t: e for t, e in cond.items() if t not in selected}
    return selected, unselected


@register_policy("recent")
class RecentPolicy(MemoryPolicy):
    """SAM2: conditioning frames + the `num_maskmem - 1` most recent frames + pointers."""

    def __init__(
        self, cfg: RecentPolicyConfig | None = None, num_frames: int | None = None
    ) -> None:
        self.cfg = cfg if cfg is not None else RecentPolicyConfig()
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"num_frames must be positive when given, got {num_frames}")
        self.num_frames = num_frames
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        self._cond: dict[int, MemoryEntry] = {}
        self._non_cond: dict[int, MemoryEntry] = {}
        self._frontier: int | None = None  # latest tracked (non-conditioning) frame
        self._reverse = False
        self._reset_extra()

    @property
    def conditioning_frames(self) -> list[int]:
        return list(self._cond)

    @property
    def feature_frames(self) -> list[int]:
        """Non-conditioning frames whose memory features are kept."""
        return sorted(t for t, e in self._non_cond.items() if has_features(e))

    @property
    def pointer_only_frames(self) -> list[int]:
        """Non-conditioning frames kept only for their object pointer."""
        return sorted(t for t, e in self._non_cond.items() if not has_features(e))

    def held_entries(self) -> Iterable[MemoryEntry]:
        yield from self._cond.values()
        yield from self._non_cond.values()
        yield from self._extra_entries()

    # ------------------------------------------------------------------ writing

    def add(self, entry: MemoryEntry) -> None:
        self._validate(entry)
        k = entry.frame_idx
        if entry.is_conditioning:
            self._non_cond.pop(k, None)
            self._cond[k] = self._stored(entry)
            self._on_conditioning(entry)
            return
        if k in self._cond:
            raise ValueError(
                f"frame {k} is a conditioning frame; a tracked (non-conditioning) entry cannot "
                "replace it"
            )
        self._drop_past(k, self._reverse)
        self._non_cond[k] = self._stored(entry)
        self._frontier = k
        self._on_tracked(entry)
        self._trim()

    def clear_after(self, frame_idx: int, reverse: bool = False) -> None:
        self._reverse = reverse
        self._drop_past(frame_idx, reverse)
        remaining = list(self._non_cond)
        if not remaining:
            self._frontier = None
        else:
            self._frontier = min(remaining) if reverse else max(remaining)

    def to(self, device: torch.device | str) -> RecentPolicy:
        moved: dict[int, torch.Tensor] = {}

        def move_tensor(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            if id(t) not in moved:
                moved[id(t)] = t.to(device)
            return moved[id(t)]

        def move(entry: MemoryEntry) -> MemoryEntry:
            return dataclasses.replace(
                entry,
                features=move_tensor(entry.features),
                obj_ptr=move_tensor(entry.obj_ptr),
                image_features=move_tensor(entry.image_features),
            )

        self._cond = {t: move(e) for t, e in self._cond.items()}
        self._non_cond = {t: move(e) for t, e in self._non_cond.items()}
        self._move_extra(move)
        return self

    # ------------------------------------------------------------------ reading

    def recent_frames(self, frame_idx: int, reverse: bool = False) -> list[tuple[int, int]]:
        """(frame, steps back) of the previous-frame slots, oldest first, whether stored or not."""
        n, r = self.cfg.num_maskmem, self.cfg.temporal_stride
        slots = []
        for steps_back in range(n - 1, 0, -1):
            if steps_back == 1:
                frame = frame_idx + 1 if reverse else frame_idx - 1
            elif reverse:
                nearest = -(-(frame_idx + 2) // r) * r  # ceil to a multiple of r
                frame = nearest + (steps_back - 2) * r
            else:
                nearest = ((frame_idx - 2) // r) * r
                frame = nearest - (steps_back - 2) * r
            slots.append((frame, steps_back))
        return slots

    def select(self, frame_idx: int, reverse: bool = False) -> MemorySelection:
        if self.num_frames is not None and not 0 <= frame_idx < self.num_frames:
            raise ValueError(f"frame_idx {frame_idx} outside the video's {self.num_frames} frames")
        self._reverse = reverse
        n = self.cfg.num_maskmem
        selected, unselected = closest_conditioning_frames(
            frame_idx, self._cond, self.cfg.max_cond_frames_in_attn
        )

        def lookup(t: int) -> MemoryEntry | None:
            entry = self._non_cond.get(t)
            return entry if entry is not None else unselected.get(t)

        spatial = [SpatialMemory(e, temporal_index_for(0, n)) for e in selected.values()]
        for t, steps_back in self.recent_frames(frame_idx, reverse):
            entry = lookup(t)
            if entry is not None and has_features(entry):
                spatial.append(SpatialMemory(entry, temporal_index_for(steps_back, n)))

        pointers: list[PointerMemory] = []
        if self.cfg.use_obj_ptrs:
            direction = -1 if reverse else 1
            for t, entry in selected.items():
                ahead = t < frame_idx if reverse else t > frame_idx
                if not (self.cfg.only_past_pointers and ahead):
                    pointers.append(PointerMemory(entry, (frame_idx - t) * direction))
            for steps_back in range(1, self._pointer_window()):
                t = frame_idx - steps_back * direction
                if t < 0 or (self.num_frames is not None and t >= self.num_frames):
                    break
                entry = lookup(t)
                if entry is not None:
                    pointers.append(PointerMemory(entry, steps_back))
        return MemorySelection(spatial=spatial, pointers=pointers)

    # ------------------------------------------------------------------ bounding

    def _pointer_window(self) -> int:
        if self.num_frames is None:
            return self.cfg.max_obj_ptrs
        return min(self.num_frames, self.cfg.max_obj_ptrs)

    def _features_needed(self, t: int, frontier: int) -> bool:
        """Can frame t still be a spatial memory of a frame at or beyond `frontier`?"""
        n, r = self.cfg.num_maskmem, self.cfg.temporal_stride
        if n < 2:
            return False
        if self._reverse:
            if t <= frontier + 1:
                return True
            return n >= 3 and t % r == 0 and t <= -(-(frontier + 2) // r) * r + (n - 3) * r
        if t >= frontier - 1:
            return True
        return n >= 3 and t % r == 0 and t >= ((frontier - 2) // r) * r - (n - 3) * r

    def _pointer_needed(self, t: int, frontier: int) -> bool:
        if not self.cfg.use_obj_ptrs:
            return False
        span = self._pointer_window() - 1
        return t <= frontier + span if self._reverse else t >= frontier - span

    def _trim(self) -> None:
        frontier = self._frontier
        if frontier is None:
            return
        for t, entry in list(self._non_cond.items()):
            if self._features_needed(t, frontier):
                continue
            if not self._pointer_needed(t, frontier):
                del self._non_cond[t]
            elif has_features(entry):
                self._non_cond[t] = dataclasses.replace(
                    entry, features=entry.features.new_empty(0), image_features=None
                )

    def _drop_past(self, frame_idx: int, reverse: bool) -> None:
        """Drop non-conditioning entries past `frame_idx` in the direction (an older pass's)."""
        for t in list(self._non_cond):
            if (t < frame_idx) if reverse else (t > frame_idx):
                del self._non_cond[t]
        self._forget_after(frame_idx, reverse)

    # ------------------------------------------------------------------ checks

    def _validate(self, entry: MemoryEntry) -> None:
        if not isinstance(entry, MemoryEntry):
            raise TypeError(f"expected a MemoryEntry, got {type(entry).__name__}")
        k = entry.frame_idx
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"MemoryEntry.frame_idx must be a non-negative int, got {k!r}")
        if self.num_frames is not None and k >= self.num_frames:
            raise ValueError(
                f"MemoryEntry.frame_idx {k} outside the video's {self.num_frames} frames"
            )
        if entry.features.ndim != 3:
            raise ValueError(
                f"MemoryEntry.features must be [C_mem, h, w], got {tuple(entry.features.shape)}"
            )
        if entry.obj_ptr.ndim != 1:
            raise ValueError(f"MemoryEntry.obj_ptr must be [C], got {tuple(entry.obj_ptr.shape)}")
        stored = next((e for e in self.held_entries() if has_features(e)), None)
        if stored is not None and stored.features.shape != entry.features.shape:
            raise ValueError(
                f"MemoryEntry.features {tuple(entry.features.shape)} of frame {k} differ from "
                f"the stored {tuple(stored.features.shape)}"
            )

    # ------------------------------------------------------------------ hooks for subclasses

    def _stored(self, entry: MemoryEntry) -> MemoryEntry:
        """The copy kept in the recent store: image features are not needed there."""
        if entry.image_features is None:
            return entry
        return dataclasses.replace(entry, image_features=None)

    def _reset_extra(self) -> None:
        pass

    def _on_conditioning(self, entry: MemoryEntry) -> None:
        pass

    def _on_tracked(self, entry: MemoryEntry) -> None:
        pass

    def _forget_after(self, frame_idx: int, reverse: bool) -> None:
        pass

    def _extra_entries(self) -> Iterable[MemoryEntry]:
        return ()

    def _move_extra(self, move: Callable[[MemoryEntry], MemoryEntry]) -> None:
        pass
