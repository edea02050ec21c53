"""Tamper and truncation checks: an artifact's files against the sizes and hashes its manifest recorded.

finalize records `checksums` in the manifest: for every file it covers, its size and blake2b (the
hash content_hash already uses, in the same read; 1.2 GB/s on one core of the EPYC this was
measured on, 0.08 s for a 100 MB shard, where a stat costs 1.5 us). Checked, before anything is
written: an artifact given by path when it is resolved (inputs.resolve_input, before a stage's plan
reads it), one an earlier step of the pipeline made when the step reading it starts (step.prepare),
a checkpoint again when it is loaded (generate, chat), and a step's own output when run or status
decides whether it is fresh (step.state: a changed artifact is stale, so `llmpipe run` re-makes it).

- sizes always, of every file before any hash: a truncated or grown file is told at once;
- hashes, unless `_verified.json` (a stamp in the artifact) says the file was hashed before and its
  size, mtime, ctime, device and inode have not moved since. Any write through the filesystem moves
  ctime, which no user call can set back, so an edit that keeps the size (and restores the mtime) is
  re-hashed and caught; a re-read of an unchanged artifact costs stats only, as git's index does.
  safetensors checks no hash on load because that would undo its zero-copy
  (safetensors/safetensors#220), and datasets hashes downloads only under ALL_CHECKS: hashing once
  and trusting the stat after is the middle way. finalize stamps the files it has just hashed.
  Not caught: bytes that rot on the disk without a write (the filesystem's checksums' job), and a
  deliberate forgery that rewrites the hashes too (this is integrity, not signing).

A stamp records only files whose ctime is RACY_NS older than the moment it was taken: a write in
the same timestamp tick as the stamp would otherwise leave the stat unchanged (git's "racy" files).
An artifact whose manifest predates checksums is read unverified, with a note saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from llmpipe.artifacts.layout import MANIFEST, read_json
from llmpipe.artifacts.manifest import edited_manifest, read_manifest, shown, step_of
from llmpipe.errors import InputError
from llmpipe.fingerprint import CTIME, digest_files, file_identity, hash_file

STAMP = "_verified.json"
RACY_NS = 2_000_000_000  # past any filesystem timestamp granularity and NFS clock skew worth trusting
CHANGED = "the artifact was changed after it was written"

_hashed: dict[tuple[int, ...], str] = {}  # file_identity -> blake2b: one hash per file per process
_noted: set[str] = set()


def seal(artifact: Path, names: list[str]) -> tuple[str, dict[str, dict]]:
    """(content_hash, checksums) of an artifact's files in one read each; stamps them, so readers need not hash again."""
    whole, digests = digest_files(artifact, names)
    checksums = {d.name: {"size": d.size, "blake2b": d.blake2b} for d in digests}
    _hashed.update({d.identity: d.blake2b for d in digests if d.identity is not None})  # the next step here reads them at once
    now = time.time_ns()
    _write_stamps(Path(artifact), {d.name: _stamp(d.identity, d.blake2b) for d in digests if _settled(d.identity, now)}, require_manifest=False)
    return whole, checksums


def damage(artifact: Path, manifest: dict, names: set[str] | None = None) -> str | None:
    """What in the artifact no longer matches its manifest (an edit of the manifest, or of a file), or None.

    names: check only these files (paths below the artifact); all the manifest covers by default.
    """
    artifact = Path(artifact)
    if problem := edited_manifest(artifact, manifest):
        return problem
    checksums = manifest.get("checksums")
    if checksums is None:
        _note_unverified(artifact, manifest)
        return None
    stats = {}
    for name, want in checksums.items():  # sizes of all first: a truncated file is told before any hashing
        if names is not None and name not in names:
            continue
        path = artifact / name
        try:
            stats[name] = st = os.stat(path)
        except FileNotFoundError:
            return f"{shown(path)} is missing (its manifest lists {want['size']:,} bytes): {CHANGED}"
        except OSError as e:
            return f"{shown(path)} cannot be read ({e.strerror})"
        if st.st_size != want["size"]:
            return f"{shown(path)} does not match its manifest (size {st.st_size:,}, expected {want['size']:,}): {CHANGED}"
    stamps, fresh, now = _read_stamps(artifact), {}, time.time_ns()
    for name, st in stats.items():
        want, path, identity = checksums[name]["blake2b"], artifact / name, file_identity(st)
        if stamps.get(name) == _stamp(identity, want):
            continue
        if _hashed.get(identity) != want:
            try:
                got, identity = hash_file(path)
            except OSError as e:
                return f"{shown(path)} cannot be read ({e.strerror})"
            if got != want:
                return f"{shown(path)} does not match its manifest (blake2b {got[:16]}, expected {want[:16]}): {CHANGED}"
            if identity is not None:
                _hashed[identity] = got
        if _settled(identity, now):
            fresh[name] = _stamp(identity, want)
    if fresh:  # only once all is well: a step that refuses writes nothing, not even here
        _write_stamps(artifact, {**stamps, **fresh})
    return None


