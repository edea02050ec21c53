"""Crash anywhere (issue 16, item 2): SIGKILL a small pipeline at random moments, re-run it, and get the
uninterrupted run's artifacts byte for byte, with no partial artifact ever readable as complete.

The harness (tests/crash_harness.py) kills the whole process group of `llmpipe run` at moments drawn
uniformly (seeded) over the uninterrupted run's duration, checks every artifact left while the run is
dead, re-runs with no flags and compares every file; it prints a table of where each kill landed and
what the re-run did (pytest -s shows it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.crash_harness import crash_anywhere, table

# Real text: the C4 sample, two Dolma shards (.jsonl.gz) and a Gutenberg book cut at blank lines: four
# input files, so ingest, filter and dedup have four tasks each, run by a pool of two workers.
DATA_STEPS = """
[pipeline]
workdir = "runs/crash"
workers = 2

[steps.ingest]
inputs = ["{data}/text/c4_demo.jsonl", "{data}/text/dolma/*.jsonl.gz", "{data}/text/gutenberg/alice_in_wonderland.txt"]
text_split = "blank_line"
min_chars = 100

[steps.filter]
inputs = ["ingest"]
keep_rejected = true

[steps.dedup]
inputs = ["filter"]
keep_rejected = true
"""

TOKEN_STEPS = """
[steps.tokenizer]
stage = "train_tokenizer"
inputs = ["dedup"]
vocab_size = 512
holdout_documents = 10
threads = 1

[steps.tokens]
stage = "tokenize"
inputs = ["dedup"]
tokenizer = "tokenizer"
val_fraction = 0.1
"""

# A tiny model trained 48 steps (~35 ms each on one thread), a checkpoint every 4 steps (the last two kept), an
# evaluation every 12: most kills in training land between checkpoints, so resuming is exercised.
TRAINING_STEP = """
[steps.model]
stage = "pretrain"
inputs = ["tokens"]
tokenizer = "tokenizer"
n_layer = 2
n_embd = 64
n_head = 4
seq_len = 128
micro_batch = 4
batch_tokens = 2048
max_steps = 48
warmup_steps = 3
eval_every = 12
eval_steps = 2
checkpoint_every = 4
device = "cpu"
"""


def _report(rows, t_ref: float, seconds: float) -> None:
    print(f"\nreference run {t_ref:.1f}s; {len(rows)} kills in {seconds:.0f}s\n" + table(rows))


def test_kills_in_the_data_stages_leave_nothing_half_read_and_rerun_to_the_same_artifacts(tmp_path: Path, shared_data: Path):
    import time

    t0 = time.monotonic()
    rows, t_ref = crash_anywhere(tmp_path, DATA_STEPS.format(data=shared_data), kills=3, seed=16)
    _report(rows, t_ref, time.monotonic() - t0)
    assert len(rows) == 3


@pytest.mark.long  # 17.9 min measured on 2 cores shared at load ~10 (2.7 CPU-minutes); CI runs it after the default run
def test_twenty_kills_anywhere_in_data_stages_and_training(tmp_path: Path, shared_data: Path):
    import time

    t0 = time.monotonic()
    pipeline = DATA_STEPS.format(data=shared_data) + TOKEN_STEPS + TRAINING_STEP
    # every other kill hits a run that replaces the artifacts of an earlier run with another min_chars: 10 of the
    # documents the filter keeps are shorter than 300 characters, so every artifact of that run is stale
    earlier = pipeline.replace("min_chars = 100", "min_chars = 300")
    rows, t_ref = crash_anywhere(tmp_path, pipeline, kills=20, seed=2, earlier_text=earlier)
    _report(rows, t_ref, time.monotonic() - t0)
    assert len(rows) == 20
    # the moments covered the pipeline: kills landed in the data stages and inside training
    assert any(r.killed_in.startswith(("ingest", "filter", "dedup")) for r in rows), table(rows)
    assert any("train step" in r.killed_in for r in rows), table(rows)


# --- states a kill leaves in windows too narrow for random moments to hit often ---------------------------------


SMALL = """
[pipeline]
workdir = "runs/p"

[steps.ingest]
inputs = ["{data}/text/c4_demo.jsonl"]

