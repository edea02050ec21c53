"""A full disk while a step writes: the previous complete artifact stays in place and intact, the failure is one
line, and a run after space is freed resumes and completes. On a real small filesystem (a tmpfs mounted here)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import make_jsonl_corpus, run_cli, write

PIPELINE = """
[pipeline]
workdir = "{workdir}"
workers = 2

[steps.ingest]
inputs = ["{corpus}/*.jsonl"]

[steps.dedup]
inputs = ["ingest"]
"""
DISK_MB = 32


@pytest.fixture
def small_disk(tmp_path):
    """A DISK_MB tmpfs: a real filesystem that fills up (mounting needs root; skipped where it is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(disk)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about `leave_bytes` free on the disk."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave_bytes, 0))
    return filler


def files_of(artifact: Path) -> dict[str, str]:
    """Every file of an artifact with its sha256 (stamps left by readers excluded: they are not its content)."""
    return {str(p.relative_to(artifact)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(artifact.rglob("*")) if p.is_file() and not p.name.startswith("_verified")}


@pytest.mark.slow
def test_disk_full_keeps_the_previous_artifact_and_the_rerun_completes(tmp_path, small_disk, shared_data):
    corpus = tmp_path / "corpus"
    make_jsonl_corpus(shared_data, corpus, n_files=6)
    later = [corpus / f"shard-{k:02d}.jsonl" for k in (4, 5)]
    for p in later:  # the first run sees four files; the two others arrive later
        p.rename(p.with_suffix(".later"))
    pipeline = write(small_disk / "pipeline.toml", PIPELINE.format(workdir="runs", corpus=corpus))
    run_cli("run", str(pipeline), cwd=small_disk, check=True)
    ingest, dedup = small_disk / "runs" / "ingest", small_disk / "runs" / "dedup"
    before = {"ingest": files_of(ingest), "dedup": files_of(dedup)}

    for p in later:
        p.with_suffix(".later").rename(p)
    filler = fill(small_disk, leave_bytes=64 * 1024)  # the new ingest (~1 MB of parts) cannot be written
    res = run_cli("run", str(pipeline), cwd=small_disk)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ingest: the disk is full (No space left on device"), res.stderr
    assert lines[-1].endswith("; the previous complete artifact is kept in its place; free space and run again, "
                              "the finished tasks are kept and it resumes"), lines[-1]
    assert "Traceback" not in res.stderr and "OSError" not in res.stderr
    # the previous artifacts are in place, byte for byte, and still pass the checks every reader makes
    assert {"ingest": files_of(ingest), "dedup": files_of(dedup)} == before
    assert run_cli("inspect", str(ingest), cwd=small_disk).returncode == 0
    assert not (ingest.parent / ".ingest.previous").exists()
    status = run_cli("status", str(pipeline), cwd=small_disk, check=True).stdout
    assert "incomplete ingest (" in status and "kept at .ingest.partial after a failed run" in status, status

    filler.unlink()
    res = run_cli("run", str(pipeline), cwd=small_disk, check=True)
    assert "ingest: incomplete" in res.stderr, res.stderr  # it resumed the work set aside
    assert not (ingest.parent / ".ingest.partial").exists() and not (ingest.parent / ".ingest.previous").exists()
    # the same artifacts as a run on a disk with room from the start
    roomy = tmp_path / "roomy"
    run_cli("run", str(write(roomy / "pipeline.toml", PIPELINE.format(workdir="runs", corpus=corpus))), cwd=roomy, check=True)
    for name in ("ingest", "dedup"):
        got, want = files_of(small_disk / "runs" / name), files_of(roomy / "runs" / name)
        assert {k: v for k, v in got.items() if "part-" in k} == {k: v for k, v in want.items() if "part-" in k}


TRAINING = """
[pipeline]
workdir = "runs"

[steps.ingest]
inputs = ["{corpus}"]

[steps.tokenizer]
stage = "train_tokenizer"
inputs = ["ingest"]
vocab_size = 512

[steps.tokens]
stage = "tokenize"
inputs = ["ingest"]
tokenizer = "tokenizer"

[steps.model]
stage = "pretrain"
inputs = ["tokens"]
tokenizer = "tokenizer"
n_layer = 2
n_embd = 64
n_head = 4
n_kv_head = 4
seq_len = 128
micro_batch = 4
batch_tokens = 512
max_steps = 6
warmup_steps = 1
eval_every = 3
eval_steps = 1
checkpoint_every = 3
trackers = []
device = "cpu"
"""


@pytest.mark.slow
def test_disk_full_while_training_writes_a_checkpoint(tmp_path, small_disk, shared_data):
    """The training loop's checkpoint is what fills the disk: one line, the previous model in place, then a resume."""
    pipeline = write(small_disk / "pipeline.toml", TRAINING.format(corpus=shared_data / "text" / "c4_demo.jsonl"))
    env = {"OMP_NUM_THREADS": "1"}
    run_cli("run", str(pipeline), cwd=small_disk, check=True, env=env)
    model = small_disk / "runs" / "model"
    before = files_of(model)
    checkpoint_bytes = sum(p.stat().st_size for p in model.rglob("*.safetensors"))

    filler = fill(small_disk, leave_bytes=checkpoint_bytes // 3)  # room to start, not for a checkpoint
    res = run_cli("run", str(pipeline), "--set", "model.max_steps=9", cwd=small_disk, env=env)
    assert res.returncode == 1, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model: the disk is full (No space left on device writing "), res.stderr
    assert "the previous complete artifact is kept in its place" in last and "Traceback" not in res.stderr
    assert files_of(model) == before

    filler.unlink()
    run_cli("run", str(pipeline), "--set", "model.max_steps=9", cwd=small_disk, check=True, env=env)
    assert json.loads((model / "_manifest.json").read_text())["params"]["max_steps"] == 9
    assert not (model.parent / ".model.partial").exists() and not (model.parent / ".model.previous").exists()
