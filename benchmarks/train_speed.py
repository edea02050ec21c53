"""Training speed: llmpipe's Llama model vs a minimal nanoGPT-style GPT of the same shape, in the same run.

One step = forward + backward + grad clip + AdamW, fp32 on CPU (bf16 autocast on CUDA). Steps of
the two models alternate in rounds so machine load hits both alike; the script prints tokens/s,
achieved FLOP/s (6N + attention per token) against a measured fp32 matmul peak (CPU) or the
device's bf16 peak (CUDA: MFU), and the llmpipe/nanoGPT ratio.

    nice python benchmarks/train_speed.py                       # nanoGPT's baby-shakespeare shape (0.8M)
    nice python benchmarks/train_speed.py --n-layer 6 --n-embd 384 --n-head 6 --seq-len 256 --batch 8   # 10.7M
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=65, help="65: nanoGPT's shakespeare_char")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="steps per model per round")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    ours = Model(ModelConfig(vocab_size=args.vocab, n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                             n_kv_head=args.n_head, max_seq_len=args.seq_len)).to(device)
    nano = NanoGPT(args.vocab, args.seq_len, args.n_layer, args.n_embd, args.n_head).to(device)
    models = {
        "llmpipe": (ours, ours.estimate_flops(args.seq_len), make_optimizer(ours, 1e-3, 0.1, device=device)),
        "nanoGPT": (nano, nano.flops_per_token(args.seq_len, args.n_layer, args.n_embd),
                    torch.optim.AdamW(nano.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=device == "cuda" or None)),
    }
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
        return loss

    for model, _, opt in models.values():  # warm-up (and compilation)
        for _ in range(3):
            step(model, opt)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for name, (model, _, opt) in models.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.steps):
                loss = step(model, opt)
            loss.item()
            times[name].append((time.perf_counter() - t) / args.steps)
    peak = peak_flops(device) if device == "cuda" else measured_matmul_flops()
    tokens = args.batch * args.seq_len
    params = {k: sum(p.numel() for p in m.parameters()) for k, (m, _, _) in models.items()}
    print(f"device {device}, threads {torch.get_num_threads()}, {tokens} tokens/step, "
          f"{'bf16 peak (table)' if device == 'cuda' else 'fp32 matmul peak (measured, 1024^2)'} {peak / 1e9:.0f} GFLOP/s")
    rates = {}
    for name, (_, flops, _) in models.items():
        dt = statistics.median(times[name])
        rates[name] = tokens / dt
        achieved = flops * rates[name]
        print(f"{name:8s} {params[name] / 1e6:6.2f}M params | {rates[name]:9,.0f} tokens/s | {achieved / 1e9:6.1f} GFLOP/s | "
              f"{'MFU' if device == 'cuda' else 'of peak'} {achieved / peak:.1%} | step {dt * 1000:.1f} ms (median of {args.rounds} rounds)")
    print(f"llmpipe / nanoGPT tokens/s: {rates['llmpipe'] / rates['nanoGPT']:.2f}x")


if __name__ == "__main__":
    main()