def check_artifact(artifact: Path, names: set[str] | None = None) -> None:
    """Raise a one-line InputError naming the file and the step to re-run unless the artifact is as written.

    A directory without a manifest is left alone: an artifact a pipeline step has yet to make
    (resolving refuses incomplete artifacts on its own)."""
    artifact = Path(artifact)
    if not (artifact / MANIFEST).is_file():
        return
    manifest = read_manifest(artifact, verify=False)
    if problem := damage(artifact, manifest, names):
        raise InputError(f"{problem}; re-run step {step_of(manifest)}")


def check_path(path: str | Path) -> None:
    """Check what a path names: an artifact directory, or files that sit inside an artifact."""
    path = Path(path)
    if path.is_dir():
        check_artifact(path)
    elif path.is_file():
        check_files([str(path)])


def check_files(files: list[str]) -> None:
    """Files given one by one (`--input runs/docs/part-00000.parquet`, `--tokenizer runs/tok/tokenizer.model`)
    are checked against the manifest of the artifact they sit in, if any."""
    by_artifact: dict[Path, set[str]] = {}
    roots: dict[Path, Path | None] = {}  # directory -> the artifact it is in: each directory looked at once
    for f in files:
        path = Path(os.path.abspath(f))
        if (root := _enclosing_artifact(path.parent, roots)) is not None:
            by_artifact.setdefault(root, set()).add(path.relative_to(root).as_posix())
    for root, names in by_artifact.items():
        check_artifact(root, names)


def check_step_inputs(step) -> None:
    """Every artifact a step reads, before it writes: its inputs, and what its path params name."""
    from llmpipe.inputs import BUILTIN_PREFIX

    for inp in step.inputs:
        if inp.kind == "artifact":
            check_artifact(Path(inp.path))
        elif inp.kind == "files":
            check_files(list(inp.files))
    paths = [getattr(step.params, key) for key in step.stage.path_params]
    paths += list(step.stage.extra.get("param_files", lambda _: {})(step.params).values())
    for value in paths:
        if value and not str(value).startswith(BUILTIN_PREFIX):
            check_path(value)


def _enclosing_artifact(directory: Path, known: dict[Path, Path | None]) -> Path | None:
    if directory not in known:
        if (directory / MANIFEST).is_file():
            known[directory] = directory
        else:
            known[directory] = None if directory.parent == directory else _enclosing_artifact(directory.parent, known)
    return known[directory]


def _note_unverified(artifact: Path, manifest: dict) -> None:
    from llmpipe.log import log

    key = str(artifact.resolve())  # named relative by resolve_input, absolute by prepare: one note
    if key not in _noted:
        _noted.add(key)
        log(f"note: {shown(artifact)} was written before llmpipe recorded checksums, so its files are read unverified; "
            f"re-run step {step_of(manifest)} to record them")


def _settled(identity: tuple[int, ...] | None, now_ns: int) -> bool:
    return identity is not None and now_ns - identity[CTIME] > RACY_NS


def _stamp(identity: tuple[int, ...], blake2b: str) -> dict:
    return {"stat": list(identity), "blake2b": blake2b}


def _read_stamps(artifact: Path) -> dict:
    try:
        stamps = read_json(artifact / STAMP).get("files", {})
        return stamps if isinstance(stamps, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}  # a stamp is a cache: a lost or broken one only means hashing again


def _write_stamps(artifact: Path, stamps: dict, require_manifest: bool = True) -> None:
    """Atomically, never creating the directory (a re-run may have just removed it); a read-only artifact keeps none."""
    if not stamps or (require_manifest and not (artifact / MANIFEST).is_file()):
        return
    tmp = artifact / f"{STAMP}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"files": stamps}, f, sort_keys=True)
        os.replace(tmp, artifact / STAMP)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
