"""llama.cpp runs llmpipe's GGUF export: next-token logits and greedy continuations against llmpipe's own model.

Needs llama-cpp-python, which builds llama.cpp from source (0.3.36: ~55 min with one compile job at low priority
on 2 cores shared with other jobs; not part of the test run):

    CMAKE_BUILD_PARALLEL_LEVEL=2 pip install --no-deps --target /tmp/llcpp llama-cpp-python diskcache
    PYTHONPATH=.:/tmp/llcpp python benchmarks/gguf_llamacpp.py --checkpoint /tmp/llmpipe-quantize/model

Exports the checkpoint with `llmpipe quantize --format gguf` (F32, F16, Q8_0, Q4_0), loads each file with
llama_cpp.Llama, and on a few prompts (token ids, so both sides see the same input) compares llama.cpp's
logits at every position with llmpipe's `Model` in fp32 and with its weights rounded to fp16 (what F16
stores), and the greedy continuation of each prompt token for token. ggml also rounds activations (to
fp16 for F16 weights, to 8-bit blocks for Q8_0), so F16 logits differ from fp32 by more than fp16 weights
alone explain; the table shows by how much. The KV cache is F32 (llama.cpp's default F16 cache alone moves the
F32 file's logits by 1e-3).

Measured (2026-11-30) on benchmarks/quantize.py's model (small preset, 400 steps on tiny shakespeare), 3 prompts,
logits at every prompt position, 32 greedy tokens:

| file | size | max abs logit diff vs fp32 | mean abs diff | max abs diff vs fp16 weights | logit scale (std) | same argmax | greedy continuation equal | llama.cpp tokenizes the prompts alike |
|---|---|---|---|---|---|---|---|---|
| model-F32.gguf | 39.37 MB | 4.77e-06 | 4.75e-07 | 2.33e-03 | 3.01 | 3/3 prompts | 3/3 prompts | 3/3 |
| model-F16.gguf | 19.71 MB | 2.11e-03 | 3.13e-04 | 2.56e-03 | 3.01 | 3/3 prompts | 3/3 prompts | 3/3 |
| model-Q8_0.gguf | 10.49 MB | 5.26e-02 | 9.26e-03 | 5.28e-02 | 3.01 | 3/3 prompts | 3/3 prompts | 3/3 |
| model-Q4_0.gguf | 5.77 MB | 5.86e-01 | 6.82e-02 | 5.87e-01 | 3.01 | 2/3 prompts | 1/3 prompts | 3/3 |

F32 equal to 5e-6: the export (names, q/k permutation, norms, rope, tied output) is exact. F16 misses the issue's
1e-3 by 2x at the worst logit (mean 3e-4): ggml rounds the activations to fp16 before F16 matmuls, which fp16 weights
in fp32 arithmetic do not reproduce. Q8_0 stays within 0.06 (2 % of the logits' spread). The chat template from
the GGUF metadata, rendered by llama-cpp-python's Jinja formatter and tokenized by llama.cpp, gives llmpipe's ids
(32 tokens, system + two user turns).
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
    llmpipe.run_stage("quantize", [args.checkpoint], out, format="gguf", gguf_types=["F32", "F16", "Q8_0", "Q4_0"])
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

    print("| file | size | max abs logit diff vs fp32 | mean abs diff | max abs diff vs fp16 weights | logit scale (std) | same argmax | greedy continuation equal | llama.cpp tokenizes the prompts alike |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in ("F32", "F16", "Q8_0", "Q4_0"):
        path = out / f"model-{kind}.gguf"
        llm = Llama(model_path=str(path), n_ctx=model.config.max_seq_len, logits_all=True, verbose=False, n_threads=2,
                    type_k=0, type_v=0)  # an F32 KV cache (GGML_TYPE_F32): llama.cpp's default F16 cache rounds k and v
        worst32 = worst16 = 0.0
        argmax_same = greedy_same = same_tokens = 0
        scales, means = [], []
        for text, x in zip(prompts, ids):
            same_tokens += int(llm.tokenize(text.encode(), add_bos=True) == x)
            llm.reset()
            llm.eval(x)
            theirs = np.array(llm.scores[: len(x)])
            ref32, ref16 = ours(model, x), ours(half, x)
            worst32 = max(worst32, float(abs(theirs - ref32).max()))
            worst16 = max(worst16, float(abs(theirs - ref16).max()))
            scales.append(float(ref32.std()))
            means.append(float(abs(theirs - ref32).mean()))
            argmax_same += int((theirs.argmax(-1) == ref32.argmax(-1)).all())
            llm.reset()
            made = []
            for t in llm.generate(x, top_k=1, temp=0.0, repeat_penalty=1.0):
                made.append(t)
                if len(made) == args.new_tokens:
                    break
            greedy_same += int(made == greedy(x))
        print(f"| {path.name} | {path.stat().st_size / 1e6:.2f} MB | {worst32:.2e} | {np.mean(means):.2e} | {worst16:.2e} | {np.mean(scales):.2f} | "
              f"{argmax_same}/{len(ids)} prompts | {greedy_same}/{len(ids)} prompts | {same_tokens}/{len(ids)} |")
    chat_template_check(args, Llama)


def chat_template_check(args, Llama) -> None:
    """The chat template in the GGUF metadata, rendered by llama-cpp-python's Jinja formatter and tokenized by
    llama.cpp, gives the ids llmpipe's chat template gives (what sft trains on)."""
    import shutil

    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from llmpipe.artifacts.checkpoint import TOKENIZER_FILES
    from llmpipe.text.chat_template import render, write_chat_template
    from llmpipe.text.tokenizer import load_tokenizer

    chat = Path(args.workdir) / "chat_model"
    chat.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", *TOKENIZER_FILES):
        if (Path(args.checkpoint) / name).exists():
            shutil.copy(Path(args.checkpoint) / name, chat / name)
    write_chat_template(chat)
    llmpipe.run_stage("quantize", [str(chat)], Path(args.workdir) / "chat_gguf", format="gguf", gguf_types=["F16"])
    llm = Llama(model_path=str(Path(args.workdir) / "chat_gguf" / "model-F16.gguf"), n_ctx=256, verbose=False)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Romeo?"},
                {"role": "assistant", "content": "A Montague."}, {"role": "user", "content": "And Juliet?"}]
    prompt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token="</s>", bos_token="<s>")(messages=messages).prompt
    ours, _ = render(messages, load_tokenizer(chat), add_generation_prompt=True)
    same = llm.tokenize(prompt.encode(), add_bos=False, special=True) == ours
    print(f"\nchat template from the GGUF metadata, rendered and tokenized by llama.cpp: {'equal to' if same else 'DIFFERENT from'} "
          f"llmpipe's ids ({len(ours)} tokens)")


if __name__ == "__main__":
    main()
