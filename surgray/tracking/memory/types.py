"""Moved to `surgray.model.memory_types` (the lower floor owns the types both floors share)."""

from surgray.model.memory_types import (  # noqa: F401
    MemoryEntry,
    MemorySelection,
    PointerMemory,
    SpatialMemory,
    temporal_index_for,
)
