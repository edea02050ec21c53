"""Re-runs are content-addressed: a step that re-ran and made the same bytes leaves its dependents fresh,
and a pipeline is fresh wherever it sits (another checkout, a copied workdir)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from llmpipe import step as step_mod
from llmpipe.pipeline import build_steps, load_pipeline
from llmpipe.runner import plan_status, run_pipeline
from tests.conftest import run_cli, write

pytest.importorskip("sentencepiece")

PIPELINE = """
[pipeline]
workdir = "runs/{workdir}"
workers = 2

[steps.ingest]
inputs = ["corpus.jsonl"]

[steps.dedup]
inputs = ["ingest"]
near_dedup = true
threshold = 0.8

[steps.tokenizer]
stage = "train_tokenizer"
inputs = ["dedup"]
vocab_size = 400
holdout_documents = 5

[steps.tokens]
stage = "tokenize"
inputs = ["dedup"]
tokenizer = "tokenizer"
"""
AFTER_DEDUP = ("tokenizer", "tokens")


@pytest.fixture
def project(tmp_path, shared_data, monkeypatch) -> Path:
    """80 real C4 documents plus a near copy of the first (one word changed, Jaccard ~0.9), run once."""
    docs = [json.loads(line) for line in (shared_data / "text" / "c4_demo.jsonl").read_text().splitlines()[:80]]
    words = docs[0]["text"].split()
    words[len(words) // 2] = "banana"
    docs.append({**docs[0], "id": "near-copy", "text": " ".join(words)})
    write(tmp_path / "corpus.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
    write(tmp_path / "p.toml", PIPELINE.format(workdir="p"))
    monkeypatch.chdir(tmp_path)
    first = run_pipeline(load_pipeline("p.toml"))
    assert {r.action for r in first} == {"ran"}
    return tmp_path


def actions(reports) -> dict[str, str]:
    return {r.name: r.action for r in reports}


def manifest_stamps(workdir: Path) -> dict[str, tuple]:
    """Per step: the manifest's mtime and recorded timings, which change whenever the step runs."""
    out = {}
    for m in sorted(workdir.glob("*/_manifest.json")):
        out[m.parent.name] = (m.stat().st_mtime_ns, json.loads(m.read_text())["timings"])
    return out


def test_unchanged_output_keeps_dependents_fresh(project):
    """dedup at 0.7 removes the same near copy as at 0.8: dedup re-runs, its dependents do not."""
    before = manifest_stamps(project / "runs/p")
    status = run_cli("status", "p.toml", "--set", "dedup.threshold=0.7", cwd=project, check=True)
    assert "  stale      dedup (params changed: threshold=0.8->0.7)" in status.stdout
    for name in AFTER_DEDUP:
        assert f"  may re-run {name} (upstream dedup will run; skipped if its inputs come out unchanged)" in status.stdout

    res = run_cli("run", "p.toml", "--set", "dedup.threshold=0.7", cwd=project, check=True)
    assert "tokenizer: fresh, skipped (dedup came out unchanged)" in res.stderr
    after = manifest_stamps(project / "runs/p")
    assert after["dedup"] != before["dedup"], "dedup ran"
    for name in ("ingest", *AFTER_DEDUP):
        assert after[name] == before[name], f"{name} ran again"
    dedup = json.loads((project / "runs/p/dedup/_manifest.json").read_text())
    assert dedup["params"]["threshold"] == 0.7 and dedup["counts"] == {"documents": 80, "removed": 1}
    assert set(actions(run_pipeline(load_pipeline("p.toml", ["dedup.threshold=0.7"]))).values()) == {"skipped"}


def test_changed_output_reruns_dependents(project):
    """Without near-dedup the near copy stays: dedup's output changes, so everything after it runs."""
    before = manifest_stamps(project / "runs/p")
    again = run_pipeline(load_pipeline("p.toml", ["dedup.near_dedup=false"]))
    assert actions(again) == {"ingest": "skipped", "dedup": "ran", "tokenizer": "ran", "tokens": "ran"}
    after = manifest_stamps(project / "runs/p")
    assert all(after[n] != before[n] for n in ("dedup", *AFTER_DEDUP))
    tokens = json.loads((project / "runs/p/tokens/_manifest.json").read_text())
    assert tokens["counts"]["documents"] == 81


def test_copied_workdir_is_fresh_in_its_new_place(project):
    shutil.copytree(project / "runs/p", project / "runs/q", symlinks=True)  # copies mtimes too, as cp -a
    write(project / "q.toml", PIPELINE.format(workdir="q"))
    before = manifest_stamps(project / "runs/q")
    reports = run_pipeline(load_pipeline("q.toml"))
    assert set(actions(reports).values()) == {"skipped"}
    assert manifest_stamps(project / "runs/q") == before
    # the tokenizer is read from the new place, though it enters the fingerprint by content
    tokens = build_steps(load_pipeline("q.toml"))["tokens"]
    assert tokens.params.tokenizer == str(project / "runs/q/tokenizer")


