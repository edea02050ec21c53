"""Decode speed: llmpipe's token_steps vs transformers' generate() on the same checkpoint and prompts, in one run.

Same model: an llmpipe checkpoint (`--checkpoint`, or a random-weight `--preset` model written here with a BPE
vocabulary trained on ../shared/data/text/c4_demo.jsonl), loaded by llmpipe with Model.from_checkpoint and by
transformers with LlamaForCausalLM.from_pretrained, as it is. Same input: prompts of ~32 tokens cut from
../shared/data/text/wiki_demo.txt lines (row i of a batch is i tokens shorter, so batches are left-padded).
Same work: greedy, a fixed number of new tokens (no eos stop on either side: stop_ids=() here,
generation_config.eos_token_id=None there), KV cache, torch.no_grad, the same torch thread count.
tokens/s = new tokens x batch / wall time of the whole call (prefill included); prefill = time to the first
new token (transformers': a streamer notes it). One warm-up each, then `--runs` rounds in which both sides run
once, in alternating order; medians. Greedy tokens are compared (fp32 must be equal).

int8: llmpipe = the quantize stage's int8 output (per-channel weight-only, block projections; the tied
embedding / lm_head stays fp32) loaded by Model.from_checkpoint: fp32 activations, so QuantLinear casts the
int8 weight to fp32 on every call (llmpipe/quant.py). transformers = torch's dynamic int8 quantization
(`torch.ao.quantization.quantize_dynamic`, per-channel qconfig, on model.layers only: the same layers), the
int8 path torch has for nn.Linear on CPU (fbgemm/x86 kernels, activations quantized per call; deprecated in
favour of torchao, which is not installed here and whose eager int8 weight-only is slower than fp32 on this
CPU, ../shared/notes/ANCHORS.md). Different int8 numerics, so int8 greedy tokens may differ, and once one does the continuation diverges
(the trained /tmp/llmpipe-quantize/model: 29 % of positions equal at batch 1).

    python benchmarks/decode_speed.py --threads 1                       # small preset: ~1 min
    python benchmarks/decode_speed.py --threads 1 --preset tiny         # ~20 s
    python benchmarks/decode_speed.py --checkpoint /tmp/llmpipe-quantize/model

Measured 2026-11-30, torch 2.13.0 CPU, transformers 5.24, 2 shared cores (load average 1.9-2.5 during the
runs), 128 new tokens, medians of 5:

small preset (6 layers, d 384, 6 heads / 2 kv heads, vocab 4096, ~11M parameters), `--threads 1`:

| precision | batch | llmpipe tok/s | transformers tok/s | ratio | llmpipe prefill ms | transformers prefill ms | same greedy tokens |
|---|---|---|---|---|---|---|---|
| fp32 | 1 | 248 | 226 | 1.10x | 12.5 | 12.7 | yes |
| fp32 | 8 | 1065 | 989 | 1.08x | 65.6 | 57.5 | yes |
| int8 | 1 | 342 | 396 | 0.86x | 11.9 | 6.6 | yes |
| int8 | 8 | 1235 | 1706 | 0.72x | 63.7 | 16.1 | no (99.5 % equal) |

tiny preset (4 layers, d 128, 4 heads, vocab 4096, ~1.3M parameters), `--threads 1`:

| precision | batch | llmpipe tok/s | transformers tok/s | ratio | llmpipe prefill ms | transformers prefill ms | same greedy tokens |
|---|---|---|---|---|---|---|---|
| fp32 | 1 | 1306 | 1020 | 1.28x | 2.7 | 3.6 | yes |
| fp32 | 8 | 5039 | 4260 | 1.18x | 10.0 | 8.8 | yes |
| int8 | 1 | 1061 | 767 | 1.38x | 2.7 | 3.6 | yes |
| int8 | 8 | 4980 | 4210 | 1.18x | 9.9 | 5.6 | yes |

small preset with torch's default 2 threads (same ratios, but single runs collapse: per-run tok/s of fp32 batch 1
llmpipe 170 158 159 249 247, int8 batch 8 llmpipe 286 1425 843 1428 1420; in one profiled 2-thread run 90 % of
llmpipe's step, 42 ms of 46, was in the flash-attention kernel, i.e. one OpenMP thread waiting at a parallel
region's barrier for the other, descheduled by other jobs on the 2 cores; transformers collapses the same way, to
36 tok/s once). On this shared machine use `--threads 1`:

| precision | batch | llmpipe tok/s | transformers tok/s | ratio |
|---|---|---|---|---|
| fp32 | 1 | 170 | 142 | 1.20x |
| fp32 | 8 | 1243 | 1190 | 1.04x |
| int8 | 1 | 381 | 443 | 0.86x |
| int8 | 8 | 1420 | 2023 | 0.70x |

The goal (llmpipe >= 2x transformers at batch 1) is not met: 1.10x (small), 1.28x (tiny).

Where the batch-1 fp32 step goes (the script's profile section, `--threads 1`): small: llmpipe 3.99 ms a step,
transformers 4.31 ms; the 43 linear layers alone (F.linear on [1, 1, in], no overhead) take 3.07 ms, so the
overhead is 0.91 ms (23 %) for llmpipe and 1.23 ms for transformers: even at zero overhead llmpipe would be 1.40x
transformers on this model in fp32. A 10M-parameter fp32 model is 44 MB of weights read per token, and the GEMVs
are memory-bound. tiny: llmpipe 0.75 ms, transformers 0.94 ms, linears 0.16 ms: 79 % of llmpipe's step is
overhead, so this is where 2x is to be had. torch.profiler (tiny, per step): mm 29 calls 177 us, cat 20 calls
138 us (per layer: the q/k/v outputs, two RoPE halves, two KV-cache appends), the RMSNorm autograd.Function 9 calls
71 us, mul 45 calls, transpose 69 calls, as_strided 112 calls: ~480 aten calls per step for 29 matmuls.

Prototypes measured outside the repository (greedy tokens equal to llmpipe's in every variant; batch 1, 32-token
prompt, 128 new tokens, 1 thread, median of 21 (tiny) or 5 (small) alternating rounds, ms per token, each line adds to the one above):

| change to llmpipe's decoding step | tiny ms/token | vs as is | small ms/token | vs as is |
|---|---|---|---|---|
| token_steps as is | 0.756 | 1.00x | 4.23 | 1.00x |
| Model.forward + argmax loop, without token_steps' per-step bookkeeping (masked_fill, isin, done.all) | 0.736 | 1.03x | 4.15 | 1.02x |
| the same ops as plain functions over the weights: no nn.Module __call__, no use_cpu_ops / plain_linears checks, cos/sin sliced once per step | 0.541 | 1.40x | 3.81 | 1.11x |
| + q/k/v and gate/up weights concatenated once (not per call): 4 GEMVs a layer instead of 7 | 0.515 | 1.47x | 3.91 | 1.08x |
| + preallocated KV cache written in place instead of torch.cat | 0.532 | 1.42x | 3.98 | 1.06x |
| + one RoPE call on q and k together | 0.488 | 1.55x | 3.89 | 1.09x |
| + F.rms_norm instead of cpu_ops' autograd.Function (which inference does not need) | 0.428 | 1.77x | 3.82 | 1.11x |
| + residual adds inside addmm, lm_head on the last position only | 0.442 | 1.71x | 3.78 | 1.12x |

So on tiny a lean decode step (a no-module fast path for cached steps with fused weights prepared once, one RoPE
call and F.rms_norm) is ~1.77x llmpipe's present step, which with the 1.28x above puts llmpipe at ~2.2x
transformers at batch 1 (derived, not measured head to head); on small it buys ~1.1x (~1.2x transformers). The
preallocated cache does not pay at 160 positions (its cost, torch.cat's copy, grows with the context: it would at
long ones); addmm and the last-position lm_head change nothing per step (the latter saves prefill time: llmpipe
computes logits for all 32 prompt positions, transformers for the last).
int8: QuantLinear's fp32 path casts each int8 weight to fp32 on every call, which is why llmpipe int8 loses to
quantize_dynamic (0.86x / 0.72x) and its prefill is 2-4x slower. Prepacking the same int8 per-channel weights once
for fbgemm (`torch.ops.quantized.linear_prepack` of `torch._make_per_channel_quantized_tensor(qweight, scales, 0)`)
and calling `torch.ops.quantized.linear_dynamic(x, packed, True)` in QuantLinear.forward measured, small, 1 thread:
batch 1 296 -> 460 tok/s (1.55x; fp32 231), batch 8 1234 -> 2103 tok/s (1.70x; fp32 1109); greedy tokens equal
to fp32's at batch 1, 99.5 % at batch 8 (activations are quantized, as transformers' int8 here does).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

import torch

import llmpipe
from llmpipe.decoding import Decoding, token_steps
from llmpipe.model import Model, ModelConfig


SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_checkpoint(work: Path, preset: str, vocab: int, max_seq_len: int) -> Path:
    """A random-weight llmpipe checkpoint of a preset with a BPE vocabulary trained on C4 text (as sft_speed.py
    makes one; the quantize stage copies the tokenizer files, so a checkpoint needs them)."""
    from llmpipe.artifacts.checkpoint import write_model_dir
    from llmpipe.text.tokenizer import load_tokenizer

    out = work / f"model-{preset}-v{vocab}-ctx{max_seq_len}"
    if (out / "config.json").exists():  # made by an earlier run in this --workdir
        return out
    llmpipe.run_stage("ingest", [str(SHARED / "text" / "c4_demo.jsonl")], work / "docs")
    llmpipe.run_stage("train_tokenizer", [str(work / "docs")], work / "tok", vocab_size=vocab)
    special = load_tokenizer(work / "tok").special
    cfg = ModelConfig.preset(preset, vocab_size=vocab, max_seq_len=max_seq_len, bos_token_id=special["bos"],
                             eos_token_id=special["eos"], pad_token_id=special["pad"])
    torch.manual_seed(0)
    write_model_dir(out, Model(cfg).state_dict(), cfg.to_hf(), work / "tok")
    return out


def make_prompts(model_dir: Path, batch: int, length: int) -> list[list[int]]:
    """`batch` prompts cut from the start of Wikipedia-text lines, tokenized with the checkpoint's tokenizer (seeded
    random ids where it has none); row i is i tokens shorter than `length` (down to 3/4 of it), so a batch is
    left-padded as real prompts are."""
    lengths = [max(length - i, 3 * length // 4) for i in range(batch)]
    try:
        from llmpipe.text.tokenizer import load_tokenizer

        tok = load_tokenizer(model_dir)
        lines = [ln for ln in (SHARED / "text" / "wiki_demo.txt").read_text().splitlines() if len(ln) > 40 * length]
        return [[tok.special["bos"]] + tok.encode(line)[:n - 1] for line, n in zip(lines, lengths)]
    except Exception:  # noqa: BLE001 -- a checkpoint without a tokenizer: ids are enough to time decoding
        vocab = Model.from_checkpoint(model_dir).config.vocab_size
        g = torch.Generator().manual_seed(0)
        return [torch.randint(4, vocab, (n,), generator=g).tolist() for n in lengths]


# --- the two sides: each returns (new ids [B, N], seconds to the first new token, seconds in all) ----------------


def run_llmpipe(model, prompts, new_tokens: int):
    d = Decoding(max_new_tokens=new_tokens)
    t0 = time.perf_counter()
    steps = token_steps(model, prompts, d, stop_ids=())
    out = [next(steps)]
    first = time.perf_counter() - t0
    out.extend(steps)
    total = time.perf_counter() - t0
    return torch.stack(out, dim=1), first, total


class FirstToken:
    """A generate() streamer that notes when the first new token comes (put() gets the prompt first, then each step's ids)."""

    def __init__(self):
        self.calls, self.t = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.t = time.perf_counter()

    def end(self):
        pass


def hf_inputs(prompts, pad: int):
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def run_hf(model, prompts, new_tokens: int):
    ids, mask = hf_inputs(prompts, model.config.pad_token_id)
    streamer = FirstToken()
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, use_cache=True,
                             num_beams=1, streamer=streamer)
        total = time.perf_counter() - t0
    return out[:, ids.shape[1]:], streamer.t - t0, total


