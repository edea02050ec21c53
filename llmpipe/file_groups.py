"""Input files packed into tasks by bytes: many small files share a task, a big file may be cut in pieces.

`_run.json` already lists every input file once, under its input. A task names a range of them,
counted across all inputs in order, so a step over 100,000 files keeps task records of a few
numbers each (and a Slurm array element reads its task from `_run.json` as before):

    {"files": [first, stop]}                   files first .. stop-1, whole, in order
    {"files": [k, k + 1], "offsets": [a, b]}   the records of file k that start at byte a .. b-1
                                               (b null: to the end of the file)

Files are taken in the inputs' order (sorted paths), so the same inputs and task_bytes give the
same tasks and parts on every run.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

from llmpipe.inputs import Input

ALONE = -1  # a "size" for a file that gets a task of its own whatever its size (an embedded source)
SKIP = -2  # a file no task reads (a type the stage does not read): it opens no task, but may sit inside one


def pack(sizes: Sequence[int], task_bytes: int, cuts: Callable[[int, int], list[int]]) -> list[dict]:
    """Tasks for files of these sizes: consecutive files while their bytes stay within task_bytes;
    a file of task_bytes or more alone, in pieces at the offsets cuts(index, size) gives (may be none).
    An empty file counts one byte, so task_bytes=1 gives every file a task, as ingest did before."""
    tasks: list[dict] = []
    first, total = None, 0  # the group being filled: its first file and its bytes
    for k, size in enumerate(sizes):
        if size == SKIP:
            continue
        cost = max(size, 1)
        alone = size == ALONE or cost >= task_bytes
        if first is not None and (alone or total + cost > task_bytes):
            tasks.append({"files": [first, k]})
            first = None
        if alone:
            bounds = [0, *cuts(k, size), None] if size != ALONE else [0, None]
            if len(bounds) == 2:
                tasks.append({"files": [k, k + 1]})
            else:
                tasks.extend({"files": [k, k + 1], "offsets": [a, b]} for a, b in zip(bounds, bounds[1:]))
            continue
        if first is None:
            first, total = k, 0
        total += cost
    if first is not None:
        tasks.append({"files": [first, _after_last_read(sizes)]})
    return tasks


def _after_last_read(sizes: Sequence[int]) -> int:
    """The last group ends after the last file it reads (trailing files of other types open no task)."""
    return max(k for k, s in enumerate(sizes) if s != SKIP) + 1


def all_files(inputs: Sequence[Input]) -> list[tuple[Input, str]]:
    """Every (input, file) in the order task ranges count them."""
    return [(inp, f) for inp in inputs for f in inp.files]


def task_files(inputs: Sequence[Input], task: dict) -> Iterator[tuple[Input, str]]:
    """The (input, file) pairs a task reads, without listing every input's files."""
    first, stop = task["files"]
    base = 0
    for inp in inputs:
        n = len(inp.files)
        for f in inp.files[max(first - base, 0):max(stop - base, 0)]:
            yield inp, f
        base += n
        if base >= stop:
            return


def file_size(path: str) -> int:
    """Bytes on disk; a file gone since the inputs were resolved counts 0 (its task counts it missing)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
