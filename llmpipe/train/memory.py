"""Host memory setting for training processes.

A training step frees and re-allocates the same activation-sized buffers every step. With glibc's
defaults, buffers above malloc's (dynamic) mmap threshold come from fresh mmap'd pages and freed
memory at the top of the heap is handed back to the OS, so each step pays page faults for memory
it just released: 29-34k faults in 20 steps of a 2-layer, 128-wide model at batch 32 x 64 here, 5-760
with this setting (tests/test_train_memory.py, four runs each); the 0.8M benchmark model's CPU steps
ran 5-11% faster (measured before blocks became one autograd Function, which allocates less).
Keeping freed memory in the process (what jemalloc/tcmalloc do, and what PyTorch's CPU performance
guide suggests them for) costs nothing but a resident size that stays at its peak.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Ask glibc malloc to serve allocations up to 32 MiB from the heap and never trim it; False where
    that is not glibc (macOS, musl): nothing changes there."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))
