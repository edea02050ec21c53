"""The front door of `llmpipe run` / `inspect`: step names, --set and --debug, a workdir that is a file,
Ctrl-C, the closing summary, inspect on missing paths and checkpoints, and output file modes."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ctrl_c_reaches_it, make_jsonl_corpus, run_cli, write
from tests.test_errors import DOCS, HEAD, _one_line_error, _run_pipeline

THREE_STEPS = HEAD + """[steps.ingest]
inputs = ["docs.jsonl"]

[steps.dedup]
inputs = ["ingest"]

[steps.model]
stage = "train_tokenizer"
inputs = ["dedup"]
"""


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    return write(tmp_path / "docs.jsonl", DOCS)


# ---------------------------------------------------------------- step names are names


@pytest.mark.parametrize("name, shown, example", [
    ("../../x", '"../../x"', " (for example [steps.x])"),
    ("c/../b", '"c/../b"', " (for example [steps.c_b])"),
    ("./b", '"./b"', " (for example [steps.b])"),
    (".hidden", '".hidden"', " (for example [steps.hidden])"),
    ("", '""', ""),
    ("tab\\there", '"tab\\there"', " (for example [steps.tab_here])"),
])
def test_step_name_that_is_a_path_is_refused(tmp_path, docs, name, shown, example):
    toml = HEAD + f'[steps.ingest]\ninputs = ["docs.jsonl"]\n\n[steps."{name}"]\nstage = "dedup"\ninputs = ["ingest"]\n'
    assert _run_pipeline(tmp_path, toml) == (
        f"error: pipe.toml [steps.{shown}]: a step name is a name, not a path; use letters, digits, - and _{example}")
    assert not (tmp_path.parent / "x").exists()


def test_step_names_with_letters_digits_dash_underscore_run(tmp_path, docs):
    write(tmp_path / "pipe.toml", HEAD + '[steps.Ingest-2_b]\nstage = "ingest"\ninputs = ["docs.jsonl"]\n')
    run_cli("run", "pipe.toml", cwd=tmp_path, check=True)
    assert (tmp_path / "runs/p/Ingest-2_b/_manifest.json").exists()


# ---------------------------------------------------------------- --set, --only with an unknown step


def test_set_on_a_stage_name_lists_the_steps_and_the_step_running_it(tmp_path, docs):
    line = _run_pipeline(tmp_path, THREE_STEPS, "--set", "train_tokenizer.vocab_size=500")
    assert line == ('error: --set train_tokenizer.vocab_size=500: no step "train_tokenizer" in pipe.toml; '
                    'its steps are: ingest, dedup, model (step "model" runs stage "train_tokenizer")')


def test_set_on_an_unknown_step_lists_the_steps(tmp_path, docs):
    line = _run_pipeline(tmp_path, THREE_STEPS, "--set", "pretrain.max_steps=5")
    assert line == 'error: --set pretrain.max_steps=5: no step "pretrain" in pipe.toml; its steps are: ingest, dedup, model'
    line = _run_pipeline(tmp_path, THREE_STEPS, "--only", "dedpu")
    assert line == 'error: --only dedpu: no step "dedpu" in pipe.toml; its steps are: ingest, dedup, model; did you mean "dedup"?'


# ---------------------------------------------------------------- --debug anywhere


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path):
    res = run_cli("run", "nope.toml", "--debug", cwd=tmp_path, timeout=60)
    assert "Traceback" in res.stderr and res.stderr.strip().endswith("ConfigError: nope.toml: no such pipeline file"), res.stderr
    plain = run_cli("run", "nope.toml", cwd=tmp_path, timeout=60)
    assert plain.returncode == 2 and plain.stderr.strip() == "error: nope.toml: no such pipeline file"


# ---------------------------------------------------------------- a workdir that is a file


def test_workdir_that_is_a_file(tmp_path, docs):
    write(tmp_path / "runs", "not a directory\n")
    toml = '[pipeline]\nworkdir = "runs"\n\n[steps.ingest]\ninputs = ["docs.jsonl"]\n'
    write(tmp_path / "pipe.toml", toml)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    res = run_cli("run", "pipe.toml", cwd=tmp_path, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "error: pipe.toml [pipeline] workdir: runs exists and is a file; set workdir to a directory path"
    write(tmp_path / "pipe.toml", toml.replace('"runs"', '"runs/p"'))
    res = run_cli("run", "pipe.toml", cwd=tmp_path, timeout=60)
    assert res.stderr.strip() == "error: pipe.toml [pipeline] workdir: runs/p cannot be made: runs is a file; set workdir to a directory path"
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in before} and (tmp_path / "runs").read_text() == "not a directory\n"


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_prints_one_line_and_no_worker_tracebacks(tmp_path, shared_data):
    # ~110 MB of JSONL in 6 files: ingest with 2 workers takes a second or two, dedup a few more
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=6, copies=150)
    write(tmp_path / "p.toml", '[pipeline]\nworkdir = "runs/p"\nworkers = 2\n\n[steps.ingest]\ninputs = ["corpus/*.jsonl"]\n\n[steps.dedup]\ninputs = ["ingest"]\n')
    proc = subprocess.Popen([sys.executable, "-m", "llmpipe", "run", "p.toml"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=ctrl_c_reaches_it)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not (tmp_path / "runs/p/ingest/_run.json").exists():
        time.sleep(0.01)
    time.sleep(0.5)  # the pool's workers are busy with the first tasks
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the runner and its workers
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted: finished tasks are kept; resume with: llmpipe run p.toml"
    assert stderr.count("interrupted") == 1


# ---------------------------------------------------------------- the closing summary


def test_run_ends_with_a_summary_also_when_everything_is_fresh(tmp_path, docs):
    write(tmp_path / "pipe.toml", THREE_STEPS.split("[steps.model]")[0])
    first = run_cli("run", "pipe.toml", cwd=tmp_path, check=True).stdout.splitlines()
    assert first[0] == "summary of pipe.toml:"
    assert first[1].split()[:2] == ["ingest", "ran"] and first[1].split()[3:] == ["documents", "5", "runs/p/ingest"]
    assert first[2].split()[:2] == ["dedup", "ran"] and first[2].split()[3:] == ["documents", "5", "->", "4", "runs/p/dedup"]
    assert first[3] == "2 ran, 0 fresh; outputs in runs/p"
    again = run_cli("run", "pipe.toml", cwd=tmp_path, check=True).stdout.splitlines()
    assert again[1].split() == ["ingest", "fresh", "documents", "5", "runs/p/ingest"]
    assert again[2].split() == ["dedup", "fresh", "documents", "5", "->", "4", "runs/p/dedup"]
    assert again[3] == "0 ran, 2 fresh; outputs in runs/p"


# ---------------------------------------------------------------- inspect


def test_inspect_a_path_that_does_not_exist(tmp_path):
    line = _one_line_error(tmp_path, "inspect", "runs/nope")
    assert line == "error: runs/nope: no such file or directory; inspect takes an artifact directory, such as runs/pretrain/dedup"


TINY_PRETRAIN = """
[pipeline]
workdir = "runs/m"

