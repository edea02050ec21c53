"""llama.cpp runs llmpipe's GGUF export: next-token logits and greedy continuations against llmpipe's own model.

Needs llama-cpp-python, which builds llama.cpp from source (~25 min on 2 loaded cores; not part of the test run):

    CMAKE_BUILD_PARALLEL_LEVEL=2 pip install --no-deps --target /tmp/llcpp llama-cpp-python
    PYTHONPATH=.:/tmp/llcpp python benchmarks/gguf_llamacpp.py --checkpoint /tmp/llmpipe-quantize/model

Exports the checkpoint with `llmpipe quantize --format gguf` (F16, Q8_0, Q4_0), loads each file with
llama_cpp.Llama, and on a few prompts (token ids, so both sides see the same input) compares llama.cpp's
logits at every position with llmpipe's `Model` in fp32 and with its weights rounded to fp16 (what F16
stores), and the greedy continuation of each prompt token for token. ggml also rounds activations (to
fp16 for F16 weights, to 8-bit blocks for Q8_0), so F16 logits differ from fp32 by more than fp16 weights
alone explain; the table shows by how much.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import llmpipe


def main() -> None:
    import numpy as np
    import torch
    from llama_cpp import Llama

    from llmpipe.model import Model
    from llmpipe.text.tokenizer import load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--workdir", default="/tmp/llmpipe-gguf")
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    out = Path(args.workdir) / "gguf"
    llmpipe.run_stage("quantize", [args.checkpoint], out, format="gguf", gguf_types=["F16", "Q8_0", "Q4_0"])
    tok = load_tokenizer(args.checkpoint)
    prompts = ["ROMEO:\nWhat light", "The king is", "First Citizen:\nBefore we proceed any further, hear me speak."]
    ids = [[tok.bos_id] + tok.encode(p) for p in prompts]
    model = Model.from_checkpoint(args.checkpoint).eval()
    half = Model.from_checkpoint(args.checkpoint).eval()
    with torch.no_grad():
        for p in half.parameters():
            p.copy_(p.half().float())

    def ours(m, x):
        with torch.no_grad():
            return m(torch.tensor([x]))[0][0].numpy()

    def greedy(x):
        return model.generate(torch.tensor([x]), args.new_tokens)[0, len(x):].tolist()

    print("| file | size | max abs logit diff vs fp32 | vs fp16 weights | logit scale (std) | same argmax | greedy continuation equal |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("F16", "Q8_0", "Q4_0"):
        path = out / f"model-{kind}.gguf"
        llm = Llama(model_path=str(path), n_ctx=model.config.max_seq_len, logits_all=True, verbose=False, n_threads=2)
        worst32 = worst16 = 0.0
        argmax_same = greedy_same = 0
        scales = []
        for x in ids:
            llm.reset()
            llm.eval(x)
            theirs = np.array(llm.scores[: len(x)])
            ref32, ref16 = ours(model, x), ours(half, x)
            worst32 = max(worst32, float(abs(theirs - ref32).max()))
            worst16 = max(worst16, float(abs(theirs - ref16).max()))
            scales.append(float(ref32.std()))
            argmax_same += int((theirs.argmax(-1) == ref32.argmax(-1)).all())
            llm.reset()
            made = []
            for t in llm.generate(x, top_k=1, temp=0.0, repeat_penalty=1.0):
                made.append(t)
                if len(made) == args.new_tokens:
                    break
            greedy_same += int(made == greedy(x))
        print(f"| {path.name} | {path.stat().st_size / 1e6:.2f} MB | {worst32:.2e} | {worst16:.2e} | {np.mean(scales):.2f} | "
              f"{argmax_same}/{len(ids)} prompts | {greedy_same}/{len(ids)} prompts |")


if __name__ == "__main__":
    main()