[steps.dedup]
inputs = ["ingest"]
near_dedup = false
"""


def _small_pipeline(tmp_path: Path, shared_data: Path) -> Path:
    from tests.conftest import run_cli

    (tmp_path / "p.toml").write_text(SMALL.format(data=shared_data))
    run_cli("run", "p.toml", cwd=tmp_path, check=True)
    return tmp_path / "runs" / "p"


def test_a_run_killed_between_making_a_step_directory_and_naming_its_run_file_is_rerun(tmp_path: Path, shared_data: Path):
    # prepare() makes the directory, then writes _run.json to a temporary and renames it: a kill in between left a
    # directory holding only `_run.json.tmp-<pid>`, which every later run refused as "not an llmpipe artifact".
    from tests.conftest import run_cli
    from tests.crash_harness import artifact_view

    workdir = _small_pipeline(tmp_path, shared_data)
    reference = artifact_view(workdir / "dedup")
    shutil.rmtree(workdir / "dedup")
    (workdir / "dedup").mkdir()
    (workdir / "dedup" / "_run.json.tmp-4242").write_text('{"step": "de')

    res = run_cli("run", "p.toml", cwd=tmp_path, check=True)
    assert "1 ran, 1 fresh" in res.stdout, res.stdout + res.stderr
    assert artifact_view(workdir / "dedup") == reference


def test_a_kill_while_a_stale_artifact_is_deleted_leaves_it_recognised_and_the_rerun_replaces_it(tmp_path: Path, shared_data: Path):
    # A changed param makes the step's artifact stale, and the run deletes it before writing the new one. shutil.rmtree
    # deletes in directory order and could take _run.json and _manifest.json before the parts: a kill then left bare
    # files that every later run refused as a user's directory. remove_artifact deletes the manifest first and
    # _run.json last. The artifact gets 1,000 more files beside its parts, so that deleting it lasts long enough to
    # be killed inside (ext4 lists a directory in hash order: with shutil.rmtree, some come after both markers).
    import llmpipe

    workdir = _small_pipeline(tmp_path, shared_data)
    for k in range(1000):
        (workdir / "dedup" / f"bulk-{k:05d}").write_bytes(b"")
    shutil.copytree(workdir / "dedup", tmp_path / "stale-dedup")
    code = "import sys; from llmpipe.artifacts.layout import remove_artifact; remove_artifact(sys.argv[1])"
    for delay in (0.0, 0.01):
        shutil.rmtree(workdir / "dedup", ignore_errors=True)
        shutil.copytree(tmp_path / "stale-dedup", workdir / "dedup")
        proc = subprocess.Popen([sys.executable, "-c", code, str(workdir / "dedup")])
        while (workdir / "dedup" / "_manifest.json").exists() and proc.poll() is None:
            time.sleep(0.0005)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        left = sorted(p.name for p in (workdir / "dedup").iterdir()) if (workdir / "dedup").exists() else []
        assert "_manifest.json" not in left  # nothing takes a half-deleted artifact as complete
        assert left == [] or "_run.json" in left, f"markers gone before the data (killed {delay}s in): {left[:5]}"
        # the step again with another param (in this process: a second pipeline run costs seconds more each time)
        manifest = llmpipe.run_stage("dedup", [str(workdir / "ingest")], workdir / "dedup", near_dedup=False, normalize=False)
        assert manifest["params"]["normalize"] is False
        assert not list((workdir / "dedup").glob("bulk-*"))


def test_a_checkpoint_half_deleted_by_a_killed_prune_is_removed_on_resume(tmp_path: Path, shared_data: Path):
    # After saving step N the loop deletes checkpoints older than the last keep_last. A kill inside that deletion left
    # the old directory half deleted; without model.safetensors it was no checkpoint to the loop, so no later run
    # removed it and the finished artifact kept it. The resumed run prunes before training.
    import llmpipe

    llmpipe.run_stage("ingest", [str(shared_data / "text" / "c4_demo.jsonl")], tmp_path / "docs")
    llmpipe.run_stage("train_tokenizer", [str(tmp_path / "docs")], tmp_path / "tok", vocab_size=400, holdout_documents=10)
    llmpipe.run_stage("tokenize", [str(tmp_path / "docs")], tmp_path / "tokens", tokenizer=str(tmp_path / "tok"), val_fraction=0.1)
    params = {"n_layer": 2, "n_embd": 64, "n_head": 4, "seq_len": 64, "micro_batch": 4, "batch_tokens": 256, "warmup_steps": 2,
              "max_steps": 8, "checkpoint_every": 2, "keep_last": 2, "eval_every": 4, "eval_steps": 1, "device": "cpu"}
    model = tmp_path / "model"
    llmpipe.run_stage("pretrain", [str(tmp_path / "tokens")], model, tokenizer=str(tmp_path / "tok"), **params)
    weights = (model / "model.safetensors").read_bytes()
    assert sorted(p.name for p in (model / "checkpoints").iterdir()) == ["step-6", "step-8"]

    # the kill came while save(8) deleted step-4 (model.safetensors already gone), before the task was recorded
    (model / "_manifest.json").unlink()
    (model / "_tasks" / "train" / "00000.json").unlink()
    (model / "checkpoints" / "step-4").mkdir()
    shutil.copy(model / "checkpoints" / "step-6" / "config.json", model / "checkpoints" / "step-4" / "config.json")
    llmpipe.run_stage("pretrain", [str(tmp_path / "tokens")], model, tokenizer=str(tmp_path / "tok"), **params)

    assert sorted(p.name for p in (model / "checkpoints").iterdir()) == ["step-6", "step-8"]
    assert (model / "model.safetensors").read_bytes() == weights
