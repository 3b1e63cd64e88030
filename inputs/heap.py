"""Give the C heap's free pages back to the operating system (glibc's malloc_trim).

Why: after a large array is freed, glibc raises its mmap threshold (up to 32 MB), so the
batch-sized tensors that follow come from the heap, and freed heap pages stay in the process.
infer.py's query vectors for 1,000,000 users grew the resident set from 3.3 GB to 5.9 GB that
way; with the threshold pinned (MALLOC_MMAP_THRESHOLD_=1048576) it stayed at 3.4 GB, so the
growth was free memory, not live data (docs/speed.md). Pinning the threshold would make every
batch-sized tensor a fresh mmap (page faults on each use); trimming now and then keeps the heap's
speed and returns what it holds free.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None (musl, macOS, Windows: nothing to do there)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def trim_heap() -> bool:
    """Return the heap's free pages to the OS; True when glibc did release some."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
