"""Fuzz targets for the data formats ingest and the data stages read."""

from __future__ import annotations

from pathlib import Path

from tests.fuzz.targets import Target, target


def _lines(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return b"".join(f.readline() for _ in range(n))


def _ingest(path: Path, **params) -> None:
    """Read one input file the way an ingest task does (records, repairs, length checks), keeping nothing."""
    from llmpipe.stats import TaskStats
    from stages.ingest import Params, _records, _repaired

    stats = TaskStats()
    task = {"source": str(path), "input": str(path.parent), "path": str(path)}
    for rec in _records(task, Params(**params), stats):
        _repaired(rec, stats)


target(Target(
    name="jsonl", suffix=".jsonl", read=_ingest,
    seeds=lambda shared, tmp: [_lines(shared / "text" / "c4_demo.jsonl", 5)] if (shared / "text").is_dir() else [],
))
