"""Input references: earlier artifacts, raw files, directories and globs, or an embedded source.

Every input is resolved (and checked to exist) before anything is written. An input knows the
data files a stage reads and contributes one fingerprint. An artifact given by path is checked
against its manifest's checksums here (llmpipe.artifacts.verify); one an earlier step of the same
pipeline makes is checked when the step that reads it starts, so the pipeline can re-make it.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmpipe.artifacts.layout import MANIFEST, RUN
from llmpipe.artifacts.manifest import content_fingerprint, read_manifest
from llmpipe.artifacts.verify import check_artifact, check_files
from llmpipe.errors import InputError, did_you_mean
from llmpipe.fingerprint import embedded_fingerprint, files_fingerprint

EMBEDDED_PREFIX = "embedded:"  # inputs: text that ships with Python (see llmpipe/readers/embedded.py)
BUILTIN_PREFIX = "builtin:"  # path params: a model that ships with an installed package


@dataclass(frozen=True)
class Input:
    kind: Literal["artifact", "files", "embedded"]
    path: str  # artifact dir, the user's path/glob, or "embedded:NAME"
    files: tuple[str, ...]  # absolute paths of data files (artifact parts or raw files)
    fingerprint: str
    output_kind: str | None = None  # for artifacts: documents, tokens, ...
    skipped: tuple[str, ...] = ()  # entries of a directory left out: broken or looping symlinks, unreadable files

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": self.path, "files": list(self.files), "fingerprint": self.fingerprint,
                "output_kind": self.output_kind, "skipped": list(self.skipped)}

    @staticmethod
    def from_json(d: dict) -> "Input":
        return Input(d["kind"], d["path"], tuple(d["files"]), d["fingerprint"], d.get("output_kind"), tuple(d.get("skipped", ())))

    def display_path(self, file: str) -> str:
        """A data file's path as this input names it: the directory or glob base the user gave joined
        with the file's path below it, or the path as given for a single file. So the same file gets
        the same name however it was selected, and two index.html in different folders differ."""
        root = _glob_base(self.path) if glob.has_magic(self.path) else self.path
        below = os.path.relpath(file, os.path.abspath(root))
        return os.path.normpath(root if below == "." else os.path.join(root, below))


def artifact_input(path: Path) -> Input:
    # not checked against its checksums here: the step that reads it checks before it writes
    # (step.prepare), and a pipeline must be able to plan re-making an artifact that was changed
    manifest = read_manifest(path, verify=False)
    files = tuple(str((Path(path) / f).resolve()) for f in manifest.get("files", []))
    return Input("artifact", str(Path(path).resolve()), files, content_fingerprint(manifest), manifest.get("output_kind"))


def planned_input(path: Path, files: list[str], fp: str, output_kind: str) -> Input:
    """An artifact an earlier step will make: its files are known from that step's plan."""
    return Input("artifact", str(Path(path).resolve()), tuple(str(Path(path).resolve() / f) for f in files), fp, output_kind)


def _glob_base(pattern: str) -> str:
    """The directory part of a glob before its first wildcard ("data/**/*.html" -> "data")."""
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.path.join(*parts) if parts else "."


def _readable(path: str) -> bool:
    """A regular file we may open: not a broken or looping symlink, a fifo, or a file without read permission."""
    return os.path.isfile(path) and os.access(path, os.R_OK)


def _visible_files(root: Path) -> tuple[list[str], list[str]]:
    """(readable files, skipped entries) below root, hidden and _private names left out."""
    out, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        for f in sorted(filenames):
            if not f.startswith((".", "_")):
                path = os.path.join(dirpath, f)
                (out if _readable(path) else skipped).append(path)
    return out, skipped


def _check_embedded(ref: str, where: str) -> None:
    from llmpipe.readers.embedded import CHAT_SOURCES, SOURCES

    known = [EMBEDDED_PREFIX + s for s in SOURCES + CHAT_SOURCES]
    if ref not in known:  # compared without the shared prefix, which would make every name look close
        close = did_you_mean(ref.removeprefix(EMBEDDED_PREFIX), SOURCES + CHAT_SOURCES).replace('"', f'"{EMBEDDED_PREFIX}', 1)
        hint = close or f"; choose one of {', '.join(known)}"
        raise InputError(f'{where}: unknown embedded source "{ref}"{hint}')


def resolve_input(ref: str, where: str) -> Input:
    """Turn a user's input string into an Input, or raise a one-line InputError."""
    if ref.startswith(EMBEDDED_PREFIX):
        _check_embedded(ref, where)
        return Input("embedded", ref, (ref,), embedded_fingerprint(ref))
    p = Path(ref)
    skipped: list[str] = []
    if p.is_dir():
        if (p / MANIFEST).exists():
            check_artifact(p)  # a path given by hand is read now: it must be as its step wrote it
            return artifact_input(p)
        if (p / RUN).exists():
            raise InputError(f"{where}: {ref} is an incomplete artifact (no {MANIFEST}); re-run the step that makes it")
        files, skipped = _visible_files(p)
        if not files:
            what = f"only unreadable entries ({os.path.basename(skipped[0])}: a broken or looping symlink?)" if skipped else "no files"
            raise InputError(f"{where}: directory {ref} holds {what}")
    elif p.is_file():
        if not os.access(p, os.R_OK):
            raise InputError(f"{where}: input file {ref} is not readable (permission denied)")
        files = [str(p)]
    elif glob.has_magic(ref):
        matches = sorted(f for f in glob.glob(ref, recursive=True) if not os.path.isdir(f))
        files = [f for f in matches if _readable(f)]
        skipped = [f for f in matches if not _readable(f)]
        if not files:
            raise InputError(f'{where}: no file matches "{ref}"')
    elif p.is_symlink():
        raise InputError(f"{where}: input path {ref} is a broken or looping symlink")
    else:
        raise InputError(f"{where}: input path {ref} does not exist")
    # abspath, not resolve: a symlinked file keeps its name under the input (and a loop cannot raise)
    files = [os.path.abspath(f) for f in files]
    check_files(files)  # files picked out of an artifact (runs/tok/tokenizer.model) against its manifest
    return Input("files", ref, tuple(files), files_fingerprint(files), skipped=tuple(os.path.abspath(f) for f in skipped))
