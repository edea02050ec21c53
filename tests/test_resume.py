"""A run killed with SIGKILL halfway through a multi-task step resumes to the same artifact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import make_jsonl_corpus, run_cli, write

PIPELINE = """
[pipeline]
workdir = "{workdir}"
workers = 2

[steps.ingest]
inputs = ["corpus/*.jsonl"]
task_bytes = 20_000_000  # files of 6-15 MB, one or two a task: 8 tasks, half of them reading two files

[steps.dedup]
inputs = ["ingest"]
"""
N_FILES = 12


def rows(artifact: Path) -> list[dict]:
    parts = sorted(artifact.glob("part-*.parquet"))
    return [r for p in parts for r in pq.read_table(p).to_pylist()]


@pytest.mark.slow
def test_kill_9_halfway_then_rerun_equals_uninterrupted_run(tmp_path, shared_data):
    # ~10 MB per file, so each task takes a few tenths of a second and the kill lands mid-step.
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=N_FILES, copies=150)
    write(tmp_path / "killed.toml", PIPELINE.format(workdir="runs/killed"))
    write(tmp_path / "clean.toml", PIPELINE.format(workdir="runs/clean"))
    records = tmp_path / "runs/killed/ingest/_tasks/read"

    proc = subprocess.Popen([sys.executable, "-m", "llmpipe", "run", "killed.toml"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if records.is_dir() and len(list(records.glob("*.json"))) >= 2:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its pool workers, as an OOM killer or scancel would
    proc.wait()
    done_at_kill = len(list(records.glob("*.json")))
    n_tasks = len(json.loads((tmp_path / "runs/killed/ingest/_run.json").read_text())["phases"][0]["tasks"])
    assert n_tasks == 8 and 0 < done_at_kill < n_tasks, f"the kill should land mid-step, but {done_at_kill}/{n_tasks} tasks were done"
    assert not (tmp_path / "runs/killed/ingest/_manifest.json").exists()

    status = run_cli("status", "killed.toml", cwd=tmp_path, check=True)
    assert "incomplete" in status.stdout and "tasks done" in status.stdout

    run_cli("run", "killed.toml", cwd=tmp_path, check=True)
    run_cli("run", "clean.toml", cwd=tmp_path, check=True)

    for step in ("ingest", "dedup"):
        killed, clean = rows(tmp_path / "runs/killed" / step), rows(tmp_path / "runs/clean" / step)
        ids = [r["id"] for r in killed]
        assert len(ids) == len(set(ids)), "no duplicates"
        assert killed == clean, f"{step}: resumed artifact differs from an uninterrupted run"
    assert len(rows(tmp_path / "runs/killed/ingest")) == 300 * 150
    leftovers = [p for p in (tmp_path / "runs/killed").rglob("*.tmp-*")]
    assert leftovers == []
