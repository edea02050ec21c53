"""Position encodings of the model (llmpipe/model.py): rotary embeddings in Hugging Face's rotate-half layout
(pairs are (i, i + D/2), not (2i, 2i+1)), RoPE scaled for a longer context as transformers computes it (linear,
dynamic NTK, YaRN), and ALiBi's head slopes. Learned absolute embeddings are a plain nn.Embedding in the model."""

from __future__ import annotations

import math

import torch


def rope_cache(seq_len: int, head_dim: int, theta: float, inv_freq=None, attention_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [seq_len, D/2] (HF repeats them to [seq_len, D]; the halves are equal); inv_freq [D/2] and
    attention_factor (a scale of cos and sin) from `scaled_rope` for a scaled RoPE."""
    if inv_freq is None:
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # [D/2]
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # [T, D/2]
    if attention_factor != 1.0:
        return freqs.cos() * attention_factor, freqs.sin() * attention_factor
    return freqs.cos(), freqs.sin()


def scaled_rope(cfg, seq_len: int) -> tuple[torch.Tensor, float]:
    """inv_freq [D/2] and attention factor of cfg.rope_scaling, as transformers' rope init functions compute them
    (modeling_rope_utils), so an export gives transformers' logits. seq_len: the positions a dynamic call covers."""
    D, base, factor, original = cfg.head_dim, cfg.rope_theta, cfg.rope_factor, cfg.original_max_seq_len
    exponents = torch.arange(0, D, 2, dtype=torch.int64).float() / D
    if cfg.rope_scaling == "linear":  # position interpolation (Chen et al. 2023): positions divided by the factor
        return 1.0 / (base ** exponents) / factor, 1.0
    if cfg.rope_scaling == "dynamic":  # NTK-aware: a larger base once the sequence outgrows the trained context
        base = base * ((factor * max(seq_len, original) / original) - (factor - 1)) ** (D / (D - 2))
        return 1.0 / (base ** exponents), 1.0
    # YaRN (Peng et al. 2023): dimensions that turn fewer than beta_slow = 1 times over the trained context are
    # interpolated, more than beta_fast = 32 times kept, a linear ramp between; attention scaled by 0.1 ln(factor) + 1
    def dimension(rotations):
        return D * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(dimension(32)), 0), min(math.ceil(dimension(1)), D - 1)
    ramp = ((torch.arange(D // 2, dtype=torch.float32) - low) / (high - low if high > low else 0.001)).clamp(0, 1)
    kept = 1 - ramp
    pos_freqs = base ** exponents
    inv_freq = 1.0 / (factor * pos_freqs) * (1 - kept) + 1.0 / pos_freqs * kept
    return inv_freq, 0.1 * math.log(factor) + 1.0


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi's head slopes (Press et al. 2022): 2^(-8/n * i) for i = 1..n when n is a power of 2; otherwise the
    slopes of the power of 2 below n, then every other slope of twice that many (the paper's code)."""
    def geometric(n):
        return [2 ** (-8 / n * i) for i in range(1, n + 1)]

    below = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(geometric(below) + geometric(2 * below)[0::2][:n_head - below])


def apply_rope(x, cos, sin):
    """Rotate each pair (x[i], x[i + D/2]) by its position's angle. x [B, T, H, D]; cos, sin [T, 1, D/2] or, when
    rows count positions differently (a left-padded batch), [B, T, 1, D/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
