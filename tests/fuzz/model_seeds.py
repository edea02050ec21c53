"""The model-side files the fuzz seeds start from, made once per test session from the real text in ../shared/data:
a tiny tokenizer trained on the C4 sample, token shards of that text, a tiny model's checkpoint, and its GGUF.

    fixtures = model_fixtures(shared_data, tmp_path)   # <session dir>/fuzz-model-fixtures, made on first use
    fixtures / "tok"          train-tokenizer artifact (tokenizer.model, special_tokens.json, ...)
    fixtures / "tok-wordpiece"  the same text's WordPiece tokenizer (tokenizer.json, special_tokens.json, ...)
    fixtures / "shards"       shard-000.safetensors ...: the text's tokens, a few hundred each
    fixtures / "checkpoint"   model.safetensors + config.json + tokenizer files: that vocabulary, 1 layer, n_embd 8
    fixtures / "model-<TYPE>.gguf"   that checkpoint exported for llama.cpp (F32 and F16)
    fixtures / "checkpoint-tiny"     a 32-token vocabulary: a 3 KB model.safetensors, so most mutations reach its header
    fixtures / "checkpoint-moe", "checkpoint-encoder", "checkpoint-int8"   the same size: 2 experts, a ModernBERT encoder,
                                     checkpoint-tiny quantized to int8

Every fuzz test gets its own tmp_path, but they share pytest's session directory, so the files are made once.
"""

from __future__ import annotations

import json
from pathlib import Path

DOCUMENTS = 150  # of the C4 sample: enough text for a 400-piece vocabulary, seconds to train
VOCAB = 400
SHARD_TOKENS = 300


def model_fixtures(shared: Path, tmp: Path) -> Path | None:
    """The directory of fixtures (made now if this session has not made it yet), or None without the real text."""
    source = shared / "text" / "c4_demo.jsonl"
    if not source.is_file():
        return None
    out = tmp.parent / "fuzz-model-fixtures"
    if not (out / "done").exists():
        _make(source, out)
    return out


def _make(source: Path, out: Path) -> None:
    import numpy as np

    import llmpipe
    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.artifacts.tokens import write_token_shard
    from llmpipe.gguf_export import write_gguf
    from llmpipe.model import Model, ModelConfig
    from llmpipe.text.tokenizer import load_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    with open(source, encoding="utf-8") as f:
        lines = [next(f) for _ in range(DOCUMENTS)]
    (out / "docs.jsonl").write_text("".join(lines), encoding="utf-8")
    llmpipe.run_stage("ingest", [str(out / "docs.jsonl")], out / "docs")
    llmpipe.run_stage("train_tokenizer", [str(out / "docs")], out / "tok", vocab_size=VOCAB, holdout_documents=10, threads=1)
    llmpipe.run_stage("train_tokenizer", [str(out / "docs")], out / "tok-wordpiece", model_type="wordpiece", vocab_size=VOCAB,
                      holdout_documents=10)
    tok = load_tokenizer(out / "tok")

    texts = [json.loads(line)["text"] for line in lines[:20]]
    ids = np.concatenate([np.array([tok.bos_id, *tok.encode(t), tok.eos_id]) for t in texts])
    (out / "shards").mkdir(exist_ok=True)
    for k in range(4):  # shards as tokenize writes them, of a few sizes
        write_token_shard(out / "shards" / f"shard-{k:03d}.safetensors", ids[k * SHARD_TOKENS:(k + 1) * SHARD_TOKENS - 37 * k], tok.vocab_size)

    import torch

    torch.manual_seed(0)
    for name, vocab in (("checkpoint", tok.vocab_size), ("checkpoint-tiny", 32)):
        cfg = ModelConfig(vocab_size=vocab, n_layer=1, n_embd=8, n_head=2, n_kv_head=1, intermediate_size=16, max_seq_len=32)
        write_model_dir(out / name, Model(cfg).state_dict(), cfg.to_hf(), out / "tok")
    for kind in ("F32", "F16"):
        write_gguf(out / "checkpoint", out / f"model-{kind}.gguf", kind)
    # the other layouts a checkpoint can have: a mixture of experts (3-D expert tensors), an encoder in ModernBERT's
    # names, and a quantize output (integer weights, the scheme and its modules in config.json)
    from llmpipe.encoder import to_modernbert

    tiny = {"vocab_size": 32, "n_layer": 1, "n_embd": 8, "n_head": 2, "n_kv_head": 1, "intermediate_size": 16, "max_seq_len": 32}
    encoder = {"norm": "layernorm", "mlp": "geglu", "embed_norm": True, "causal": False, "mlm_head": True, "n_kv_head": 2}
    for name, options in (("checkpoint-moe", {"n_experts": 2, "experts_per_token": 1}), ("checkpoint-encoder", encoder)):
        cfg = ModelConfig(**{**tiny, **options})
        state = Model(cfg).state_dict()
        write_model_dir(out / name, to_modernbert(state, cfg) if name.endswith("encoder") else state, cfg.to_hf(), out / "tok")
    llmpipe.run_stage("quantize", [str(out / "checkpoint-tiny")], out / "checkpoint-int8")
    (out / "done").write_text("")
