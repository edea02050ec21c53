"""FSDP2 (parallel = "fsdp"): 2 CPU ranks (gloo, under torchrun) train to the losses of one process on the same
tokens, write the checkpoint files one process writes, and a run killed after its mid-run checkpoint resumes to
the losses and weights of the run that was never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import llmpipe
from tests.conftest import REPO, write

pytest.importorskip("torch")

# 2 layers of d 64 (131k parameters): each block and the root get sharded over 2 ranks
TINY = {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2, "seq_len": 64, "micro_batch": 2, "batch_tokens": 512,
        "warmup_steps": 2, "max_steps": 8, "checkpoint_every": 4, "keep_last": 2, "eval_every": 0, "eval_steps": 1, "device": "cpu"}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """100 kB of tiny shakespeare, a 512-piece tokenizer and its tokens (with a validation split)."""
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "text" / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip(f"real data not found at {path}")
    tmp = tmp_path_factory.mktemp("fsdp")
    text = path.read_text()[:100_000]
    docs = [text[i:i + 2000] for i in range(0, len(text), 2000)]
    write(tmp / "raw" / "docs.jsonl", "".join(json.dumps({"id": f"s{i}", "text": d}) + "\n" for i, d in enumerate(docs)))
    llmpipe.run_stage("ingest", [str(tmp / "raw")], tmp / "docs")
    llmpipe.run_stage("train_tokenizer", [str(tmp / "docs")], tmp / "tokenizer", vocab_size=512, holdout_documents=1)
    llmpipe.run_stage("tokenize", [str(tmp / "docs")], tmp / "tokens", tokenizer=str(tmp / "tokenizer"), val_fraction=0.1)
    return tmp / "tokens"


def _command(tokens, out, **params) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**TINY, **params}.items()]
    return [sys.executable, "-m", "llmpipe", "pretrain", "--input", str(tokens), "--output", str(out), *flags]


def _start(tokens, out, **params) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(_command(tokens, out, **params), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, deepest first (torchrun starts its ranks in sessions of their own: a kill of
    torchrun alone, or of its process group, leaves them running)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))

    def below(parent: int) -> list[int]:
        return [d for child in parents.get(parent, []) for d in below(child) + [child]]

    return below(pid)


def _finish(proc: subprocess.Popen) -> str:
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, log
    return log


def _train_records(out) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if not r.get("eval")]


def _tensors(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def fsdp_run(tokens, tmp_path_factory):
    """8 steps on 2 ranks with parallel = fsdp, uninterrupted (checkpoints at steps 4 and 8)."""
    out = tmp_path_factory.mktemp("fsdp_run") / "model"
    t = time.time()
    _finish(_start(tokens, out, nproc_per_node=2, parallel="fsdp"))
    print(f"\n2-rank FSDP run: {time.time() - t:.1f}s")
    return out


@pytest.mark.slow
def test_two_rank_fsdp_matches_one_process(tokens, fsdp_run, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch

    one = tmp_path / "one"
    llmpipe.run_stage("pretrain", [str(tokens)], one, **TINY)
    a, b = _train_records(one), _train_records(fsdp_run)
    assert len(a) == len(b) == 8
    print("step | loss 1 process | loss 2 FSDP ranks | difference | grad norm 1 / 2")
    for x, y in zip(a, b):
        print(f"{x['step']:>4} | {x['loss']:.7f} | {y['loss']:.7f} | {abs(x['loss'] - y['loss']):.1e} | {x['grad_norm']} / {y['grad_norm']}")
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) < 1e-4
    assert max(abs(x["grad_norm"] - y["grad_norm"]) for x, y in zip(a, b)) < 1e-4  # clipping saw the norm over both shards
    assert json.loads((fsdp_run / "_manifest.json").read_text())["world_size"] == 2

    # the same files as one process writes, with the same names, shapes and (close) values: final model, checkpoint, AdamW moments
    for name in ("model.safetensors", "checkpoints/step-8/model.safetensors", "checkpoints/step-4/training_state.safetensors"):
        ours, theirs = _tensors(fsdp_run / name), _tensors(one / name)
        assert ours.keys() == theirs.keys(), name
        assert all(ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype for k in ours), name
        diff = max((ours[k] - theirs[k]).abs().max().item() for k in ours)
        print(f"{name}: {len(ours)} tensors, largest difference {diff:.1e}")
        assert diff < 1e-5, name

    # the output loads in transformers with the logits of one process's model
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    with torch.no_grad():
        logits = [transformers.AutoModelForCausalLM.from_pretrained(d).eval()(ids).logits for d in (fsdp_run, one)]
    assert (logits[0] - logits[1]).abs().max() < 1e-4


@pytest.mark.slow
def test_killed_fsdp_run_resumes_exactly(tokens, fsdp_run, tmp_path):
    import torch

    out = tmp_path / "killed"
    proc = _start(tokens, out, nproc_per_node=2, parallel="fsdp")
    deadline = time.time() + 240
    while not (out / "checkpoints" / "step-4").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    for pid in _descendants(proc.pid) + [proc.pid]:  # both ranks, torchrun and the launcher, right after the mid-run checkpoint
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "_manifest.json").exists(), "killed before the end"
    assert not (out / "checkpoints" / "step-8").exists()

    log = _finish(_start(tokens, out, nproc_per_node=2, parallel="fsdp"))
    assert "resuming from" in log and "step-4 (step 4/8)" in log
    assert [r["loss"] for r in _train_records(out)] == [r["loss"] for r in _train_records(fsdp_run)]
    assert (out / "model.safetensors").read_bytes() == (fsdp_run / "model.safetensors").read_bytes(), "the same weights, bit for bit"
    ours, theirs = _tensors(out / "checkpoints/step-8/training_state.safetensors"), _tensors(fsdp_run / "checkpoints/step-8/training_state.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs), "the same AdamW moments"


def test_fsdp_with_lora_is_a_one_line_error(tmp_path, shared_data):
    from tests.conftest import run_cli

    res = run_cli("sft", "--input", str(shared_data / "sft" / "alpaca_en_demo.json"), "--checkpoint", str(tmp_path / "base"),
                  "--output", str(tmp_path / "out"), "--parallel", "fsdp", "--lora-rank", "4", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        "error: sft --parallel: fsdp with lora_rank > 0 is not supported (the adapters are small: use ddp, or lora_rank = 0)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.long
def test_two_rank_fsdp_sft_matches_one_process(chat_base, shared_data):
    """sft through the same loop: 2 FSDP ranks x 1 micro-batch of 4 conversations = 1 process x 2 micro-batches."""
    def sft(out, *extra):
        return [sys.executable, "-m", "llmpipe", "sft", "--input", str(shared_data / "sft" / "alpaca_en_demo.json"), "--checkpoint", "model",
                "--output", out, "--max-seq-len", "128", "--batch-size", "8", "--micro-batch", "4", "--lr", "1e-3", "--device", "cpu",
                "--val-fraction", "0", "--max-steps", "6", *extra]

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    subprocess.run(sft("sft-one"), cwd=chat_base, env=env, check=True, capture_output=True)
    two = subprocess.run(sft("sft-fsdp", "--nproc-per-node", "2", "--parallel", "fsdp"), cwd=chat_base, env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    a, b = _train_records(chat_base / "sft-one"), _train_records(chat_base / "sft-fsdp")
    print("sft losses, 1 process vs 2 FSDP ranks:", [(round(x["loss"], 6), round(y["loss"], 6)) for x, y in zip(a, b)])
    assert len(a) == len(b) == 6 and max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) < 1e-4
    ours, theirs = _tensors(chat_base / "sft-fsdp" / "model.safetensors"), _tensors(chat_base / "sft-one" / "model.safetensors")
    assert ours.keys() == theirs.keys() and max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-5
