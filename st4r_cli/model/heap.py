"""Giving freed memory back to the operating system after a memory-heavy stage.

glibc's malloc serves the many mid-sized tensors of a forward / backward pass (under its mmap threshold,
which grows up to 32 MiB as big blocks are freed) from its heap, and keeps that heap after they are
freed: after a TTA step of the official-size network about 1.5-4 GB stay resident and the next stage
starts from there (run.json's per-stage peaks show it). `release_freed_memory` asks glibc to hand the
free pages back (`malloc_trim(0)`); elsewhere (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys


def release_freed_memory() -> bool:
    """Collect garbage and return the allocator's free heap pages to the OS (glibc only). True when trimmed."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):   # not glibc (musl has no malloc_trim)
        return False
