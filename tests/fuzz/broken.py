"""Readers broken on purpose, one per way the fuzz harness must catch a bug: an exception other than a one-line
refusal, a refusal of several lines, and a hang. tests/test_fuzz.py checks that each one fails fuzz()."""

from __future__ import annotations

import time
from pathlib import Path

from llmpipe.errors import InputError
from tests.fuzz.targets import BROKEN, Target, target

SEED = b"a seed the reader accepts"


def _on_mutation(fail):
    """A reader that accepts the seed as it is and fails on any mutated input."""
    def read(path: Path) -> None:
        if path.read_bytes() != SEED:
            fail()
    return read


def _key_error():
    raise KeyError("text")


def _two_lines():
    raise InputError("input.bin: bad record\nsee the log")


def _hang():
    time.sleep(3600)


for name, fail in (("raises_key_error", _key_error), ("refuses_in_two_lines", _two_lines), ("hangs", _hang)):
    target(Target(name=f"broken_{name}", suffix=".bin", read=_on_mutation(fail), seeds=lambda shared, tmp: [SEED]), BROKEN)
