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
import functools
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
        _usual_modes(tmp)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


@functools.cache
def _umask() -> int:
    """This process's umask, read without setting it where Linux tells it (setting it races other threads)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_modes(path: Path) -> None:
    """Give a finished output the modes of a normal file (0644 under umask 022): some writers (safetensors)
    create theirs 0600, which would leave model.safetensors unreadable to the group that reads the rest."""
    umask = _umask()
    if path.is_symlink() or not path.exists():  # a link is not ours to change; a writer may have written nothing
        return
    if not path.is_dir():
        os.chmod(path, 0o666 & ~umask)
        return
    os.chmod(path, 0o777 & ~umask)
    for root, dirs, files in os.walk(path):
        for name, mode in [(d, 0o777) for d in dirs] + [(f, 0o666) for f in files]:
            if not os.path.islink(os.path.join(root, name)):
                os.chmod(os.path.join(root, name), mode & ~umask)


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


def remove_artifact(artifact: Path) -> None:
    """Delete an artifact in an order that a kill at any moment leaves harmless: the manifest first (nothing
    takes it as complete from then on), then the task records (a resumed run redoes every task whose outputs
    may be gone), then the rest, and `_run.json` last: until then it marks the directory as an artifact to
    replace, where a directory of bare files would be refused as a user's (shutil.rmtree deletes in directory
    order, which may take the markers first)."""
    artifact = Path(artifact)
    marker = artifact / (RUN if (artifact / RUN).exists() else MANIFEST)
    for first in (MANIFEST, TASKS):
        path = artifact / first
        if path != marker:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for path in artifact.iterdir():
        if path != marker:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    marker.unlink(missing_ok=True)
    artifact.rmdir()


def save_array(path: Path, array) -> None:
    """Write a numpy array as .npy atomically (intermediate files of multi-phase stages); never pickled."""
    import numpy as np

    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


class ArrayWriter:
    """Write a .npy of a known number of rows a slice at a time, atomically: the whole array is never
    in memory (a part of a million documents has 512 MB of MinHash signatures)."""

    def __init__(self, path: Path, rows: int, dtype, row_shape: tuple[int, ...] = ()):
        import numpy as np

        self.path, self.rows, self.dtype, self.row_shape = Path(path), rows, np.dtype(dtype), tuple(row_shape)
        self.written = 0

    def __enter__(self) -> "ArrayWriter":
        import numpy as np

        self._atomic = atomic_path(self.path)
        self._file = open(self._atomic.__enter__(), "wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.rows, *self.row_shape)}
        np.lib.format.write_array_header_1_0(self._file, header)
        return self

    def append(self, chunk) -> None:
        import numpy as np

        chunk = np.ascontiguousarray(chunk, dtype=self.dtype)
        if chunk.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {chunk.shape[1:]}, expected {self.row_shape}")
        self._file.write(chunk.data)
        self.written += len(chunk)

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None and self.written != self.rows:  # a short file must not be renamed into place
            exc = ValueError(f"{self.path.name}: {self.written} rows written, {self.rows} announced")
            self._atomic.__exit__(ValueError, exc, None)
            raise exc
        self._atomic.__exit__(exc_type, exc, tb)


def read_rows(path: Path, rows) -> "np.ndarray":
    """Rows `rows` of a .npy file, read one by one: a memory map would fault in (and count as resident)
    the pages its readahead brings around every row, most of the file for scattered rows."""
    import numpy as np

    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        start, row_bytes = f.tell(), dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
        out = np.empty((len(rows), *shape[1:]), dtype=dtype)
        view = out.view(np.uint8).reshape(len(rows), row_bytes)
        for k, row in enumerate(np.asarray(rows, dtype=np.int64).tolist()):
            view[k] = np.frombuffer(os.pread(f.fileno(), row_bytes, start + row * row_bytes), np.uint8)
    return out
