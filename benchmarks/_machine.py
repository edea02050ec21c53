"""Helpers the benchmark scripts share (imported as `_machine`: scripts run as `python benchmarks/X.py`)."""

from __future__ import annotations

import os


def pin_to_one_core() -> str:
    """Pin this process to one CPU so per-core figures are comparable; says what it did."""
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    except (AttributeError, OSError):
        return "not pinned (no sched_setaffinity)"
