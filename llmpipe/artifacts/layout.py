"""Artifact directory layout and the write-then-rename rule every writer follows.

    <artifact>/part-00000.parquet ...   data files, each renamed into place when complete
    <artifact>/_run.json                the step's resolved plan (stage, params, inputs, tasks)
    <artifact>/_tasks/<phase>/00000.json one record per finished task, written after its outputs
    <artifact>/_work/<phase>/...        intermediate files of multi-phase stages
    <artifact>/_logs/                   per-task logs, sbatch scripts
    <artifact>/_manifest.json           written last: no manifest means incomplete
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

MANIFEST = "_manifest.json"
RUN = "_run.json"
TASKS = "_tasks"
WORK = "_work"
LOGS = "_logs"
TMP_MARK = ".tmp-"


def part_name(index: int, suffix: str = ".parquet") -> str:
    return f"part-{index:05d}{suffix}"


def task_record_path(artifact: Path, phase: str, task: int) -> Path:
    return Path(artifact) / TASKS / phase / f"{task:05d}.json"


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def give_default_mode(path: Path) -> None:
    """The mode a plain open() would give (0644 under umask 022): safetensors writes its files 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_json_atomic(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, sort_keys=True, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())


def read_json(path: Path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def remove_temporaries(artifact: Path) -> None:
    """Delete leftovers of writers that were killed before their rename."""
    for p in Path(artifact).rglob(f"*{TMP_MARK}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def save_array(path: Path, array) -> None:
    """Write a numpy array as .npy atomically (intermediate files of multi-phase stages); never pickled."""
    import numpy as np

    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
