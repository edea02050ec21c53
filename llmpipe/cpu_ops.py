"""RMSNorm, RoPE and SwiGLU with hand-written backward passes, for eager training on CPU.

On CPU, autograd's graph of these formulas costs more than their arithmetic: every temporary is a
fresh allocation and a cache-cold pass, and every split of a fused projection comes back as a cat
in the backward pass. These functions compute the same values in fewer kernels and write each
gradient straight into one buffer. `model.py` uses them on CPU only; on CUDA the plain formulas
run (torch.compile fuses them there). tests/test_cpu_ops.py checks values and gradients against the
plain formulas in float64.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps: float):
        C = x.size(-1)
        rstd = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(C).add_(eps).rsqrt_()  # [..., 1]
        ctx.save_for_backward(x, rstd, weight)
        return (x * rstd).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        # LayerNorm's fused backward with mean 0 is RMSNorm's backward minus rstd * mean(grad * weight):
        # one ATen kernel and a matrix-vector product instead of seven elementwise passes
        x, rstd, weight = ctx.saved_tensors
        grad_x, grad_weight, _ = torch.ops.aten.native_layer_norm_backward(
            grad, x, [x.size(-1)], torch.zeros_like(rstd), rstd, weight, None, [True, True, False])
        mean_gw = torch.matmul(grad, weight).unsqueeze(-1).div_(x.size(-1))  # [..., 1]
        return grad_x.addcmul_(rstd, mean_gw), grad_weight, None


def rms_norm(x, weight, eps: float):
    """weight * x / sqrt(mean(x^2) + eps) over the last dimension."""
    return _RMSNorm.apply(x, weight, eps)


@functools.lru_cache(maxsize=None)
def _interleaved_rows(n_rotated: int, n_plain: int, head_dim: int) -> torch.Tensor:
    """Row order of the fused [q; k; v] weight putting each RoPE pair (i, i + D/2) of every q and k head
    next to each other (2i, 2i + 1); v rows keep their order."""
    half = head_dim // 2
    within = torch.stack((torch.arange(half), torch.arange(half) + half), dim=1).reshape(-1)  # 0, D/2, 1, D/2 + 1, ...
    rotated = (torch.arange(n_rotated)[:, None] * head_dim + within).reshape(-1)
    return torch.cat((rotated, torch.arange(n_rotated * head_dim, (n_rotated + n_plain) * head_dim)))


def _as_complex(x):
    """[..., D] real with interleaved pairs -> [..., D/2] complex view."""
    return torch.view_as_complex(x.unflatten(-1, (-1, 2)))


class _RopeSplit(torch.autograd.Function):
    """qkv [B, T, H + 2K, D] (q and k in interleaved pair order) -> q, k rotated, v. In that order RoPE
    is one complex multiply; the backward multiplies by the conjugate (the inverse rotation) and
    writes dq, dk, dv into one gradient buffer: no split/cat round trip."""

    @staticmethod
    def forward(ctx, qkv, freqs, n_head: int, n_kv_head: int):
        H, K = n_head, n_kv_head
        ctx.save_for_backward(freqs)
        ctx.heads = (H, K)
        qk = torch.view_as_real(_as_complex(qkv[:, :, :H + K]) * freqs).flatten(-2)  # [B, T, H + K, D]
        q, k = qk.split([H, K], dim=2)
        return q, k, qkv[:, :, H + K:].clone()

    @staticmethod
    def backward(ctx, dq, dk, dv):
        (freqs,) = ctx.saved_tensors
        H, K = ctx.heads
        grad = dv.new_empty(*dv.shape[:2], H + 2 * K, dv.size(-1))
        back = freqs.conj()
        torch.mul(_as_complex(dq.contiguous()), back, out=_as_complex(grad[:, :, :H]))
        torch.mul(_as_complex(dk.contiguous()), back, out=_as_complex(grad[:, :, H:H + K]))
        grad[:, :, H + K:].copy_(dv)
        return grad, None, None, None


def qkv_rope(x, wq, wk, wv, cos, sin, n_head: int, n_kv_head: int):
    """x [B, T, C] -> q [B, T, H, D], k [B, T, K, D] rotated by RoPE (HF's pairs (i, i + D/2); cos, sin
    [T, 1, D/2]), v [B, T, K, D], with one GEMM for all three.

    q and k come out with each head's dimensions in interleaved pair order: the same permutation of
    both leaves every q.k product, and so attention, unchanged, and it makes RoPE one complex
    multiply. The permutation is applied to the fused weight's rows (small) on every call, so the
    parameters stay in HF's layout."""
    H, K, D = n_head, n_kv_head, wq.size(0) // n_head
    w = torch.cat((wq, wk, wv)).index_select(0, _interleaved_rows(H + K, K, D).to(wq.device))
    qkv = F.linear(x, w).view(*x.shape[:2], H + 2 * K, D)
    return _RopeSplit.apply(qkv, torch.complex(cos, sin), H, K)


class _SwiGLU(torch.autograd.Function):
    """h = [gate | up] (one fused projection) -> silu(gate) * up, gradient written into one buffer."""

    @staticmethod
    def forward(ctx, h):
        gate, up = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(h, act)
        return act * up

    @staticmethod
    def backward(ctx, grad):
        h, act = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        dh = torch.empty_like(h)
        dgate, dup = dh.chunk(2, dim=-1)
        torch.mul(grad, act, out=dup)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=dgate)
        return dh


def swiglu(h):
    """silu(gate) * up for h = [gate | up] along the last dimension."""
    return _SwiGLU.apply(h)
