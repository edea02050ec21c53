"""`_manifest.json`: what an artifact is and how it was made, written last and atomically.

A manifest carries `manifest_sha256`, the sha256 of its own canonical JSON without that key, so
an edit made after it was written (counts changed by hand, a line lost) is told apart from the
manifest the step wrote. Manifests from before it existed have neither it nor `checksums`, and
read as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from llmpipe.artifacts.layout import MANIFEST, read_json, write_json_atomic
from llmpipe.errors import InputError

SELF_HASH = "manifest_sha256"


def write_manifest(artifact: Path, manifest: dict) -> None:
    """Write the manifest with its own hash added (in place, so the caller holds what is on disk)."""
    manifest.pop(SELF_HASH, None)
    manifest[SELF_HASH] = manifest_sha256(manifest)
    write_json_atomic(Path(artifact) / MANIFEST, manifest)


def manifest_sha256(manifest: dict) -> str:
    from llmpipe.config import canonical_json

    return hashlib.sha256(canonical_json({k: v for k, v in manifest.items() if k != SELF_HASH}).encode()).hexdigest()


def shown(path: str | Path) -> str:
    """A path as a message shows it: relative to the working directory when below it, else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def step_of(manifest: dict) -> str:
    """The step to re-run for a damaged artifact, as its manifest names it."""
    return str(manifest.get("step") or manifest.get("stage") or "that made it")


def edited_manifest(artifact: Path, manifest: dict) -> str | None:
    """Why the manifest is not the one its step wrote, or None (also for manifests older than self-hashes)."""
    recorded = manifest.get(SELF_HASH)
    where = shown(Path(artifact) / MANIFEST)
    if recorded is None:
        # checksums came with the self-hash: a manifest holding one without the other lost a line
        return f"{where} has checksums but no {SELF_HASH}: the manifest was edited after it was written" if "checksums" in manifest else None
    actual = manifest_sha256(manifest)
    if actual != recorded:
        return f"{where} does not match its own hash (sha256 {actual[:16]}, expected {str(recorded)[:16]}): the manifest was edited after it was written"
    return None


def read_manifest(artifact: Path, verify: bool = True) -> dict:
    """The manifest of a complete artifact; an incomplete, unreadable or edited one is refused with a clear message.

    verify=False skips the self-hash, for resolving inputs before a run: the step that reads the
    artifact checks it before it writes (llmpipe.artifacts.verify), and a pipeline must still be
    able to plan the re-run of the step that wrote it.
    """
    path = Path(artifact) / MANIFEST
    if not path.exists():
        raise InputError(f"{artifact}: not a complete llmpipe artifact (no {MANIFEST}); re-run the step that makes it")
    try:
        manifest = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{shown(path)}: unreadable manifest ({e}); re-run the step that makes it") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{shown(path)}: unreadable manifest (not a JSON object); re-run the step that makes it")
    if verify and (problem := edited_manifest(artifact, manifest)):
        raise InputError(f"{problem}; re-run step {step_of(manifest)}")
    return manifest


def content_fingerprint(manifest: dict) -> str:
    """What an artifact contributes to its readers' fingerprints: the hash of its data files.

    Manifests written before content hashes existed fall back to their step fingerprint.
    """
    return manifest.get("content_hash") or manifest["fingerprint"]


def is_complete(artifact: Path) -> bool:
    return (Path(artifact) / MANIFEST).is_file()
