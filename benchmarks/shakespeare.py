"""Tiny shakespeare through llmpipe's own stages, scored in validation bits per byte against nanoGPT's baby-shakespeare run.

nanoGPT's README: the char-level "baby GPT" (6 layers, d 384, block 256, batch 64, 5000 iters on a GPU)
reaches val 1.47 nats/char; its CPU config (4 layers, 4 heads, d 128, block 64, batch 12, 2000 iters)
reaches ~1.88 nats/char = 2.71 bits/char (ASCII, so bits per byte). Bits per byte does not depend on
the tokenizer, so llmpipe's BPE model is compared on the same footing. Same model size and token
budget per step as that CPU config by default; the text is cut into ~2 kB documents and 10% of them
are held out (nanoGPT holds out the last 10% of the file).

    nice python benchmarks/shakespeare.py --workdir /tmp/shakespeare            # ~3-5 min on 2 cores
    nice python benchmarks/shakespeare.py --max-steps 300 --vocab-size 256      # a quicker look
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import llmpipe

NANOGPT_NATS_PER_CHAR = 1.88
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "tinyshakespeare.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/llmpipe-shakespeare")
    ap.add_argument("--vocab-size", type=int, default=512)
    ap.add_argument("--max-steps", type=int, default=2000)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    work = Path(args.workdir)
    (work / "raw").mkdir(parents=True, exist_ok=True)
    docs, cur = [], ""
    for part in DATA.read_text().split("\n\n"):
        cur += part + "\n\n"
        if len(cur) > 2000:
            docs.append(cur)
            cur = ""
    docs.append(cur)
    (work / "raw" / "docs.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "text": d}) + "\n" for i, d in enumerate(docs)))
    llmpipe.run_stage("ingest", [str(work / "raw")], work / "docs", min_chars=1)
    llmpipe.run_stage("train_tokenizer", [str(work / "docs")], work / "tokenizer", vocab_size=args.vocab_size, holdout_documents=5)
    llmpipe.run_stage("tokenize", [str(work / "docs")], work / "tokens", tokenizer=str(work / "tokenizer"), val_fraction=0.1)
    t0 = time.time()
    m = llmpipe.run_stage(
        "stages.pretrain", [str(work / "tokens")], work / "model", tokenizer=str(work / "tokenizer"),
        n_layer=4, n_embd=128, n_head=4, n_kv_head=4, seq_len=args.seq_len, micro_batch=args.micro_batch,
        batch_tokens=args.seq_len * args.micro_batch, lr=args.lr, min_lr=args.lr / 10, warmup_steps=100,
        max_steps=args.max_steps, weight_decay=0.1, eval_every=max(1, args.max_steps // 4), eval_steps=50,
        checkpoint_every=args.max_steps, keep_last=1, device="cpu",
    )
    seconds = time.time() - t0
    bpb = m["metrics"]["val_bpb"]
    ref = NANOGPT_NATS_PER_CHAR / math.log(2)
    print(f"llmpipe pretrain ({m['counts']['parameters'] / 1e6:.2f}M params, BPE {args.vocab_size}, {args.max_steps} steps of "
          f"{args.seq_len * args.micro_batch} tokens, {seconds:.0f} s): val {bpb:.3f} bits/byte ({bpb * math.log(2):.3f} nats/byte)")
    print(f"nanoGPT baby shakespeare (char-level, 0.8M params, 2000 iters of 768 chars): val {ref:.3f} bits/byte ({NANOGPT_NATS_PER_CHAR} nats/char)")
    print(f"llmpipe / nanoGPT bits per byte: {bpb / ref:.3f} (lower is better)")


if __name__ == "__main__":
    main()
