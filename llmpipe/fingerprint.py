"""Content fingerprints: a step is fresh when stage, version, params and inputs are unchanged.

Artifacts contribute their manifest's fingerprint (not their bytes); raw files contribute
path, size and modification time, which is what make-style tools trust too.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

from llmpipe.config import canonical_json


def fingerprint(stage: str, version: int, params: dict, input_fingerprints: list[str]) -> str:
    payload = canonical_json({"stage": stage, "version": version, "params": params, "inputs": input_fingerprints})
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def file_fingerprint(path: str) -> str:
    st = os.stat(path)
    return hashlib.sha256(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:24]


def embedded_fingerprint(name: str) -> str:
    # The embedded texts come from this Python and its installed packages.
    return hashlib.sha256(f"{name}\0{platform.python_version()}".encode()).hexdigest()[:24]


def files_fingerprint(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(file_fingerprint(p).encode())
    return h.hexdigest()[:24]


def dir_is_inside(child: Path, parent: Path) -> bool:
    child, parent = Path(child).resolve(), Path(parent).resolve()
    return child == parent or parent in child.parents
