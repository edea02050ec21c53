"""Task counters: numbers add up across tasks, samples of bad records are kept (a few per reason)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from llmpipe.errors import DataError

MAX_SAMPLES = 5


class TaskStats:
    """Counts for one task: `count(key)`; `drop(reason)` for records a rule removed on purpose;
    `skip(reason, sample)` for bad records (corrupt, undecodable), which count toward max_bad_fraction."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.dropped: Counter = Counter()
        self.skipped: Counter = Counter()
        self.samples: dict[str, list[str]] = {}

    def count(self, key: str, n: int | float = 1) -> None:
        self.counts[key] += n

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n

    def skip(self, reason: str, sample: str = "") -> None:
        self.skipped[reason] += 1
        kept = self.samples.setdefault(reason, [])
        if sample and len(kept) < MAX_SAMPLES:  # one line each: `inspect` and error messages show them
            kept.append(" ".join(sample.splitlines())[:300])  # line breaks folded, other spacing kept as the data had it

    def to_json(self) -> dict:
        return {"counts": dict(self.counts), "dropped": dict(self.dropped), "skipped": dict(self.skipped), "samples": self.samples}


def merge(records: list[dict]) -> dict:
    """Merge task stats dicts: numbers add, nested dicts merge, sample lists concatenate (capped)."""
    out: dict[str, Any] = {}
    for rec in records:
        _merge_into(out, rec)
    return out


def _merge_into(out: dict, rec: dict) -> None:
    for key, value in rec.items():
        if isinstance(value, dict):
            _merge_into(out.setdefault(key, {}), value)
        elif isinstance(value, list):
            out[key] = (out.get(key, []) + value)[:MAX_SAMPLES]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = out.get(key, 0) + value
        else:
            out[key] = value


def check_bad_fraction(stats: dict, total_key: str, max_bad_fraction: float, where: str) -> None:
    """Fail the stage when more than `max_bad_fraction` of the records were bad."""
    bad = sum(stats.get("skipped", {}).values())
    total = stats.get("counts", {}).get(total_key, 0) + bad
    if total and bad / total > max_bad_fraction:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(stats["skipped"].items()))
        raise DataError(
            f"{where}: {bad} of {total} records were bad ({reasons}), more than max_bad_fraction={max_bad_fraction}"
        )
