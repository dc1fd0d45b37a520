"""The memory-policy interface and the registry that builds a policy from its config.

A policy owns the memories of one tracked object: the tracker `add`s what each processed
frame leaves behind and asks `select` which memories the model attends to on the next
frame. The model never decides which frames to keep, and a policy never runs the model.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch

from surgray.model.sam2.memory_types import MemoryEntry, MemorySelection
from surgray.tracking.memory.config import MemoryPolicyConfig, parse_policy_config


class MemoryPolicy(ABC):
    """Which memories one object keeps, and which of them the model reads at a frame.

    Contract, shared by every policy:
    - `add(entry)`: a conditioning entry at frame k replaces a non-conditioning one at k (a
      correction turns a tracked frame into a prompted one, as in SAM2); a non-conditioning
      entry may not replace a conditioning one.
    - Storage is bounded: after each non-conditioning `add`, whatever no later `select` in the
      current tracking direction can return is dropped, so `nbytes()` stops growing with the
      length of the video.
    - `select(frame_idx, reverse)` is a pure read (apart from remembering the direction).
    """

    @abstractmethod
    def add(self, entry: MemoryEntry) -> None:
        """Store what frame `entry.frame_idx` left behind."""

    @abstractmethod
    def select(self, frame_idx: int, reverse: bool = False) -> MemorySelection:
        """The memories to attend to when tracking `frame_idx` (backwards when `reverse`)."""

    @abstractmethod
    def clear_after(self, frame_idx: int, reverse: bool = False) -> None:
        """Forget non-conditioning memories past `frame_idx` in the tracking direction (frames
        > frame_idx forward, < frame_idx in reverse), before re-propagating from a correction."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything."""

    @abstractmethod
    def held_entries(self) -> Iterable[MemoryEntry]:
        """Every entry the policy holds (possibly the same tensors under several entries)."""

    @abstractmethod
    def to(self, device: torch.device | str) -> MemoryPolicy:
        """Move every held tensor to `device` (e.g. offload to CPU); returns self."""

    def nbytes(self) -> int:
        """Bytes of tensor data held; a tensor shared by several entries counts once."""
        return tensors_nbytes(self.held_entries())


def tensors_nbytes(entries: Iterable[MemoryEntry]) -> int:
    seen: set[int] = set()
    total = 0
    for entry in entries:
        for t in (entry.features, entry.obj_ptr, entry.image_features):
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


# name -> module that registers it on import; imported lazily so `import surgray.tracking`
# stays light and the policy modules can import this one.
_POLICY_MODULES = {
    "recent": "surgray.tracking.memory.recent",
    "prune": "surgray.tracking.memory.prune",
    "dlm": "surgray.tracking.memory.dlm",
    "divemem": "surgray.tracking.memory.divemem",
}
_REGISTRY: dict[str, type] = {}


def register_policy(name: str):
    """Class decorator: `build_policy` builds this class for configs named `name`."""

    def wrap(cls: type) -> type:
        _REGISTRY[name] = cls
        return cls

    return wrap


def policy_names() -> list[str]:
    return sorted(_POLICY_MODULES)


def build_policy(cfg: MemoryPolicyConfig | dict, num_frames: int | None = None) -> MemoryPolicy:
    """The policy a config names. `num_frames`, when the video length is known, bounds the
    pointer window as SAM2 does (it never reaches past the last frame)."""
    cfg = parse_policy_config(cfg)
    if cfg.name not in _REGISTRY:
        if cfg.name not in _POLICY_MODULES:
            raise KeyError(
                f"unknown memory policy {cfg.name!r}; known: {', '.join(policy_names())}"
            )
        importlib.import_module(_POLICY_MODULES[cfg.name])
    return _REGISTRY[cfg.name](cfg, num_frames=num_frames)
