"""Incremental runs: fresh steps are skipped; a param change re-runs exactly that step and its dependents."""

from __future__ import annotations

import json
import time

import pytest

from llmpipe.pipeline import load_pipeline
from llmpipe.runner import run_pipeline
from tests.conftest import make_jsonl_corpus, run_cli, write

PIPELINE = """
[pipeline]
workdir = "runs/p"
workers = 2

[steps.ingest]
inputs = ["corpus/*.jsonl"]

[steps.docs]
stage = "ingest"
inputs = ["embedded:python-docs"]

[steps.dedup]
inputs = ["ingest", "docs"]

[steps.other]
stage = "ingest"
inputs = ["corpus/shard-00.jsonl"]
"""


def actions(reports):
    return {r.name: r.action for r in reports}


def test_rerun_skips_fresh_and_param_change_reruns_dependents(tmp_path, shared_data, monkeypatch):
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=4)
    path = write(tmp_path / "p.toml", PIPELINE)
    monkeypatch.chdir(tmp_path)

    first = run_pipeline(load_pipeline(path), workers=2)
    assert actions(first) == {"ingest": "ran", "docs": "ran", "other": "ran", "dedup": "ran"}

    t0 = time.time()
    res = run_cli("run", "p.toml", cwd=tmp_path, check=True)
    assert time.time() - t0 < 2.0, "a run with nothing to do must take under 2 s"
    assert res.stderr.count("fresh, skipped") == 4

    # A dedup-only change re-runs dedup alone.
    again = run_pipeline(load_pipeline(path, ["dedup.keep_rejected=true"]))
    assert actions(again) == {"ingest": "skipped", "docs": "skipped", "other": "skipped", "dedup": "ran"}

    # An upstream change re-runs that step and its dependent, nothing else.
    changed = run_pipeline(load_pipeline(path, ["ingest.min_chars=500", "dedup.keep_rejected=true"]))
    assert actions(changed) == {"ingest": "ran", "docs": "skipped", "other": "skipped", "dedup": "ran"}


def test_status_and_dry_run_say_why(tmp_path, shared_data, monkeypatch):
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=2)
    path = write(tmp_path / "p.toml", PIPELINE)
    monkeypatch.chdir(tmp_path)
    run_pipeline(load_pipeline(path), only=["ingest"])

    res = run_cli("status", "p.toml", "--set", "ingest.min_chars=50", cwd=tmp_path, check=True)
    lines = [line.split() for line in res.stdout.strip().splitlines()]
    assert lines[0][:2] == ["stale", "ingest"] and "min_chars=1->50" in res.stdout
    assert ["missing", "docs"] == lines[1][:2]

    dry = run_cli("run", "p.toml", "--dry-run", cwd=tmp_path, check=True)
    assert "fresh" in dry.stdout and "ingest" in dry.stdout
    assert not (tmp_path / "runs/p/docs").exists(), "--dry-run writes nothing"


def test_only_with_stale_upstream_is_refused(tmp_path, shared_data, monkeypatch):
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=2)
    write(tmp_path / "p.toml", PIPELINE)
    res = run_cli("run", "p.toml", "--only", "dedup", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip() == 'error: p.toml [steps.dedup] inputs: step "ingest" is not fresh; run it first or include it in the selection'


TOKENIZER_PIPELINE = """
[pipeline]
workdir = "runs/t"

[steps.ingest]
inputs = ["corpus/*.jsonl"]

[steps.tokenizer]
stage = "train_tokenizer"
inputs = ["ingest"]
vocab_size = 600
holdout_documents = 5

[steps.tokens]
stage = "tokenize"
inputs = ["ingest"]
tokenizer = "tokenizer"
"""


def test_path_param_naming_a_step_orders_and_invalidates(tmp_path, shared_data, monkeypatch):
    """tokenizer = "tokenizer" names an earlier step: the step waits for it and re-runs when it changes."""
    pytest.importorskip("sentencepiece")
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=2)
    path = write(tmp_path / "t.toml", TOKENIZER_PIPELINE)
    monkeypatch.chdir(tmp_path)
    first = run_pipeline(load_pipeline(path))
    assert [r.name for r in first] == ["ingest", "tokenizer", "tokens"] and actions(first) == {"ingest": "ran", "tokenizer": "ran", "tokens": "ran"}
    manifest = json.loads((tmp_path / "runs/t/tokens/_manifest.json").read_text())
    assert manifest["params"]["tokenizer"] == str(tmp_path / "runs/t/tokenizer")
    again = run_pipeline(load_pipeline(path, ["tokenizer.vocab_size=500"]))
    assert actions(again) == {"ingest": "skipped", "tokenizer": "ran", "tokens": "ran"}
