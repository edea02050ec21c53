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

Measured 2026-11-30 (after Model.decode, the KV cache written in place and the joined q/k/v GEMM), torch 2.13.0
CPU, transformers 5.24, 2 cores with no other job (load average 0.9), `--threads 1`, 128 new tokens, medians of 5:

tiny preset (4 layers, d 128, 4 heads, vocab 4096, ~1.3M parameters), three runs of the script:

| precision | batch | llmpipe tok/s | transformers tok/s | ratio (runs) | same greedy tokens |
|---|---|---|---|---|---|
| fp32 | 1 | 2229 | 1075 | 2.07x, 2.08x, 2.08x | yes |
| fp32 | 8 | 7224 | 4264 | 1.74x, 1.69x, 1.67x | yes |
| int8 | 1 | 1327 | 765 | 1.74x, 1.85x, 1.78x | yes |
| int8 | 8 | 6172 | 4113 | 1.50x, 1.48x, 1.50x | yes |

small preset (6 layers, d 384, 6 heads / 2 kv heads, vocab 4096, ~11M parameters):

| precision | batch | llmpipe tok/s | transformers tok/s | ratio | llmpipe prefill ms | transformers prefill ms | same greedy tokens |
|---|---|---|---|---|---|---|---|
| fp32 | 1 | 276 | 234 | 1.18x | 11.2 | 13.0 | yes |
| fp32 | 8 | 1204 | 1079 | 1.12x | 53.9 | 54.4 | yes |
| int8 | 1 | 368 | 357 | 1.03x | 9.8 | 6.4 | yes |
| int8 | 8 | 1435 | 1830 | 0.78x | 52.5 | 15.8 | no (99.5 % equal) |

The goal (llmpipe >= 2x transformers at batch 1 where per-step overhead dominates) is met on the tiny preset
(2.08x; before Model.decode: 1.28x). On the small preset the linear layers are 2.84 ms of llmpipe's 3.55 ms step
(transformers: 4.11 ms), so even zero overhead would give 1.45x: there 2x needs fewer bytes per weight, not less
Python. int8 misses: QuantLinear casts its int8 weights to fp32 on every call (torch's int8 weight-only kernel
takes fp32 activations but runs a reference loop 6x slower than the cast on this CPU), while transformers' dynamic
int8 runs fbgemm's int8 GEMM on quantized activations (other numerics; its prefill is 3x faster). A prototype
calling fbgemm's packed int8 linear from QuantLinear reached 460 tok/s at batch 1 (1.55x its cast path), but it
quantizes activations too, which weight-only int8 promises not to; not adopted.

Before Model.decode (token_steps through Model.forward; load 1.9-2.5): tiny fp32 batch 1 1306 vs 1020 tok/s (1.28x),
small fp32 batch 1 248 vs 226 (1.10x). With torch's default 2 threads on this shared machine single runs collapse
(one OpenMP thread waits at a barrier for the other, descheduled by other jobs: 42 ms of a 46 ms step in the
flash-attention kernel once), on both sides; use `--threads 1` here.
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
