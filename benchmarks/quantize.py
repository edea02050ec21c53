"""Quantization on a trained model: file size, validation perplexity and decode speed of fp32, int8, int4 RTN and GPTQ.

Trains the `small` preset (6 layers, d 384, 2 kv heads: ~10M parameters) for a few hundred steps on tiny
shakespeare through llmpipe's own stages (a 30-step test model is too undertrained for quantization error
to show), quantizes it with `llmpipe quantize` several ways, and measures each checkpoint as
`Model.from_checkpoint` loads it: perplexity on the whole validation split, and greedy decode tokens/s
with `Model.generate` (KV cache, batch 1) in fp32 (the dequantizing path) and under CPU bf16 autocast
(torch's int8/int4 weight-only kernels; the fp32 model then runs bf16 matmuls). The issue's bounds:
int8 <= +1 % perplexity, int4 with groups <= 128 <= +5 %, GPTQ int4 below RTN int4.

    OMP_NUM_THREADS=1 nice python benchmarks/quantize.py --workdir /tmp/llmpipe-quantize    # ~25 min on 2 loaded cores
    OMP_NUM_THREADS=1 nice python benchmarks/quantize.py --workdir /tmp/llmpipe-quantize --max-steps 300 --schemes int8 int4

Measured (2026-11-30, the command above, 2 cores shared with other jobs, so speeds are rough; val bpb 2.005):

| scheme | model.safetensors | quantized linears / fp32 | val perplexity | vs fp32 | decode tok/s fp32 | decode tok/s bf16 autocast |
|---|---|---|---|---|---|---|
| fp32 | 40.92 MB | 1.000 | 27.132 | +0.00 % | 254 | 215 |
| int8 | 11.08 MB | 0.251 | 27.131 | -0.00 % | 353 | 474 |
| int4 | 6.55 MB | 0.131 | 27.193 | +0.23 % | 98 | 569 |
| gptq | 6.55 MB | 0.131 | 27.155 | +0.08 % | 104 | 596 |
| gptq-act-order | 6.55 MB | 0.131 | 27.150 | +0.07 % | 100 | 538 |
| int4-g64 | 6.77 MB | 0.137 | 27.174 | +0.16 % | 97 | 549 |
| gptq-g64 | 6.77 MB | 0.137 | 27.148 | +0.06 % | 106 | 573 |

(The fp32 file holds the tied embedding twice, as pretrain writes it; quantized files hold it once. int8 in fp32
decodes faster than the fp32 model because the float model concatenates the q/k/v and gate/up weights for one GEMM
on every call, a copy of those weights per decoded token, while QuantLinear layers are called one by one.)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import llmpipe

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "tinyshakespeare.txt"

SCHEMES = {  # name -> quantize params
    "int8": {"scheme": "int8"},
    "int4": {"scheme": "int4", "group_size": 128},
    "gptq": {"scheme": "int4", "group_size": 128, "method": "gptq"},
    "gptq-act-order": {"scheme": "int4", "group_size": 128, "method": "gptq", "act_order": True},
    "int4-g64": {"scheme": "int4", "group_size": 64},
    "gptq-g64": {"scheme": "int4", "group_size": 64, "method": "gptq"},
}


def prepare(work: Path, args) -> Path:
    (work / "raw").mkdir(parents=True, exist_ok=True)
    docs, cur = [], ""
    for part in DATA.read_text().split("\n\n"):  # ~2 kB documents, as benchmarks/shakespeare.py cuts them
        cur += part + "\n\n"
        if len(cur) > 2000:
            docs.append(cur)
            cur = ""
    docs.append(cur)
    (work / "raw" / "docs.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "text": d}) + "\n" for i, d in enumerate(docs)))
    llmpipe.run_stage("ingest", [str(work / "raw")], work / "docs", min_chars=1)
    llmpipe.run_stage("train_tokenizer", [str(work / "docs")], work / "tokenizer", vocab_size=args.vocab_size, holdout_documents=5)
    llmpipe.run_stage("tokenize", [str(work / "docs")], work / "tokens", tokenizer=str(work / "tokenizer"), val_fraction=0.1)
    llmpipe.run_stage(
        "pretrain", [str(work / "tokens")], work / "model", tokenizer=str(work / "tokenizer"), model="small",
        seq_len=args.seq_len, micro_batch=8, batch_tokens=8 * args.seq_len, lr=1e-3, min_lr=1e-4, warmup_steps=30,
        max_steps=args.max_steps, eval_every=args.max_steps, eval_steps=8, checkpoint_every=args.max_steps, keep_last=1, device="cpu",
    )
    return work / "model"


def val_perplexity(model, tokens: Path, seq_len: int) -> float:
    import torch
    import torch.nn.functional as F

    from llmpipe.train.data import PackedBatches, split_shards

    data = PackedBatches(split_shards(tokens, "val"), seq_len=seq_len, batch_size=8, shuffle=False)
    nats = n = 0
    with torch.no_grad():
        for s in range(data.steps_per_epoch):
            x, y = data.batch(s)
            nats += F.cross_entropy(model(x)[0].float().flatten(0, 1), y.flatten(), reduction="sum").item()
            n += y.numel()
    return math.exp(nats / n)


def decode_speed(model, prompt, new_tokens: int, bf16: bool, repeats: int = 3) -> float:
    """Best of `repeats` greedy decodes: new tokens per second."""
    import torch

    best = 0.0
    for _ in range(repeats):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            t0 = time.perf_counter()
            model.generate(prompt, new_tokens)
            best = max(best, new_tokens / (time.perf_counter() - t0))
    return best


def main() -> None:
    import torch

    from llmpipe.model import Model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/llmpipe-quantize")
    ap.add_argument("--vocab-size", type=int, default=1024)
    ap.add_argument("--max-steps", type=int, default=400)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--calibration-samples", type=int, default=64)
    ap.add_argument("--schemes", nargs="+", default=["int8", "int4", "gptq", "gptq-act-order", "int4-g64", "gptq-g64"], choices=list(SCHEMES))
    args = ap.parse_args()
    work = Path(args.workdir)
    t0 = time.time()
    model_dir = prepare(work, args)
    print(f"trained {args.max_steps} steps in {time.time() - t0:.0f}s")
    rows = {"fp32": model_dir}
    for name in args.schemes:
        params = dict(SCHEMES[name])
        if params.get("method") == "gptq":
            params.update(calibration=str(work / "tokens"), calibration_samples=args.calibration_samples)
        t1 = time.time()
        llmpipe.run_stage("quantize", [str(model_dir)], work / f"q-{name}", **params)
        print(f"{name}: quantized in {time.time() - t1:.1f}s")
        rows[name] = work / f"q-{name}"
    prompt = torch.tensor([[1] + list(range(100, 115))])
    table, base = [], None
    for name, path in rows.items():
        model = Model.from_checkpoint(path).eval()
        ppl = val_perplexity(model, work / "tokens", args.seq_len)
        base = base or ppl
        size = (path / "model.safetensors").stat().st_size
        counts = json.loads((path / "_manifest.json").read_text()).get("counts", {}) if name != "fp32" else {}
        linear = counts.get("quantized_layers_bytes", 0) / counts["quantized_layers_fp32_bytes"] if counts else 1.0
        fp32_speed, bf16_speed = decode_speed(model, prompt, args.new_tokens, False), decode_speed(model, prompt, args.new_tokens, True)
        table.append((name, size, linear, ppl, 100 * (ppl / base - 1), fp32_speed, bf16_speed))
    print(f"\nsmall preset, {args.max_steps} steps on tiny shakespeare (vocab {args.vocab_size}); val perplexity on the whole val split; "
          f"decode: greedy, batch 1, KV cache, {args.new_tokens} new tokens, best of 3, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| scheme | model.safetensors | quantized linears / fp32 | val perplexity | vs fp32 | decode tok/s fp32 | decode tok/s bf16 autocast |")
    print("|---|---|---|---|---|---|---|")
    for name, size, linear, ppl, delta, s32, s16 in table:
        print(f"| {name} | {size / 1e6:.2f} MB | {linear:.3f} | {ppl:.3f} | {delta:+.2f} % | {s32:.0f} | {s16:.0f} |")


if __name__ == "__main__":
    main()
