"""Every reader and loader llmpipe has, as a fuzz target: seed files taken from ../shared/data, and the call a user's
run makes on such a file.

A target's `read(path)` is what a stage does with one input file of that kind; the fuzzer writes each mutated input to
a file named `input<suffix>` (the suffix picks the reader, as in a user's directory) and calls it. `wrap` turns the
mutated bytes into the file's bytes (for example gzip, so the mutations reach the format inside the compression);
a target without `wrap` mutates the bytes on disk as they are.

Targets live in two modules, data formats (targets_data.py) and model-side files (targets_model.py); both fill TARGETS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Target:
    name: str
    suffix: str  # the input file's name ends so (it picks the reader)
    seeds: Callable[[Path, Path], list[bytes]]  # (shared_data, scratch dir) -> seed inputs; [] when the data is absent
    read: Callable[[Path], None]  # reads the file as a run would; returns, or raises a one-line error
    wrap: Callable[[bytes], bytes] | None = None  # mutated bytes -> file bytes (compression, container)


TARGETS: dict[str, Target] = {}
BROKEN: dict[str, Target] = {}  # deliberately broken readers, for the harness's self-test only (tests/fuzz/broken.py)


def target(t: Target, registry: dict[str, Target] = TARGETS) -> Target:
    assert t.name not in registry, t.name
    registry[t.name] = t
    return t


def load_all(broken: bool = False) -> dict[str, Target]:
    """Every reader's target; with broken=True also the harness's broken ones (never part of the fuzz tests' list)."""
    from tests.fuzz import broken as _, targets_data, targets_model  # noqa: F401  (they register themselves)

    return {**TARGETS, **BROKEN} if broken else TARGETS
