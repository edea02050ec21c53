"""`_manifest.json`: what an artifact is and how it was made, written last and atomically."""

from __future__ import annotations

import json
from pathlib import Path

from llmpipe.artifacts.layout import MANIFEST, read_json, write_json_atomic
from llmpipe.errors import InputError


def write_manifest(artifact: Path, manifest: dict) -> None:
    write_json_atomic(Path(artifact) / MANIFEST, manifest)


def read_manifest(artifact: Path) -> dict:
    """The manifest of a complete artifact; an incomplete one is refused with a clear message."""
    path = Path(artifact) / MANIFEST
    if not path.exists():
        raise InputError(f"{artifact}: not a complete llmpipe artifact (no {MANIFEST}); re-run the step that makes it")
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable manifest: {e}") from None


def content_fingerprint(manifest: dict) -> str:
    """What an artifact contributes to its readers' fingerprints: the hash of its data files.

    Manifests written before content hashes existed fall back to their step fingerprint.
    """
    return manifest.get("content_hash") or manifest["fingerprint"]


def is_complete(artifact: Path) -> bool:
    return (Path(artifact) / MANIFEST).is_file()
