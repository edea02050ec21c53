"""Input references: earlier artifacts, raw files, directories and globs, or an embedded source.

Every input is resolved (and checked to exist) before anything is written. An input knows the
data files a stage reads and contributes one fingerprint.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmpipe.artifacts.layout import MANIFEST, RUN
from llmpipe.artifacts.manifest import content_fingerprint, read_manifest
from llmpipe.errors import InputError
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

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": self.path, "files": list(self.files), "fingerprint": self.fingerprint, "output_kind": self.output_kind}

    @staticmethod
    def from_json(d: dict) -> "Input":
        return Input(d["kind"], d["path"], tuple(d["files"]), d["fingerprint"], d.get("output_kind"))


def artifact_input(path: Path) -> Input:
    manifest = read_manifest(path)
    files = tuple(str((Path(path) / f).resolve()) for f in manifest.get("files", []))
    return Input("artifact", str(Path(path).resolve()), files, content_fingerprint(manifest), manifest.get("output_kind"))


def planned_input(path: Path, files: list[str], fp: str, output_kind: str) -> Input:
    """An artifact an earlier step will make: its files are known from that step's plan."""
    return Input("artifact", str(Path(path).resolve()), tuple(str(Path(path).resolve() / f) for f in files), fp, output_kind)


def _visible_files(root: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith((".", "_")))
    return out


def resolve_input(ref: str, where: str) -> Input:
    """Turn a user's input string into an Input, or raise a one-line InputError."""
    if ref.startswith(EMBEDDED_PREFIX):
        return Input("embedded", ref, (ref,), embedded_fingerprint(ref))
    p = Path(ref)
    if p.is_dir():
        if (p / MANIFEST).exists():
            return artifact_input(p)
        if (p / RUN).exists():
            raise InputError(f"{where}: {ref} is an incomplete artifact (no {MANIFEST}); re-run the step that makes it")
        files = _visible_files(p)
        if not files:
            raise InputError(f"{where}: directory {ref} holds no files")
    elif p.is_file():
        files = [str(p)]
    elif glob.has_magic(ref):
        files = sorted(f for f in glob.glob(ref, recursive=True) if os.path.isfile(f))
        if not files:
            raise InputError(f'{where}: no file matches "{ref}"')
    else:
        raise InputError(f"{where}: input path {ref} does not exist")
    files = [str(Path(f).resolve()) for f in files]
    return Input("files", ref, tuple(files), files_fingerprint(files))
