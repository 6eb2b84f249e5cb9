"""Keeping an export's resident memory flat on glibc.

The export frees many large buffers (Arrow batches, upload parts) from several threads.
glibc's defaults then keep the freed memory: its mmap threshold rises to the largest buffer
freed so far, so later big buffers come from per-thread heaps that fragment and are never
returned. A fixed threshold of 4 MiB sends big buffers (upload parts) to mmap, given back to
the system on free, and two arenas bound the heaps. Below it, the many 1 MiB buffers (deflate
output, read chunks) are reused from the heap, instead of a fresh mapping for each that faults
every page in again and keeps the kernel busy. Arrow's own allocator is mimalloc in current
pyarrow; where jemalloc is chosen instead (ARROW_DEFAULT_MEMORY_POOL), it is told to return
freed pages at once instead of after its default decay time. (Which allocator Arrow uses is
left alone: the choice did not change an export's CPU time.)
This is what MALLOC_MMAP_THRESHOLD_ and MALLOC_ARENA_MAX do, set from inside the process so
every way of running an export gets it.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
from functools import cache

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@cache
def limit_retention(mmap_threshold: int = 4 * 1024 * 1024, arenas: int = 2) -> bool:
    """Apply the settings once per process; False where the C library is not glibc."""
    import pyarrow as pa

    # Arrow's jemalloc keeps freed pages for a second by default; an export frees buffers so fast that
    # those pages would be a large part of its memory.
    with contextlib.suppress(NotImplementedError):
        pa.jemalloc_set_decay_ms(0)
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(_M_ARENA_MAX, arenas))