def test_another_checkout_is_fresh(project, tmp_path_factory):
    """The whole project (inputs, pipeline, runs) copied elsewhere with cp -a: nothing runs."""
    other = tmp_path_factory.mktemp("elsewhere") / "checkout"
    subprocess.run(["cp", "-a", str(project), str(other)], check=True)
    res = run_cli("run", "p.toml", cwd=other, check=True)
    assert res.stderr.count("fresh, skipped") == 4, res.stderr
    manifest = json.loads((other / "runs/p/tokens/_manifest.json").read_text())
    assert manifest["params"]["tokenizer"] == str(project / "runs/p/tokenizer"), "the old run read the old place"


def test_jobs_submitted_before_upstream_ran_settle_their_fingerprints(tmp_path, project):
    """As the Slurm executor does: every step is prepared (its _run.json written) before its upstream
    has run, so dependents hold provisional fingerprints; finalize settles them, and a later run finds
    every step fresh instead of re-running all of them."""
    write(project / "s.toml", PIPELINE.format(workdir="s"))
    built = build_steps(load_pipeline("s.toml"))
    assert built["tokens"].waits_on_upstream
    runs = {name: step_mod.prepare(st) for name, st in built.items()}  # submit_step prepares all first
    assert runs["tokens"]["fingerprint"] != json.loads((project / "runs/p/tokens/_manifest.json").read_text())["fingerprint"]
    for name, st in built.items():  # then the jobs run in dependency order
        for k in range(len(runs[name]["phases"])):
            for t in step_mod.pending_tasks(st.out, runs[name], k):
                step_mod.run_task(st.out, k, t)
        step_mod.finalize(st.out)
    for name in built:
        settled = json.loads((project / "runs/s" / name / "_manifest.json").read_text())
        local = json.loads((project / "runs/p" / name / "_manifest.json").read_text())
        assert settled["fingerprint"] == local["fingerprint"], name
        assert settled["content_hash"] == local["content_hash"], name
    assert set(actions(run_pipeline(load_pipeline("s.toml"))).values()) == {"skipped"}


def test_status_of_untouched_pipeline_is_fresh(project):
    assert {r.state for r in plan_status(load_pipeline("p.toml"))} == {"fresh"}


def test_a_model_trained_again_to_the_same_weights_keeps_its_dependents_fresh(project):
    """Training is deterministic here, but metrics.jsonl records wall times: it stays out of the content hash
    (checksummed still), so a forced re-training leaves the quantized model after it fresh."""
    pytest.importorskip("torch")
    from llmpipe.artifacts.verify import damage

    model_steps = "\n[steps.model]\nstage = \"pretrain\"\ninputs = [\"tokens\"]\ntokenizer = \"tokenizer\"\nmax_steps = 2\nn_layer = 1\n" \
        "n_embd = 32\nn_head = 2\nn_kv_head = 2\nseq_len = 64\nmicro_batch = 2\nbatch_tokens = 256\neval_every = 0\ndevice = \"cpu\"\n" \
        "\n[steps.int8]\nstage = \"quantize\"\ninputs = [\"model\"]\n"
    write(project / "m.toml", PIPELINE.format(workdir="p") + model_steps)
    run_cli("run", "m.toml", cwd=project, check=True, env={"OMP_NUM_THREADS": "1"})
    model, int8 = project / "runs/p/model", project / "runs/p/int8"
    first, metrics, int8_stamp = json.loads((model / "_manifest.json").read_text()), (model / "metrics.jsonl").read_text(), manifest_stamps(project / "runs/p")["int8"]
    run_cli("run", "m.toml", "--only", "model", "--force", cwd=project, check=True, env={"OMP_NUM_THREADS": "1"})
    res = run_cli("run", "m.toml", cwd=project, check=True)
    again = json.loads((model / "_manifest.json").read_text())
    assert (model / "metrics.jsonl").read_text() != metrics, "the wall times differ"
    assert again["checksums"]["metrics.jsonl"] != first["checksums"]["metrics.jsonl"]
    assert again["content_hash"] == first["content_hash"] and again["checksums"]["model.safetensors"] == first["checksums"]["model.safetensors"]
    assert "int8: fresh, skipped" in res.stderr, res.stderr
    assert manifest_stamps(project / "runs/p")["int8"] == int8_stamp
    with open(model / "metrics.jsonl", "a") as f:  # out of the content hash, not out of the checksums
        f.write("{}\n")
    assert "metrics.jsonl" in damage(model, again)