[steps.ingest]
inputs = ["corpus/*.jsonl"]

[steps.tokenizer]
stage = "train_tokenizer"
inputs = ["ingest"]
vocab_size = 400
holdout_documents = 5

[steps.tokens]
stage = "tokenize"
inputs = ["ingest"]
tokenizer = "tokenizer"
val_fraction = 0.1

[steps.model]
stage = "pretrain"
inputs = ["tokens"]
tokenizer = "tokenizer"
max_steps = 2
warmup_steps = 1
batch_tokens = 1024
seq_len = 64
micro_batch = 4
eval_every = 0
eval_steps = 2
checkpoint_every = 0
n_layer = 1
n_embd = 32
n_head = 2
n_kv_head = 2
"""


@pytest.mark.slow
def test_checkpoint_summary_inspect_and_file_modes(tmp_path, shared_data):
    """A 2-step pretrain: the run's summary and `inspect` show val bits per byte and the samples, and
    model.safetensors has the mode of every other output."""
    pytest.importorskip("torch")
    make_jsonl_corpus(shared_data, tmp_path / "corpus", n_files=1)
    write(tmp_path / "p.toml", TINY_PRETRAIN)
    out = run_cli("run", "p.toml", cwd=tmp_path, check=True).stdout
    manifest = json.loads((tmp_path / "runs/m/model/_manifest.json").read_text())
    bpb = manifest["metrics"]["val_bpb"]
    model_line = next(line for line in out.splitlines() if line.split()[:2] == ["model", "ran"])
    assert f"val bits per byte {bpb:.3f}" in model_line and model_line.endswith("runs/m/model")

    shown = run_cli("inspect", "runs/m/model", cwd=tmp_path, check=True).stdout
    assert f"val bits per byte: {bpb:.4f}  (val loss {manifest['metrics']['val_loss']:.4f})" in shown
    for name, text in manifest["samples"].items():
        assert f"sample ({name}): {text!r}" in shown

    expected = 0o666 & ~_umask()
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    assert modes["runs/m/model/model.safetensors"] == expected
    assert {p: m for p, m in modes.items() if m != expected} == {}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_atomic_writers_leave_usual_file_modes(tmp_path):
    """safetensors creates its files 0600; atomic_path hands every output over as a normal file."""
    pytest.importorskip("torch")
    import numpy as np
    import torch

    from llmpipe.artifacts.checkpoint import save_checkpoint
    from llmpipe.artifacts.layout import write_json_atomic
    from llmpipe.artifacts.tokens import write_token_shard

    save_checkpoint(tmp_path / "ck", {"w": torch.zeros(2, 2)}, {"model_type": "llama"}, {"step": 1}, {"m": torch.zeros(2)})
    write_token_shard(tmp_path / "shard.safetensors", np.arange(10), vocab_size=16)
    write_json_atomic(tmp_path / "x.json", {"a": 1})
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 6
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(0o666 & ~_umask()) for p in files}
    assert oct(stat.S_IMODE((tmp_path / "ck").stat().st_mode)) == oct(0o777 & ~_umask())
