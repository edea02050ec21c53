"""Tamper and truncation: a token shard, a checkpoint, a Parquet part, a manifest or a tokenizer changed after its
step wrote it is refused by the next command that reads it, in one line naming the file and the step to re-run,
with nothing written; the untouched artifact is accepted, and a pipeline re-makes a changed artifact on its own."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import TINY_PRETRAIN, run_cli, write

pytest.importorskip("sentencepiece")

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # training subprocesses share 2 cores with other engineers
CHANGED = "the artifact was changed after it was written"

# what reads each kind of artifact, run from a directory holding copies of docs, tok, tokens and model
PRETRAIN = ["pretrain", "--input", "tokens", "--output", "out", "--tokenizer", "tok", "--max-steps", "1", *TINY_PRETRAIN]
GENERATE = ["generate", "model", "--prompt", "The", "--max-new-tokens", "2"]
SFT = ["sft", "--input", "embedded:python-qa", "--checkpoint", "model", "--output", "out", "--max-steps", "1", "--device", "cpu"]
EVALUATE = ["evaluate", "--input", "model", "--output", "out", "--tasks", "blimp_mini", "--limit", "2", "--device", "cpu"]
FILTER = ["filter", "--input", "docs", "--output", "out"]
DEDUP = ["dedup", "--input", "docs", "--output", "out"]
TOKENIZE = ["tokenize", "--input", "docs", "--output", "out", "--tokenizer", "tok"]
TOKENIZE_FILE = ["tokenize", "--input", "docs", "--output", "out", "--tokenizer", "tok/tokenizer.model"]

SHARD, CHECKPOINT, PART, TOKENIZER = "tokens/train/shard-00000.safetensors", "model/model.safetensors", "docs/part-00000.parquet", "tok/tokenizer.model"
STEP = {"tokens": "tokenize", "model": "pretrain", "docs": "ingest", "tok": "train_tokenizer"}  # as chat_base made them


@pytest.fixture
def work(chat_base, tmp_path) -> Path:
    """Copies of chat_base's artifacts (the fixture is shared by the session: never changed in place)."""
    for name in STEP:
        shutil.copytree(chat_base / name, tmp_path / name, ignore=shutil.ignore_patterns("checkpoints", "_verified.json"))
    return tmp_path


def _files(root: Path) -> set[str]:
    # _verified.json is a cache an intact input may gain (llmpipe/artifacts/verify.py), not something a step writes
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.name != "_verified.json"}


def _refused(work: Path, args: list[str]) -> str:
    """Run a command that must refuse: exit 2, one line on stderr, no traceback, nothing written. Returns the line."""
    before = _files(work)
    res = run_cli(*args, cwd=work, timeout=120, env=ONE_THREAD)
    assert res.returncode == 2, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert _files(work) == before, f"written: {sorted(_files(work) - before)}"
    return lines[0]


def _recorded(work: Path, rel: str) -> dict:
    artifact, _, name = rel.partition("/")
    return json.loads((work / artifact / "_manifest.json").read_text())["checksums"][name]


