"""Fingerprints: a step is fresh when its stage, version, params and the CONTENT of its inputs are unchanged.

A fingerprint names what a step reads, never where it sits, so a moved checkout or a copied
workdir (`cp -a runs/p runs/q`) is fresh in its new place. Each input contributes:

- an artifact: its manifest's `content_hash`, a hash of the names and bytes of its data files
  taken once at finalize (in the same read as each file's own checksum, which readers check:
  llmpipe/artifacts/verify.py). A step that re-ran and wrote the same bytes (dedup at threshold 0.7
  removing nothing more than at 0.8) therefore leaves its dependents fresh: early cutoff, as
  content-addressed build systems do. Records of how the artifact was made (RECORDS: a training
  run's metrics.jsonl, which holds wall times and throughput) stay out of it, so a model trained
  again to the same weights keeps its dependents fresh too; their checksums still guard them.
  Manifests older than content hashes contribute their fingerprint instead.
- an artifact an earlier step of the pipeline has yet to make: a provisional `planned:<that
  step's fingerprint>`. The runner re-resolves it from the real manifest once the step has run
  (pipeline.refresh_inputs), and finalize settles whatever is still provisional (a Slurm job is
  submitted before its upstream ran), so a manifest always records content fingerprints.
- raw files: their path relative to the files' common directory, size and mtime. Stat only,
  what make trusts: hashing a terabyte of crawl on every `llmpipe status` would cost minutes.
  Relative, so a copied input tree keeps its fingerprint when the copy keeps mtimes (`cp -a`,
  rsync -a); a copy that resets them counts as changed, which errs on the safe side.
- an embedded source: its name and the Python version it comes from.
- a path param (tokenizer = "tokenizer", --reference evals.jsonl): what it names, by the same
  rules. The absolute path stays in `_run.json`, where the stage reads it, but leaves the
  fingerprint's params.
"""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from llmpipe.config import canonical_json

PLANNED = "planned:"  # prefix of a provisional fingerprint: an input whose step has not run yet
HASH_BLOCK = 1 << 20
RECORDS = frozenset({"metrics.jsonl"})  # files of an artifact left out of its content hash (see above)


def fingerprint(stage: str, version: int, params: dict, input_fingerprints: list[str]) -> str:
    payload = canonical_json({"stage": stage, "version": version, "params": params, "inputs": input_fingerprints})
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def step_fingerprint(stage: str, version: int, params: dict, input_fingerprints: list[str], param_fingerprints: dict[str, str]) -> str:
    """A step's fingerprint: path params enter by what they name (param_fingerprints), not by their path."""
    location_free = {k: v for k, v in params.items() if k not in param_fingerprints}
    extra = [f"{k}={v}" for k, v in sorted(param_fingerprints.items())]
    return fingerprint(stage, version, location_free, list(input_fingerprints) + extra)


def planned_fingerprint(step_fp: str) -> str:
    return PLANNED + step_fp


def is_planned(fp: str) -> bool:
    return fp.startswith(PLANNED)


def file_fingerprint(path: str, root: str | None = None) -> str:
    """Name relative to root (the file's directory by default), size and mtime."""
    st = os.stat(path)
    name = os.path.relpath(os.path.abspath(path), os.path.abspath(root or os.path.dirname(os.path.abspath(path))))
    return hashlib.sha256(f"{name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:24]


def embedded_fingerprint(name: str) -> str:
    # The embedded texts come from this Python and its installed packages.
    return hashlib.sha256(f"{name}\0{platform.python_version()}".encode()).hexdigest()[:24]


def files_fingerprint(paths: list[str]) -> str:
    """Raw files, named relative to their common directory so the tree can move."""
    if not paths:
        return hashlib.sha256(b"").hexdigest()[:24]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    h = hashlib.sha256()
    for p in paths:
        h.update(file_fingerprint(p, root).encode())
    return h.hexdigest()[:24]


def content_hash(root: Path, names: list[str]) -> str:
    """blake2b over the names and bytes of an artifact's data files (directories walked in name order)."""
    return digest_files(root, names)[0]


@dataclass(frozen=True)
class FileDigest:
    name: str  # path below the artifact, posix
    size: int
    blake2b: str  # of the file's bytes alone
    identity: tuple[int, ...] | None  # file_identity() while it was hashed; None if it changed meanwhile


def file_identity(st: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's bytes change through the filesystem: size, mtime, and ctime, which no
    user call can set back (utime sets it to now), so an edit that restores the mtime still shows; with the
    device and inode, so a file put in its place (a copy, a rename) is a new file."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino)


CTIME = 2  # the index of ctime in file_identity


def data_files(root: Path, names: list[str]) -> list[Path]:
    """The files behind a manifest's `files` (a name may be a directory: its files, walked in name order)."""
    root = Path(root)
    out = []
    for name in names:
        path = root / name
        out += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return out


def digest_files(root: Path, names: list[str]) -> tuple[str, list[FileDigest]]:
    """In one read of each file: content_hash (names, sizes and bytes of all but RECORDS) and each file's own digest."""
    root = Path(root)
    whole = hashlib.blake2b(digest_size=16)
    digests = []
    for f in data_files(root, names):
        rel = f.relative_to(root).as_posix()
        before = file_identity(f.stat())
        content = rel not in RECORDS
        if content:
            whole.update(f"{rel}\0{before[0]}\0".encode())
        one = hashlib.blake2b(digest_size=16)
        with open(f, "rb") as fh:
            while block := fh.read(HASH_BLOCK):
                if content:
                    whole.update(block)
                one.update(block)
        after = file_identity(f.stat())
        digests.append(FileDigest(rel, before[0], one.hexdigest(), after if after == before else None))
    return whole.hexdigest(), digests


def hash_file(path: Path) -> tuple[str, tuple[int, ...] | None]:
    """(blake2b of the bytes, file_identity if the file did not change while read)."""
    before = file_identity(os.stat(path))
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            h.update(block)
    after = file_identity(os.stat(path))
    return h.hexdigest(), after if after == before else None


def dir_is_inside(child: Path, parent: Path) -> bool:
    child, parent = Path(child).resolve(), Path(parent).resolve()
    return child == parent or parent in child.parents
