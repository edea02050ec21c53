"""Peak resident memory of one task: the high-water mark is reset when the task starts and read when it ends.

On Linux, writing 5 to /proc/self/clear_refs resets VmHWM (the peak resident set size), so a task
that runs in a process which ran others before (one worker, a pipeline's main process) reports its
own peak. Elsewhere the reset is not available and the figure is the process's peak so far.
"""

from __future__ import annotations

import contextlib
import resource
import sys


def reset_peak() -> None:
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_rss_bytes() -> int:
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB elsewhere
