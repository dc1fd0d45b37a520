"""Give the C heap's free pages back to the operating system (glibc's `malloc_trim`).

glibc keeps memory that Python and torch free on its heaps for reuse; after a one-off burst
(a checkpoint read whole, a network built and then overwritten by the checkpoint's weights, a
float copy replaced by int8 weights) that memory stays resident although nothing uses it.
Measured with benchmarks/bench_load_memory.py. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger("surgray")


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None (musl, macOS, Windows, or no C library found)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def release_free_heap() -> bool:
    """Return the heaps' free pages to the system; True if glibc did (or could) trim."""
    trim = _malloc_trim()
    if trim is None:
        return False
    return bool(trim(0))