def load_hf(model_dir: Path, int8: bool):
    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    gc = model.generation_config
    gc.eos_token_id = None  # no early stop: every run makes exactly max_new_tokens (llmpipe: stop_ids=())
    gc.pad_token_id = model.config.pad_token_id
    gc.temperature = gc.top_p = gc.top_k = None
    if int8:
        # int8 as torch runs it on CPU for nn.Linear layers: dynamic quantization (int8 weights per output channel,
        # activations quantized per call, fbgemm/x86 kernels), on the decoder's projections only, the layers
        # llmpipe's int8 checkpoint quantizes (its tied embedding / lm_head stays fp32 in both)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        model = quantize_dynamic(model, {"model.layers": per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return model


# --- measuring -------------------------------------------------------------------------------------------------


def measure(sides: dict, prompts, new_tokens: int, runs: int) -> dict:
    """One warm-up each, then `runs` rounds; in each round every side runs once, the order alternating."""
    names = list(sides)
    for name in names:
        sides[name](prompts, new_tokens)
    times = {n: [] for n in names}
    for r in range(runs):
        for name in (names if r % 2 == 0 else names[::-1]):
            _, first, total = sides[name](prompts, new_tokens)
            times[name].append((first, total))
    B = len(prompts)
    result = {}
    for name in names:
        firsts, totals = [f for f, _ in times[name]], [t for _, t in times[name]]
        result[name] = {
            "tok_s": statistics.median(new_tokens * B / t for t in totals),
            "decode_tok_s": statistics.median((new_tokens - 1) * B / (t - f) for f, t in times[name]),
            "prefill_ms": 1000 * statistics.median(firsts),
            "totals": totals,
        }
    if len(names) == 2:
        a, b = names
        result["ratio"] = result[a]["tok_s"] / result[b]["tok_s"]
        result["round_ratios"] = sorted(tb / ta for (_, ta), (_, tb) in zip(times[a], times[b]))
    return result


