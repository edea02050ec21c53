"""Training speed: llmpipe's Llama model vs a minimal nanoGPT-style GPT of the same size, in the same run.

One step = forward + backward + grad clip + AdamW, each model with its own optimizer setup
(llmpipe: `make_optimizer`, fused AdamW; nanoGPT: its CPU default, the per-parameter loop), fp32
on CPU, bf16 autocast on CUDA. "Same size": same layers, width and heads, and llmpipe's SwiGLU
width chosen so both have the same parameter count (Llama's 8/3 rule rounded to 64 gives ~6% more
parameters at these widths; `--llama-rule` adds that model as a third row).

This machine is shared and its speed drifts by +-10% within seconds, so the models take single
steps in turn (A B A B ...) and the script reports the median step time of each and the median
over rounds of the per-round ratio (with its interquartile range): neighbouring steps see the
same machine. Achieved FLOP/s counts 6N + attention per token, against a measured fp32 matmul
peak (CPU) or the device's bf16 peak (CUDA: MFU).

    nice python benchmarks/train_speed.py                       # nanoGPT's baby-shakespeare shape (0.8M)
    nice python benchmarks/train_speed.py --n-layer 6 --n-embd 384 --n-head 6 --seq-len 256 --batch 8 --rounds 40   # 10.7M
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmpipe.model import Model, ModelConfig
from llmpipe.train.loop import measured_matmul_flops, peak_flops
from llmpipe.train.memory import keep_freed_memory
from llmpipe.train.optim import make_optimizer


class NanoBlock(nn.Module):
    """nanoGPT's block: LayerNorm, fused qkv, GELU MLP of 4d."""

    def __init__(self, d: int, h: int):
        super().__init__()
        self.h = h
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.c_proj(y)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, d: int, h: int):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(NanoBlock(d, h) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def flops_per_token(self, seq_len: int, n_layer: int, d: int) -> float:
        n = sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel()
        return 6 * n + 12 * n_layer * d * seq_len


def equal_size_intermediate(d: int) -> int:
    """SwiGLU width giving a block nanoGPT's parameter count: 3 d I + 4 d^2 + 2 d = 12 d^2 + 13 d, rounded to
    a multiple of 32 as Llama rounds its width (GEMMs run slower at odd sizes)."""
    return 32 * round((8 * d * d + 11 * d) / (3 * d) / 32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=65, help="65: nanoGPT's shakespeare_char")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=200, help="steps per model, taken in turn")
    ap.add_argument("--llama-rule", action="store_true", help="also time llmpipe at Llama's default SwiGLU width")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--glibc-default-malloc", action="store_true", help="skip llmpipe's malloc setting (it applies to both models)")
    args = ap.parse_args()
    # llmpipe's training processes keep freed memory (llmpipe/train/memory.py); in one process it
    # speeds both models up (nanoGPT's own train.py does not set it)
    malloc = "glibc defaults" if args.glibc_default_malloc else f"freed memory kept: {keep_freed_memory()}"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = dict(vocab_size=args.vocab, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, n_kv_head=args.n_head,
                 max_seq_len=args.seq_len)
    configs = {"llmpipe": ModelConfig(**shape, intermediate_size=equal_size_intermediate(args.n_embd))}
    if args.llama_rule:
        configs["llmpipe 8/3"] = ModelConfig(**shape)
    models = {}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        m = Model(cfg).to(device)
        models[f"{name} (I={cfg.intermediate_size})"] = (m, m.estimate_flops(args.seq_len), make_optimizer(m, 1e-3, 0.1, device=device))
    torch.manual_seed(0)
    nano = NanoGPT(args.vocab, args.seq_len, args.n_layer, args.n_embd, args.n_head).to(device)
    models["nanoGPT"] = (nano, nano.flops_per_token(args.seq_len, args.n_layer, args.n_embd),
                         torch.optim.AdamW(nano.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=device == "cuda" or None))
    if args.compile:
        models = {k: (torch.compile(m), f, o) for k, (m, f, o) in models.items()}
    x = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device)
    y = torch.randint(0, args.vocab, (args.batch, args.seq_len), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def step(model, opt):
        with autocast:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()

    def timed_step(model, opt) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        step(model, opt)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for model, _, opt in models.values():  # warm-up (and compilation)
        for _ in range(5):
            step(model, opt)
    times: dict[str, list[float]] = {k: [] for k in models}
    peaks = []
    for r in range(args.rounds):
        for name, (model, _, opt) in models.items():
            times[name].append(timed_step(model, opt))
        if device == "cpu" and r % 10 == 0:  # the peak drifts with the machine too: measure it along the way, keep the best
            peaks.append(measured_matmul_flops(repeats=3))
    peak = peak_flops(device) if device == "cuda" else max(peaks)
    tokens = args.batch * args.seq_len
    print(f"device {device}, threads {torch.get_num_threads()}, malloc {malloc}, {tokens} tokens/step, {args.rounds} steps per model in turn, "
          f"{'bf16 peak (table)' if device == 'cuda' else 'fp32 matmul peak (best 1024^2 matmul during the run)'} {peak / 1e9:.0f} GFLOP/s\n")
    print("| model | params | tokens/s | GFLOP/s | " + ("MFU" if device == "cuda" else "of peak") + " | step ms (median) | vs nanoGPT (median of per-round ratios, IQR) |")
    print("|---|---|---|---|---|---|---|")
    for name, (model, flops, _) in models.items():
        dt = statistics.median(times[name])
        rate = tokens / dt
        ratios = [n / t for n, t in zip(times["nanoGPT"], times[name])]
        q1, q2, q3 = statistics.quantiles(ratios, n=4)
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params / 1e6:.3f}M | {rate:,.0f} | {flops * rate / 1e9:.1f} | {flops * rate / peak:.1%} | {dt * 1000:.1f} | "
              f"{q2:.3f}x ({q1:.3f}-{q3:.3f}) |")


if __name__ == "__main__":
    main()