def _truncate(path: Path) -> str:
    """Cut the file in half; the expected error."""
    size = path.stat().st_size
    os.truncate(path, size // 2)
    return f"size {size // 2:,}, expected {size:,}"


def _flip(path: Path, recorded: dict) -> str:
    """Flip one bit in the middle, keeping the size (and the mtime, as a careful editor would); the expected error."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    got = hashlib.blake2b(bytes(data), digest_size=16).hexdigest()
    return f"blake2b {got[:16]}, expected {recorded['blake2b'][:16]}"


@pytest.mark.parametrize("rel, readers", [
    (SHARD, [PRETRAIN]),
    (CHECKPOINT, [GENERATE, SFT, EVALUATE]),
    (PART, [FILTER, DEDUP]),
    (TOKENIZER, [TOKENIZE, TOKENIZE_FILE]),
], ids=["token-shard", "checkpoint", "parquet-part", "tokenizer"])
@pytest.mark.parametrize("change", ["truncated", "flipped"])
def test_a_changed_file_is_refused_naming_it(work, rel, readers, change):
    recorded = _recorded(work, rel)
    detail = _truncate(work / rel) if change == "truncated" else _flip(work / rel, recorded)
    expected = f"error: {rel} does not match its manifest ({detail}): {CHANGED}; re-run step {STEP[rel.split('/')[0]]}"
    for args in readers:
        assert _refused(work, args) == expected, args
        assert not (work / "out").exists()


def _canonical_sha256(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


@pytest.mark.parametrize("artifact, readers", [("docs", [FILTER, DEDUP]), ("tokens", [PRETRAIN]), ("model", [GENERATE, SFT])])
def test_an_edited_manifest_is_refused(work, artifact, readers):
    """Counts edited by hand, one digit, the manifest keeping its size."""
    path = work / artifact / "_manifest.json"
    text = path.read_text()
    manifest = json.loads(text)
    key, value = next((k, v) for k, v in sorted(manifest["counts"].items()) if isinstance(v, int) and v > 0)
    edited = text.replace(f'"{key}": {value}', f'"{key}": {value ^ 1}', 1)
    assert edited != text and len(edited) == len(text)
    path.write_text(edited)
    actual = _canonical_sha256(json.loads(edited))
    expected = (f"error: {artifact}/_manifest.json does not match its own hash (sha256 {actual[:16]}, expected "
                f"{manifest['manifest_sha256'][:16]}): the manifest was edited after it was written; re-run step {STEP[artifact]}")
    for args in readers:
        assert _refused(work, args) == expected, args


def test_a_truncated_manifest_is_refused(work):
    path = work / "docs" / "_manifest.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    try:
        json.loads(text[: len(text) // 2])
    except json.JSONDecodeError as e:
        reason = str(e)
    assert _refused(work, FILTER) == f"error: docs/_manifest.json: unreadable manifest ({reason}); re-run the step that makes it"


def test_untouched_artifacts_are_accepted(work):
    """The same commands on the copies as made: each runs, and the manifests record what the readers check."""
    for args in (PRETRAIN, FILTER, TOKENIZE_FILE):
        run_cli(*args, cwd=work, check=True, timeout=300, env=ONE_THREAD)
        shutil.rmtree(work / "out")
    res = run_cli(*GENERATE, cwd=work, check=True, timeout=120, env=ONE_THREAD)
    assert res.stdout.startswith("The")
    for rel in (SHARD, CHECKPOINT, PART, TOKENIZER):
        data = (work / rel).read_bytes()
        assert _recorded(work, rel) == {"size": len(data), "blake2b": hashlib.blake2b(data, digest_size=16).hexdigest()}
    for artifact in STEP:
        manifest = json.loads((work / artifact / "_manifest.json").read_text())
        assert manifest["manifest_sha256"] == _canonical_sha256(manifest)


def test_a_re_read_trusts_its_stamp_until_the_file_changes(tmp_path):
    """Hashes are taken once: a file older than the racy window is stamped, and re-hashed only when its stat moves
    (an edit that restores the mtime still moves the ctime)."""
    import llmpipe
    from llmpipe.artifacts.verify import RACY_NS, STAMP, check_artifact
    from llmpipe.errors import InputError

    write(tmp_path / "docs.jsonl", "".join(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(50)))
    llmpipe.run_stage("ingest", [tmp_path / "docs.jsonl"], tmp_path / "docs")
    part = tmp_path / "docs" / "part-00000.parquet"
    time.sleep(RACY_NS / 1e9 + 0.2)
    check_artifact(tmp_path / "docs")
    stamp = json.loads((tmp_path / "docs" / STAMP).read_text())["files"]["part-00000.parquet"]
    st = part.stat()
    assert stamp == {"stat": [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_dev, st.st_ino], "blake2b": _recorded(tmp_path, "docs/part-00000.parquet")["blake2b"]}
    _flip(part, stamp)
    with pytest.raises(InputError, match="part-00000.parquet does not match its manifest"):
        check_artifact(tmp_path / "docs")


def test_an_old_manifest_is_read_unverified_with_a_note(work):
    """Manifests written before checksums (no checksums, no manifest_sha256) still read, and say so once."""
    path = work / "docs" / "_manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["checksums"], manifest["manifest_sha256"]
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    res = run_cli(*FILTER, cwd=work, check=True, timeout=120)
    notes = [line for line in res.stderr.splitlines() if "note:" in line]
    assert len(notes) == 1 and notes[0].endswith("note: docs was written before llmpipe recorded checksums, so its files are read "
                                                 "unverified; re-run step ingest to record them"), res.stderr


PIPELINE = """
[pipeline]
workdir = "runs"

[steps.ingest]
inputs = ["docs.jsonl"]

[steps.filter]
inputs = ["ingest"]
"""


def test_a_pipeline_re_makes_a_changed_artifact(tmp_path):
    """`llmpipe run` sees the changed part, re-runs the step that wrote it, and its reader stays fresh (same bytes)."""
    write(tmp_path / "docs.jsonl", "".join(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(50)))
    write(tmp_path / "p.toml", PIPELINE)
    run_cli("run", "p.toml", cwd=tmp_path, check=True, timeout=120)
    part = tmp_path / "runs/ingest/part-00000.parquet"
    detail = _truncate(part)
    status = run_cli("status", "p.toml", cwd=tmp_path, check=True, timeout=60).stdout
    assert "runs/ingest/part-00000.parquet does not match its manifest" in " ".join(status.split()), status
    res = run_cli("run", "p.toml", cwd=tmp_path, check=True, timeout=120)
    assert f"ingest: stale (runs/ingest/part-00000.parquet does not match its manifest ({detail}): {CHANGED}), running ingest" in res.stderr
    assert "filter: fresh, skipped" in res.stderr  # the re-made part has the bytes filter read