def decode_ms(run, prompts, new_tokens: int, runs: int = 5) -> float:
    """Median ms per decoding step after the first token (the prefill) of a side's run."""
    run(prompts, new_tokens)
    return 1000 * statistics.median((t - f) / (new_tokens - 1) for _, f, t in (run(prompts, new_tokens) for _ in range(runs)))


def matmul_floor_ms(model, batch: int, steps: int = 200) -> float:
    """ms per step of the model's linear layers alone (each F.linear on a [batch, 1, in] input): what a decoding step
    costs with no overhead at all."""
    import torch.nn.functional as F

    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = {w.shape[1]: torch.randn(batch, 1, w.shape[1]) for w in weights}
    for w in weights:
        F.linear(xs[w.shape[1]], w)
    t0 = time.perf_counter()
    for _ in range(steps):
        for w in weights:
            F.linear(xs[w.shape[1]], w)
    return 1000 * (time.perf_counter() - t0) / steps


def where_time_goes(ours, hf, prompts, new_tokens: int, how: str, top: int = 15) -> str:
    """llmpipe's batch-1 step against its matmul floor and transformers' step, and llmpipe's ops (or Python
    functions) by own time per step."""
    ours_ms = decode_ms(lambda p, n: run_llmpipe(ours, p, n), prompts, new_tokens)
    hf_ms = decode_ms(lambda p, n: run_hf(hf, p, n), prompts, new_tokens)
    floor = matmul_floor_ms(ours, len(prompts))
    lines = [f"decoding step at batch {len(prompts)}: llmpipe {ours_ms:.3f} ms, transformers {hf_ms:.3f} ms; the linear layers "
             f"alone {floor:.3f} ms, so overhead llmpipe {ours_ms - floor:.3f} ms ({100 * (1 - floor / ours_ms):.0f} %), "
             f"transformers {hf_ms - floor:.3f} ms; with zero overhead llmpipe would be {hf_ms / floor:.2f}x transformers"]
    steps = token_steps(ours, prompts, Decoding(max_new_tokens=new_tokens), stop_ids=())
    next(steps)  # the prefill is not profiled
    n = new_tokens - 1
    if how == "cprofile":
        prof = cProfile.Profile()
        prof.enable()
        for _ in steps:
            pass
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
        return "\n".join(lines) + "\n" + out.getvalue()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in steps:
            pass
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    lines.append(f"llmpipe ops by own CPU time (torch.profiler, {n} steps; the profiler's own cost inflates small ops): "
                 f"{total / n:.0f} us per step")
    lines.append("| op | calls/step | us/step | share |\n|---|---|---|---|")
    lines += [f"| {e.key} | {e.count / n:.1f} | {e.self_cpu_time_total / n:.1f} | {100 * e.self_cpu_time_total / total:.1f} % |"
              for e in events[:top]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="an llmpipe checkpoint directory (default: a random-weight `--preset` model made here)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--vocab", type=int, default=4096, help="vocabulary of the made model")
    ap.add_argument("--workdir", help="where the made model and the int8 checkpoint go (default: a temporary directory)")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--profile", choices=["none", "cprofile", "torch"], default="torch", help="where llmpipe's batch-1 fp32 step goes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory() if not args.workdir else None
    work = Path(args.workdir or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.checkpoint) if args.checkpoint else make_checkpoint(work, args.preset, args.vocab, args.prompt_len + args.new_tokens + 64)
    t_start = time.time()
    print(f"load at start: {os.getloadavg()}")
    rows, same, profile_text = [], {}, ""
    for precision in args.precisions:
        if precision == "int8":
            qdir = work / "int8"
            llmpipe.run_stage("quantize", [str(model_dir)], qdir, scheme="int8")  # the stage redoes it when its input changed
            ours = Model.from_checkpoint(qdir).eval()
        else:
            ours = Model.from_checkpoint(model_dir).eval()
        hf = load_hf(model_dir, precision == "int8")
        for B in args.batches:
            prompts = make_prompts(model_dir, B, args.prompt_len)
            a, _, _ = run_llmpipe(ours, prompts, args.new_tokens)
            b, _, _ = run_hf(hf, prompts, args.new_tokens)
            same[(precision, B)] = (a.shape == b.shape and bool((a == b).all()), float((a == b).float().mean()) if a.shape == b.shape else 0.0)
            with torch.no_grad():
                res = measure({"llmpipe": lambda p, n: run_llmpipe(ours, p, n), "transformers": lambda p, n: run_hf(hf, p, n)},
                              prompts, args.new_tokens, args.runs)
            rows.append((precision, B, res))
            runs = {k: " ".join(f"{args.new_tokens * B / t:.0f}" for t in res[k]["totals"]) for k in ("llmpipe", "transformers")}
            print(f"{precision} batch {B}: tok/s of each run: llmpipe {runs['llmpipe']}; transformers {runs['transformers']}; "
                  f"per-round ratios {' '.join(f'{r:.2f}' for r in res['round_ratios'])}; same tokens {same[(precision, B)]}", flush=True)
        if precision == "fp32" and args.profile != "none":
            with torch.no_grad():
                profile_text = where_time_goes(ours, hf, make_prompts(model_dir, 1, args.prompt_len), args.new_tokens, args.profile)
    cfg = Model.from_checkpoint(model_dir).config
    print(f"\nmodel: {model_dir} ({cfg.n_layer} layers, d {cfg.n_embd}, {cfg.n_head} heads / {cfg.n_kv_head} kv, vocab {cfg.vocab_size}); "
          f"prompts ~{args.prompt_len} tokens (left-padded batches), {args.new_tokens} new tokens, greedy, KV cache, no eos stop; "
          f"median of {args.runs} after a warm-up; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.2f} (1 min) at the end; {time.time() - t_start:.0f} s\n")
    print("| precision | batch | llmpipe tok/s | transformers tok/s | ratio | llmpipe prefill ms | transformers prefill ms | same greedy tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for precision, B, res in rows:
        ok, frac = same[(precision, B)]
        print(f"| {precision} | {B} | {res['llmpipe']['tok_s']:.0f} | {res['transformers']['tok_s']:.0f} | {res['ratio']:.2f}x | "
              f"{res['llmpipe']['prefill_ms']:.1f} | {res['transformers']['prefill_ms']:.1f} | {'yes' if ok else f'no ({100 * frac:.1f} % equal)'} |")
    if profile_text:
        print(f"\nwhere llmpipe's batch-1 fp32 step goes:\n{profile_text}")
    print(f"\nload average at the end: {os.getloadavg()}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
