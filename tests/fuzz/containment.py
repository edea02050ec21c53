"""What a fuzzed pipeline file may reach, checked by an audit hook (PEP 578) while `contained()` runs.

`llmpipe status` and `run --dry-run` write nothing, so any write (a file opened for writing, a directory made, a file
renamed or removed) is a bug the fuzzer reports, wherever it points. Reading stays allowed, but listing a directory
outside the test's own folder is refused in one line: a mutated `inputs = ["/"]` is what the user asked for, yet
walking the whole machine is no test of the reader (and no hang of llmpipe's making).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from llmpipe.errors import InputError

WRITE_EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate", "os.chmod",
                "os.chown", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move"}
LIST_EVENTS = {"os.listdir", "os.scandir", "glob.glob"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_state: dict = {"root": None}  # the folder below which listing is allowed, while contained() runs


class Listed(InputError):
    """A directory outside the test's folder was about to be listed (counted as a refusal)."""


class Wrote(AssertionError):
    """Something was about to be written (a crash: the check being fuzzed must write nothing)."""


@contextlib.contextmanager
def contained(read_only_below: Path):
    if not _state.get("installed"):
        sys.addaudithook(_hook)  # hooks cannot be removed: this one acts only inside contained()
        _state["installed"] = True
    _state["root"] = os.path.realpath(read_only_below)
    try:
        yield
    finally:
        _state["root"] = None


def _hook(event: str, args: tuple) -> None:
    root = _state["root"]
    if root is None:
        return
    if event == "open":
        path, mode, flags = args
        writes = (mode and any(c in mode for c in "wax+")) or (flags or 0) & _WRITE_FLAGS
        if writes and isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path) != os.devnull:  # (dill opens it on import)
            raise Wrote(f"wrote {os.fsdecode(path)} (mode {mode!r})")
    elif event in WRITE_EVENTS:
        raise Wrote(f"{event} {args!r}")
    elif event in LIST_EVENTS and "importlib" not in sys._getframe(1).f_code.co_filename:  # imports list sys.path
        where = args[0] if args and args[0] is not None else "."
        where = os.fsdecode(where) if isinstance(where, (str, bytes, os.PathLike)) else "."
        real = os.path.realpath(where if event != "glob.glob" else _glob_root(where))
        if real != root and not real.startswith(root + os.sep):
            raise Listed(f"fuzz containment: {event} of {real}, outside the test's folder {root}")


def _glob_root(pattern: str) -> str:
    """The folder a glob starts from: its path before the first wildcard."""
    head = []
    for part in Path(pattern).parts:
        if any(c in part for c in "*?["):
            break
        head.append(part)
    return os.path.join(*head) if head else "."
