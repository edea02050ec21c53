"""pretrain: a tiny model learns tiny shakespeare, the checkpoint loads in transformers, a killed run resumes
with exactly the losses of an uninterrupted one, and 2-process DDP matches one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import llmpipe
from tests.conftest import REPO, run_cli, write

pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

STAGE = "pretrain"
TINY = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "seq_len": 64, "micro_batch": 4, "batch_tokens": 512,
        "warmup_steps": 5, "eval_steps": 2}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """Tiny shakespeare cut into ~2 kB documents, a 512-piece tokenizer, and a token artifact with a validation split."""
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "text" / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    tmp = tmp_path_factory.mktemp("pretrain")
    text = path.read_text()[:300_000]
    parts = text.split("\n\n")
    docs, cur = [], ""
    for part in parts:
        cur += part + "\n\n"
        if len(cur) > 2000:
            docs.append(cur)
            cur = ""
    write(tmp / "raw" / "docs.jsonl", "".join(json.dumps({"id": f"s{i}", "text": d}) + "\n" for i, d in enumerate(docs)))
    llmpipe.run_stage("ingest", [str(tmp / "raw")], tmp / "docs")
    llmpipe.run_stage("train_tokenizer", [str(tmp / "docs")], tmp / "tokenizer", vocab_size=512, holdout_documents=5)
    llmpipe.run_stage("tokenize", [str(tmp / "docs")], tmp / "tokens", tokenizer=str(tmp / "tokenizer"), val_fraction=0.1)
    return tmp


def losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if not r.get("eval")]


def test_tiny_model_learns_and_transformers_loads_it(tokens, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    out = tmp_path / "model"
    m = llmpipe.run_stage(STAGE, [str(tokens / "tokens")], out, tokenizer=str(tokens / "tokenizer"), max_steps=40,
                          eval_every=20, checkpoint_every=20, keep_last=1, lr=3e-3, device="cpu", **TINY)
    seen = losses(out)
    assert len(seen) == 40
    assert sum(seen[-5:]) / 5 < seen[0] - 1.0, seen  # ln(512) = 6.2 at the start
    assert m["metrics"]["val_loss"] < seen[0] - 1.0 and 1.0 < m["metrics"]["val_bpb"] < 6
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-40"]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("model.safetensors", "config.json", "tokenizer.model", "tokenizer.json"):
        assert (out / name).exists(), name
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok("ROMEO: what light", return_tensors="pt").input_ids
    from llmpipe.model import Model, ModelConfig
    from safetensors.torch import load_file

    ours = Model(ModelConfig.from_hf(json.loads((out / "config.json").read_text()))).eval()
    ours.load_state_dict(load_file(str(out / "model.safetensors")))
    with torch.no_grad():
        assert (ours(ids)[0] - hf(ids).logits).abs().max() < 1e-4

    # samples in the manifest, and `llmpipe generate` continues a prompt with the same model
    assert set(m["samples"]) == {"greedy", "top_p"}
    greedy = run_cli("generate", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "12", cwd=tmp_path, check=True).stdout
    assert greedy.startswith("ROMEO:") and len(greedy) > len("ROMEO:\n")  # a tiny model may well continue with newlines
    again = run_cli("generate", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "12", cwd=tmp_path, check=True).stdout
    assert again == greedy, "greedy decoding is deterministic"
    hf_ids = hf.generate(tok("ROMEO:", return_tensors="pt").input_ids, max_new_tokens=12, do_sample=False)
    assert greedy[:-1] == tok.decode(hf_ids[0], skip_special_tokens=True), "same continuation as transformers"


def test_bad_batch_geometry_is_a_one_line_error(tokens, tmp_path):
    from llmpipe.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="batch_tokens"):
        llmpipe.run_stage(STAGE, [str(tokens / "tokens")], tmp_path / "m", batch_tokens=1000, seq_len=64, micro_batch=4)


def _pipeline(tmp, tokens, name, **params) -> str:
    lines = ['[pipeline]', 'workdir = "runs"', f'[steps.{name}]', 'stage = "pretrain"', f'inputs = ["{tokens / "tokens"}"]',
             f'tokenizer = "{tokens / "tokenizer"}"']
    lines += [f"{k} = {json.dumps(v)}" for k, v in {**TINY, **params}.items()]
    write(tmp / f"{name}.toml", "\n".join(lines) + "\n")
    return f"{name}.toml"


def _run(tmp, toml, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "llmpipe", "run", toml], cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_killed_run_resumes_with_the_same_losses(tokens, tmp_path):
    params = {"max_steps": 40, "checkpoint_every": 10, "keep_last": 2, "eval_every": 10, "device": "cpu"}
    full = _run(tmp_path, _pipeline(tmp_path, tokens, "full", **params))
    assert full.wait(timeout=300) == 0, full.stdout.read().decode()
    proc = _run(tmp_path, _pipeline(tmp_path, tokens, "killed", **params))
    out = tmp_path / "runs" / "killed"
    deadline = time.time() + 240
    while not (out / "checkpoints" / "step-10").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.1)  # a few steps past the checkpoint, which the resumed run must redo
    proc.send_signal(signal.SIGKILL)  # the training runs in this process when nproc_per_node is 1
    proc.wait()
    assert not (out / "_manifest.json").exists()
    resumed = _run(tmp_path, "killed.toml")
    log = resumed.communicate(timeout=300)[0].decode()
    assert resumed.returncode == 0, log
    assert "resuming from" in log
    assert losses(out) == losses(tmp_path / "runs" / "full")
    assert len(losses(out)) == 40


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tokens, tmp_path):
    params = {"max_steps": 8, "eval_every": 0, "checkpoint_every": 0, "device": "cpu", "micro_batch": 2}
    one = _run(tmp_path, _pipeline(tmp_path, tokens, "one", **params))
    assert one.wait(timeout=300) == 0, one.stdout.read().decode()
    two = _run(tmp_path, _pipeline(tmp_path, tokens, "two", nproc_per_node=2, **params))
    assert two.wait(timeout=300) == 0, two.stdout.read().decode()
    a, b = losses(tmp_path / "runs" / "one"), losses(tmp_path / "runs" / "two")
    assert len(a) == len(b) == 8
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    assert json.loads((tmp_path / "runs" / "two" / "_manifest.json").read_text())["world_size"] == 2
