"""inputs/heap.py: the heap's free pages go back to the OS."""
from __future__ import annotations

import platform

import numpy as np
import pytest

from inputs import heap


def rss_anon_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_trim_returns_freed_heap_pages_to_the_os():
    big = np.ones(30 * 2 ** 20 // 8)  # freeing a 30 MB mmap raises glibc's mmap threshold
    del big
    held = [np.ones(2 ** 20 // 8 * 3) for _ in range(101)]  # 3 MB blocks: heap now, not mmap
    keep = held.pop()  # allocated last and kept: the freed blocks are not at the heap's top
    del held
    before = rss_anon_kb()
    assert heap.trim_heap() is True
    assert rss_anon_kb() < before - 100 * 1024  # most of the 300 MB left the process
    del keep


def test_trim_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_malloc_trim", lambda: None)
    assert heap.trim_heap() is False
