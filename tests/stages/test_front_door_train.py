"""Issue 12 ("the front door") for train-tokenizer, tokenize, pretrain and generate: the mistakes a new user
makes get one line and exit 2 before anything is written, a small corpus trains a tokenizer, the tokens
remember their tokenizer, generation never loses its output, no MFU above 100 %, and every output file
gets the same mode.

One small real corpus (the C4 sample, 300 pages) and one tiny model (context 64) serve every test."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

import llmpipe
from llmpipe.errors import InputError
from tests.conftest import run_cli, write
from tests.test_errors import _one_line_error

pytest.importorskip("torch")
pytest.importorskip("sentencepiece")

TINY = ["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--n-kv-head", "2", "--seq-len", "64", "--micro-batch", "2",
        "--batch-tokens", "128", "--warmup-steps", "1", "--eval-steps", "1", "--device", "cpu"]
HINT_TOKENIZER = "give the output of train-tokenizer (or a sentencepiece .model file)"
HINT_CHECKPOINT = "give the output of pretrain (the directory holding model.safetensors)"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """docs (C4, 300 pages), tokenizers tok_a and tok_b (same vocabulary size, other seeds), tokens made
    with tok_a, and model: a 2-step tiny pretrain run (context 64) whose log is model.log."""
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "text" / "c4_demo.jsonl").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    tmp = tmp_path_factory.mktemp("front_door")
    llmpipe.run_stage("ingest", [str(SHARED_DATA / "text" / "c4_demo.jsonl")], tmp / "docs")
    for name, seed in (("tok_a", 0), ("tok_b", 1)):
        llmpipe.run_stage("train_tokenizer", [str(tmp / "docs")], tmp / name, vocab_size=500, seed=seed, holdout_documents=30)
    llmpipe.run_stage("tokenize", [str(tmp / "docs")], tmp / "tokens", tokenizer=str(tmp / "tok_a"), val_fraction=0.1)
    res = run_cli("pretrain", "--input", "tokens", "--output", "model", "--tokenizer", "tok_a", "--max-steps", "2", *TINY, cwd=tmp, check=True)
    (tmp / "model.log").write_text(res.stderr)
    return tmp


def _error(tmp_path: Path, base: Path, *args: str) -> str:
    """The one error line of `llmpipe ARGS` (run in tmp_path: nothing may be written there), base shown as <base>."""
    return _one_line_error(tmp_path, *args).replace(str(base), "<base>")


# ---------------------------------------------------------------- train-tokenizer


def test_a_corpus_smaller_than_holdout_documents_trains(base, tmp_path):
    """300 documents, holdout_documents 1000 (the default): a tenth is held out, the rest trains."""
    m = llmpipe.run_stage("train_tokenizer", [str(base / "docs")], tmp_path / "tok", vocab_size=500)
    assert m["params"]["holdout_documents"] == 1000
    assert m["counts"]["holdout_documents"] == 30 and m["counts"]["sample_documents"] == 270
    assert m["metrics"]["bytes_per_token"] > 1 and m["metrics"]["round_trip_mismatches"] == 0  # measured on the 30


def _parquet(path: Path, texts: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}, schema=pa.schema([("id", pa.string()), ("text", pa.string())])), path)
    return path


def _runtime_error(tmp_path: Path, *args: str) -> str:
    """An error found while the step runs (the data decides it): still one line and exit 2."""
    res = run_cli(*args, cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_an_empty_training_sample_is_one_line(tmp_path):
    _parquet(tmp_path / "none" / "part.parquet", [])
    _parquet(tmp_path / "blank" / "part.parquet", ["  \n ", "\n\n", "\t"])
    assert _runtime_error(tmp_path, "train-tokenizer", "--input", "none/part.parquet", "--output", "t1", "--vocab-size", "300") == (
        "error: train_tokenizer: the inputs hold no documents, so there is nothing to train a tokenizer on; "
        "check the steps before (did filter or dedup remove everything?)")
    assert _runtime_error(tmp_path, "train-tokenizer", "--input", "blank/part.parquet", "--output", "t2", "--vocab-size", "300") == (
        "error: train_tokenizer: the training sample is empty: its 3 documents hold no text but whitespace")


def test_a_vocabulary_below_the_characters_of_the_text_says_the_minimum(base, tmp_path):
    line = _runtime_error(tmp_path, "train-tokenizer", "--input", str(base / "docs"), "--output", "t", "--vocab-size", "300")
    need = int(re.search(r"needs at least (\d+) ", line).group(1))
    assert line == (
        f"error: train_tokenizer vocab_size: 300 is too small for this text; sentencepiece needs at least {need} (special and byte "
        "tokens, and the characters that make up character_coverage = 0.9995); raise vocab_size or lower character_coverage")
    assert 8 + 256 + 26 < need < 8 + 256 + 200  # the letters of English text at least
    m = llmpipe.run_stage("train_tokenizer", [str(base / "docs")], tmp_path / "t_min", vocab_size=need)  # the minimum works
    assert m["vocab_size"] == need


# ---------------------------------------------------------------- tokenize


@pytest.mark.parametrize("stage", ["tokenize", "pretrain"])
def test_a_tokenizer_path_that_is_no_tokenizer_is_one_line(base, tmp_path, stage):
    write(tmp_path / "notes.txt", "not a model\n")
    write(tmp_path / "folder" / "readme.md", "no model here\n")
    source = "docs" if stage == "tokenize" else "tokens"
    args = [stage, "--input", str(base / source), "--output", "out", "--tokenizer"]
    assert _error(tmp_path, base, *args, str(base / "docs")) == (
        f"error: {stage} --tokenizer: <base>/docs is a documents artifact, not a tokenizer; {HINT_TOKENIZER}")
    assert _error(tmp_path, base, *args, "notes.txt") == f"error: {stage} --tokenizer: notes.txt is not a sentencepiece model; {HINT_TOKENIZER}"
    assert _error(tmp_path, base, *args, "folder") == f"error: {stage} --tokenizer: folder is a directory without tokenizer.model; {HINT_TOKENIZER}"
    assert _error(tmp_path, base, *args, "missing") == f"error: {stage} --tokenizer: input path missing does not exist"


@pytest.mark.parametrize("weights", [["0"], ["0", "0"]])
def test_weights_that_are_all_zero_are_one_line(base, tmp_path, weights):
    inputs = [a for _ in weights for a in ("--input", str(base / "docs"))]
    flags = [a for w in weights for a in ("--weights", w)]
    assert _error(tmp_path, base, "tokenize", *inputs, "--output", "out", "--tokenizer", str(base / "tok_a"), *flags) == (
        "error: tokenize --weights: every weight is 0, which leaves nothing to tokenize; give at least one input a weight above 0")


def test_tokens_record_their_tokenizer(base):
    manifest = json.loads((base / "tokens" / "_manifest.json").read_text())
    assert manifest["tokenizer_sha256"] == hashlib.sha256((base / "tok_a" / "tokenizer.model").read_bytes()).hexdigest()


# ---------------------------------------------------------------- pretrain


def test_pretrain_refuses_another_tokenizer_than_the_tokens_were_made_with(base, tmp_path):
    sha = {n: hashlib.sha256((base / n / "tokenizer.model").read_bytes()).hexdigest()[:12] for n in ("tok_a", "tok_b")}
    assert sha["tok_a"] != sha["tok_b"]
    assert json.loads((base / "tok_a" / "_manifest.json").read_text())["vocab_size"] == json.loads((base / "tok_b" / "_manifest.json").read_text())["vocab_size"]
    assert _error(tmp_path, base, "pretrain", "--input", str(base / "tokens"), "--output", "out", "--tokenizer", str(base / "tok_b"), *TINY) == (
        f"error: pretrain --tokenizer: <base>/tok_b (sha256 {sha['tok_b']}) is not the tokenizer <base>/tokens was made with "
        f"(<base>/tok_a, sha256 {sha['tok_a']}); give that one")


def test_pretrain_with_too_few_tokens_for_one_step_names_real_flags(base, tmp_path):
    have = json.loads((base / "tokens" / "_manifest.json").read_text())["splits"]["train"]["tokens"]
    big = (have // 1024 + 1) * 1024
    args = ["pretrain", "--input", str(base / "tokens"), "--output", "out", "--seq-len", "1024", "--micro-batch", "1", "--device", "cpu"]
    assert _error(tmp_path, base, *args, "--batch-tokens", str(big)) == (
        f"error: pretrain --batch-tokens: one step of {big} tokens needs {big + 1} training tokens, but <base>/tokens holds {have}; "
        f"lower it to {(have - 1) // 1024 * 1024} or less (a multiple of micro_batch x seq_len x nproc_per_node = 1024), or tokenize more text")
    seq = (have // 64 + 1) * 64
    assert _error(tmp_path, base, "pretrain", "--input", str(base / "tokens"), "--output", "out", "--seq-len", str(seq), "--micro-batch", "1",
                  "--batch-tokens", str(seq), "--device", "cpu") == (
        f"error: pretrain --batch-tokens: one step of {seq} tokens needs {seq + 1} training tokens, but <base>/tokens holds {have}; "
        f"lower micro_batch or seq_len (micro_batch x seq_len x nproc_per_node = {seq}), or tokenize more text")


def test_pretrain_device_mistakes_are_one_line(base, tmp_path):
    import torch

    args = ["pretrain", "--input", str(base / "tokens"), "--output", "out", "--max-steps", "1"]
    assert _error(tmp_path, base, *args, "--device", "gpu") == (
        "error: Invalid value for '--device': 'gpu' is not one of 'auto', 'cpu', 'cuda', 'mps'. (see llmpipe pretrain --help)")
    if torch.backends.cuda.is_built():
        pytest.skip("this torch is built with CUDA: a missing GPU is found when the step runs (next test)")
    assert _error(tmp_path, base, *args, "--device", "cuda") == (
        f"error: pretrain --device: torch {torch.__version__} is built without cuda support; use cpu (or auto), or install a torch built for cuda")


def test_pretrain_on_a_machine_without_the_gpu_of_a_cuda_build(base, tmp_path, monkeypatch):
    """A CUDA build on a node without a GPU (a Slurm login node may submit to GPU nodes): refused when the step runs."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    with pytest.raises(InputError, match=r"^pretrain device: torch sees no cuda device on this machine \(.+\); use cpu \(or auto\)$"):
        llmpipe.run_stage("pretrain", [str(base / "tokens")], tmp_path / "out", device="cuda", max_steps=1)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_no_mfu_above_100_percent_on_cpu(base):
    from llmpipe.train.loop import peak_flops

    assert peak_flops("cpu") == 0.0  # no trustworthy CPU peak: no MFU at all
    records = [json.loads(line) for line in (base / "model" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if not r.get("eval")]
    assert len(train) == 2 and all("mfu" not in r and r["flops_per_s"] > 0 for r in train)
    log = (base / "model.log").read_text()
    assert "step 2/2 | loss" in log and "mfu" not in log


def test_weights_and_shards_get_the_mode_of_every_other_output(base):
    def mode(p: Path) -> int:
        return p.stat().st_mode & 0o777

    model = base / "model"
    assert mode(model / "model.safetensors") == mode(model / "config.json") == mode(model / "tokenizer.model")
    step = next((model / "checkpoints").iterdir())
    assert mode(step / "model.safetensors") == mode(step / "training_state.safetensors") == mode(model / "config.json")
    shard = base / "tokens" / "train" / "shard-00000.safetensors"
    assert mode(shard) == mode(base / "tokens" / "_manifest.json")


# ---------------------------------------------------------------- generate


def test_generate_on_what_is_not_a_checkpoint_is_one_line(base, tmp_path):
    write(tmp_path / "notes.txt", "hello\n")
    assert _error(tmp_path, base, "generate", str(base / "docs")) == f"error: generate: <base>/docs is a documents artifact, not a checkpoint; {HINT_CHECKPOINT}"
    assert _error(tmp_path, base, "generate", str(base / "tok_a")) == f"error: generate: <base>/tok_a is a tokenizer artifact, not a checkpoint; {HINT_CHECKPOINT}"
    assert _error(tmp_path, base, "generate", "notes.txt") == f"error: generate: notes.txt is a file, not a checkpoint; {HINT_CHECKPOINT}"
    assert _error(tmp_path, base, "generate", "nope") == f"error: generate: checkpoint nope does not exist; {HINT_CHECKPOINT}"


@pytest.mark.parametrize("flag,value,message", [
    ("--top-p", "0", "0.0 is not in the range 0<x<=1."),
    ("--top-p", "1.5", "1.5 is not in the range 0<x<=1."),
    ("--temperature", "-1", "-1.0 is not in the range x>=0."),
    ("--max-new-tokens", "-3", "-3 is not in the range x>=0."),
])
def test_generate_refuses_sampling_values_out_of_range(base, tmp_path, flag, value, message):
    assert _error(tmp_path, base, "generate", str(base / "model"), flag, value) == (
        f"error: Invalid value for '{flag}': {message} (see llmpipe generate --help)")


def test_generate_with_a_prompt_longer_than_the_context_is_one_line(base, tmp_path):
    prompt = "The quick brown fox jumps over the lazy dog. " * 20
    from llmpipe.text.tokenizer import load_tokenizer

    n = len(load_tokenizer(base / "model").encode(prompt))
    assert _error(tmp_path, base, "generate", str(base / "model"), "--prompt", prompt) == (
        f"error: generate --prompt: {n} tokens (plus bos) leave no room in the model's context of 64 tokens; shorten it to at most 62 tokens")


def test_generate_past_the_context_stops_there_and_keeps_the_text(base, tmp_path):
    from llmpipe.decoding import Decoding
    from llmpipe.generate import generate, load_for_generation

    model, tok = load_for_generation(base / "model")
    room = 64 - 1 - len(tok.encode("The"))
    expected = generate(model, tok, "The", Decoding(100))
    assert expected.new_tokens == room and expected.stopped_at_context
    res = run_cli("generate", str(base / "model"), "--prompt", "The", "--max-new-tokens", "100", cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == expected.text + "\n"  # the whole continuation is printed
    assert res.stderr.strip().splitlines() == [
        f"note: stopped after {room} of 100 new tokens: the model's context of 64 tokens is full (prompt and bos included)"]
    short = run_cli("generate", str(base / "model"), "--prompt", "The", "--max-new-tokens", "5", cwd=tmp_path, timeout=120)
    assert short.returncode == 0 and short.stderr == "" and res.stdout.startswith(short.stdout[:-1])
