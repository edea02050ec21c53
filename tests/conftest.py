"""Shared fixtures: the real data in ../shared/data (skipped cleanly when absent) and a CLI runner."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (the shared data folder sits beside the repository)")
    return SHARED_DATA


def run_cli(*args: str, cwd: Path, check: bool = False, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m llmpipe ARGS` in cwd as a user would; returns the completed process."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    res = subprocess.run([sys.executable, "-m", "llmpipe", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and res.returncode != 0:
        raise AssertionError(f"llmpipe {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


def ctrl_c_reaches_it() -> None:
    """Popen's preexec_fn for a child a test interrupts: SIGINT back to its default. A shell starts a background job
    with SIGINT ignored, a child inherits that, and Python then never raises KeyboardInterrupt: run from such a job,
    the Ctrl-C tests would see the run go on as if nothing was pressed."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_jsonl_corpus(shared: Path, dest: Path, n_files: int, copies: int = 1) -> list[Path]:
    """Split the real C4 sample into n_files JSONL files; `copies` repeats each document with a new id
    (so files can be made large enough for a run to be killed halfway)."""
    import json

    lines = (shared / "text" / "c4_demo.jsonl").read_text().splitlines()
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n_files):
        path = dest / f"shard-{k:02d}.jsonl"
        with open(path, "w") as f:
            for c in range(copies):
                for i, line in enumerate(lines[k::n_files]):
                    doc = json.loads(line)
                    doc["id"] = f"{k}-{c}-{i}"
                    f.write(json.dumps(doc) + "\n")
        paths.append(path)
    return paths


def make_big_warc(shared: Path, dest: Path, nbytes: int) -> Path:
    """A .warc.gz of at least nbytes: the real crawl samples (Dolma, resiliparse, Common Crawl) one
    after another, repeated (a gzip member per record, as crawlers write; copies keep their record ids)."""
    warc = shared / "warc"
    unit = b"".join((warc / name).read_bytes() for name in (
        "dolma/sample-0000.warc.gz", "dolma/sample-0001.warc.gz", "resiliparse/warcfile.warc.gz", "commoncrawl/whirlwind.warc.gz"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as f:
        for _ in range(-(-nbytes // len(unit))):
            f.write(unit)
    return dest


def slurm_up() -> bool:
    """A real Slurm cluster answers here (CI starts one with .ci/start-slurm.sh)."""
    if shutil.which("sinfo") is None:
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return any(s in res.stdout for s in ("idle", "mixed", "alloc"))


# Marks for tests that run against the real local Slurm cluster.
SLURM_MARKS = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(not slurm_up(), reason="no Slurm cluster is up here (run .ci/start-slurm.sh as root to start one)"),
]


TINY_PRETRAIN = ["--n-layer", "2", "--n-embd", "64", "--n-head", "4", "--n-kv-head", "4", "--seq-len", "256", "--micro-batch", "4",
                 "--batch-tokens", "2048", "--warmup-steps", "2", "--eval-steps", "1", "--device", "cpu"]


@pytest.fixture(scope="session")
def chat_base(tmp_path_factory) -> Path:
    """A tiny base model (context 256, vocabulary 1000 with the chat role tokens) pretrained for 30 steps on
    the C4 sample, at <dir>/model, its tokenizer at <dir>/tok: what sft, dpo and chat tests start from."""
    import llmpipe

    if not (SHARED_DATA / "text" / "c4_demo.jsonl").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("chat_base")
    llmpipe.run_stage("ingest", [str(SHARED_DATA / "text" / "c4_demo.jsonl")], tmp / "docs")
    llmpipe.run_stage("train_tokenizer", [str(tmp / "docs")], tmp / "tok", vocab_size=1000, holdout_documents=30)
    llmpipe.run_stage("tokenize", [str(tmp / "docs")], tmp / "tokens", tokenizer=str(tmp / "tok"), val_fraction=0.1)
    run_cli("pretrain", "--input", "tokens", "--output", "model", "--tokenizer", "tok", "--max-steps", "30", *TINY_PRETRAIN, cwd=tmp, check=True)
    return tmp


def pytest_terminal_summary(terminalreporter):
    """The fuzz tests' counts: how many mutated inputs each reader was given, and what it did with them."""
    from tests.fuzz.results import RESULTS

    if not RESULTS:
        return
    terminalreporter.section("fuzzing: mutated inputs per reader")
    terminalreporter.write_line(f"{'reader':<26} {'inputs':>8} {'seconds':>8} {'returned':>9} {'refused':>8}")
    for r in RESULTS:
        terminalreporter.write_line(f"{r['reader']:<26} {r['inputs']:>8} {r['seconds']:>8} {r['returned']:>9} {r['refused']:>8}")
